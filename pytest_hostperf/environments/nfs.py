"""One host directory exported over NFSv4 to one VM, for the ``qemu-share-nfs`` mount.

The kernel's nfsd is not available everywhere (a host kernel built without
``CONFIG_NFSD``, as on our CI machines, or a container), and its exports are global
state of the host. So each session starts its own user-space server, nfs-ganesha
(Debian's ``nfs-ganesha`` + ``nfs-ganesha-vfs``), in the foreground, bound to
127.0.0.1 on a free port, NFSv4 only (no rpcbind, no lock manager), exporting exactly
one directory:

- only to 127.0.0.1, where QEMU's user network connects from: the VM reaches it through
  ``-nic user,restrict=on,guestfwd=tcp:10.0.2.100:2049-tcp:127.0.0.1:PORT``, and
  ``restrict=on`` leaves the guest no other way out (:class:`~pytest_hostperf.environments.qemu.cmdline.QemuCommand`);
- non-privileged source ports accepted (``PrivilegedPort = false``, the ``insecure`` of
  the kernel's exports): QEMU connects from an ordinary port;
- every guest user squashed to the directory's owner (``All_Squash``), or to nobody
  (65534) when root owns it: the guest's root cannot make a setuid-root file on the host.

The server dies with the controller (``PR_SET_PDEATHSIG``); a state dir with an owner
file (:mod:`pytest_hostperf.environments.labels`) under :func:`state_root` lets
:func:`sweep_stale` kill and remove what a SIGKILLed session left. Used by the qemu
environment's ``share-nfs`` mount and by ``docker@qemu``'s ``bind-nfs``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Final, Mapping, Optional

from pytest_hostperf.environments import labels
from pytest_hostperf.environments.base import EnvironmentFailure
from pytest_hostperf.environments.labels import Liveness
from pytest_hostperf.environments.process import command_line, spawn_logged, stop_process, tail_file

__all__ = ["GUEST_SERVER", "NOBODY", "NfsExport", "find_ganesha", "ganesha_version", "guest_forward", "state_root",
           "sweep_stale", "unavailable_reason"]

#: The address the guest mounts from; QEMU forwards it to the server on the host.
GUEST_SERVER: Final = "10.0.2.100"
NOBODY: Final = 65534
PSEUDO_PATH: Final = "/share"
#: Kernel NFS client options (mount(2) data: without mount.nfs the kernel needs addr=).
#: hard + long timeo: a busy TCG guest must wait, never see EIO.
GUEST_OPTIONS: Final = "vers=4.2,proto=tcp,port=2049,hard,timeo=600,retrans=2,sec=sys"
OWNER_FILE: Final = "owner.json"

_CONFIG = """\
NFS_CORE_PARAM {{
    Protocols = 4;
    NFS_Port = {port};
    Bind_addr = 127.0.0.1;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
}}
NFSV4 {{
    Graceless = true;
    RecoveryBackend = fs;
    RecoveryRoot = "{state}/recovery";
    Only_Numeric_Owners = true;
}}
NFS_KRB5 {{ Active_krb5 = false; }}
EXPORT_DEFAULTS {{ Access_Type = None; }}
EXPORT {{
    Export_Id = 1;
    Path = "{path}";
    Pseudo = {pseudo};
    Protocols = 4;
    Transports = TCP;
    Access_Type = None;
    Squash = All_Squash;
    Anonymous_Uid = {uid};
    Anonymous_Gid = {gid};
    SecType = sys;
    PrivilegedPort = false;
    FSAL {{ Name = VFS; }}
    CLIENT {{ Clients = 127.0.0.1; Access_Type = {access}; }}
}}
LOG {{ Default_Log_Level = EVENT; }}
"""


def state_root(base: Optional[Path] = None) -> Path:
    """Where each session's server keeps its config, pid, log and recovery dir (per user, 0700)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(base or tempfile.gettempdir()) / f"pytest-hostperf-nfs-{uid}"


def find_ganesha() -> Optional[str]:
    """Path of ``ganesha.nfsd``, None when nfs-ganesha is not installed."""
    return shutil.which("ganesha.nfsd") or next(
        (p for p in ("/usr/bin/ganesha.nfsd", "/usr/sbin/ganesha.nfsd") if os.access(p, os.X_OK)), None)


def ganesha_version(binary: Optional[str] = None) -> Optional[str]:
    """``nfs-ganesha 4.3`` from ``ganesha.nfsd -v``; None when it is not installed."""
    binary = binary or find_ganesha()
    if binary is None:
        return None
    try:
        out = subprocess.run([binary, "-v"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"Release = V?(\S+)", out)
    return f"nfs-ganesha {match.group(1)}" if match else "nfs-ganesha"


def unavailable_reason() -> Optional[str]:
    """Why this machine cannot serve an NFS share (None when it can): what the user must do."""
    if find_ganesha() is None:
        return "the NFS share needs nfs-ganesha, which is not installed (apt-get install nfs-ganesha nfs-ganesha-vfs)"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "the NFS share needs root: nfs-ganesha's VFS backend opens files by handle"
    return None


def guest_forward(port: int) -> str:
    """The ``guestfwd`` that connects the guest's 10.0.2.100:2049 to the server's port."""
    return f"guestfwd=tcp:{GUEST_SERVER}:2049-tcp:127.0.0.1:{port}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class NfsExport:
    """An nfs-ganesha server exporting ``directory`` for one session; a context manager.

    ``readonly`` exports it read-only. ``env`` names the environment in errors;
    ``die_with_parent``: the server gets SIGKILL when the thread that started it ends.
    """

    def __init__(self, directory: Path, session_id: str, *, readonly: bool = False,
                 env: str = "qemu", root: Optional[Path] = None, die_with_parent: bool = True) -> None:
        if not labels.valid_session_id(session_id):
            raise ValueError(f"not a session id: {session_id!r}")
        self.directory = Path(directory).resolve()
        self.session_id = session_id
        self.readonly = readonly
        self.env = env
        self._root = root
        self.die_with_parent = die_with_parent
        self.port: Optional[int] = None
        self.state: Optional[Path] = None
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self.squash_uid = self.squash_gid = NOBODY

    def __enter__(self) -> NfsExport:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def guest_mount(self, target: str) -> Mapping[str, str]:
        """The bootstrap's mount entry for this export at ``target`` inside the guest."""
        options = f"{GUEST_OPTIONS},addr={GUEST_SERVER}" + (",ro" if self.readonly else "")
        return {"source": f"{GUEST_SERVER}:{PSEUDO_PATH}", "target": target, "fstype": "nfs4", "options": options}

    def start(self, timeout: float = 20.0, attempts: int = 3) -> int:
        """Start the server; return its port on 127.0.0.1."""
        ganesha = find_ganesha()
        problem = unavailable_reason()
        if ganesha is None or problem:
            raise EnvironmentFailure(self.env, problem or "nfs-ganesha is not installed",
                                     hint="scripts/setup.sh installs nfs-ganesha; run the session as root")
        if not self.directory.is_dir():
            raise EnvironmentFailure(self.env, f"cannot export {self.directory}: not a directory")
        sweep_stale(self._root)
        self._own_directory()
        self.state = self._make_state_dir()
        last = ""
        for _ in range(attempts):   # a free port can be taken between the probe and the bind
            self.port = _free_port()
            self._write_config()
            log = self.state / "ganesha.log"
            self._proc = spawn_logged(
                [ganesha, "-F", "-f", str(self.state / "ganesha.conf"), "-L", str(log),
                 "-p", str(self.state / "ganesha.pid"), "-N", "NIV_EVENT"], self.state / "stdout.log",
                die_with_parent=self.die_with_parent)
            labels.write_owner_file(self.state, self.session_id, OWNER_FILE, server_pid=self._proc.pid)
            if self._wait_listening(timeout):
                return self.port
            last = tail_file(log, 15)
            stop_process(self._proc, grace=2.0)
        self.stop()
        raise EnvironmentFailure(self.env, f"nfs-ganesha did not start serving {self.directory}",
                                 hint="look at the server log below", log_tail=last)

    def stop(self) -> None:
        """Stop the server and remove its state dir. Never raises; the export dir stays."""
        stop_process(self._proc, grace=5.0)
        self._proc = None
        if self.state is not None:
            shutil.rmtree(self.state, ignore_errors=True)
            self.state = None

    # ------------------------------------------------------------------ helpers

    def _own_directory(self) -> None:
        """Squash guest users to the directory's owner; a root-owned one goes to nobody."""
        info = self.directory.stat()
        if info.st_uid != 0:
            self.squash_uid, self.squash_gid = info.st_uid, info.st_gid
            return
        self.squash_uid = self.squash_gid = NOBODY
        if not self.readonly:
            # Only the top directory: the session created it for this export.
            os.chown(self.directory, NOBODY, NOBODY)

    def _make_state_dir(self) -> Path:
        root = labels.ensure_private_dir(self._root or state_root(), self.env)
        state = Path(tempfile.mkdtemp(prefix=f"{self.session_id[:24]}-", dir=root))
        (state / "recovery").mkdir()
        return state

    def _write_config(self) -> None:
        assert self.state is not None
        for value in (str(self.directory), str(self.state)):
            if '"' in value or "\n" in value:
                raise EnvironmentFailure(self.env, f"cannot export a path with quotes or newlines: {value!r}")
        text = _CONFIG.format(port=self.port, state=self.state, path=self.directory, pseudo=PSEUDO_PATH,
                              uid=self.squash_uid, gid=self.squash_gid, access="RO" if self.readonly else "RW")
        (self.state / "ganesha.conf").write_text(text)

    def _wait_listening(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.05)
        return False


def sweep_stale(root: Optional[Path] = None) -> list[Path]:
    """Stop the servers of dead sessions and remove their state dirs; return the dirs.

    A server is killed only when its pid still runs ganesha with this state dir's
    config (a reused pid is left alone); a dir whose owner is alive, or on another host
    or pid namespace, is not touched.
    """
    root = root or state_root()
    removed: list[Path] = []
    try:
        if labels.unsafe_reason(root.lstat()):
            return removed   # not ours to clean: NfsExport refuses it with the reason
        entries = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return removed
    here = labels.Owner.current()
    for state in entries:
        record = labels.read_owner_file(state / OWNER_FILE)
        if record is None:
            try:   # no owner yet: still being set up, unless it is old debris
                if time.time() - state.stat().st_mtime < 60:
                    continue
            except OSError:
                continue
            server_pid: object = None
        else:
            _, owner, data = record
            if owner.liveness(here) not in (Liveness.DEAD, Liveness.OTHER_BOOT):
                continue
            server_pid = data.get("server_pid")
        _kill_server(server_pid, state / "ganesha.conf")
        shutil.rmtree(state, ignore_errors=True)
        removed.append(state)
    return removed


def _kill_server(pid: object, config: Path) -> None:
    if not isinstance(pid, int) or pid <= 0:
        return
    argv = command_line(pid)
    if not argv or str(config) not in argv:
        return   # gone, or the pid was reused by something that is not this server
    try:
        os.kill(pid, 9)
    except OSError:
        pass
