"""One host directory exported over NFSv4 to one VM, for the ``qemu-share-nfs`` mount.

The kernel's nfsd is not available everywhere (a host kernel built without
``CONFIG_NFSD``, as on our CI machines, or a container), and its exports are global
state of the host. So each session starts its own user-space server, nfs-ganesha
(Debian's ``nfs-ganesha`` + ``nfs-ganesha-vfs``), in the foreground, bound to
127.0.0.1 on a free port, NFSv4 only (no rpcbind, no lock manager), exporting exactly
one directory:

- only to 127.0.0.1, where QEMU's user network connects from: the VM reaches it through
  ``-nic user,restrict=on,guestfwd=tcp:10.0.2.100:2049-tcp:127.0.0.1:PORT``, and
  ``restrict=on`` leaves the guest no other way out (:func:`qemu_nic`);
- non-privileged source ports accepted (``PrivilegedPort = false``, the ``insecure`` of
  the kernel's exports): QEMU connects from an ordinary port;
- every guest user squashed to the directory's owner (``All_Squash``), or to nobody
  (65534) when root owns it: the guest's root cannot make a setuid-root file on the host.

The server dies with the controller (``PR_SET_PDEATHSIG``); a state dir with the
qemu backend's ``owner.json`` under :func:`state_root` lets :func:`sweep_stale` kill
and remove what a SIGKILLed session left.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Final, Mapping, Optional

from pytest_hostperf.environments import qemu as qemu_backend
from pytest_hostperf.environments.base import EnvironmentFailure

__all__ = ["NfsExport", "find_ganesha", "qemu_nic", "guest_forward", "sweep_stale", "state_root", "GUEST_SERVER", "NOBODY"]

#: The address the guest mounts from; QEMU forwards it to the server on the host.
GUEST_SERVER: Final = "10.0.2.100"
NOBODY: Final = 65534
PSEUDO_PATH: Final = "/share"
#: Kernel NFS client options (mount(2) data: without mount.nfs the kernel needs addr=).
#: hard + long timeo: a busy TCG guest must wait, never see EIO.
GUEST_OPTIONS: Final = "vers=4.2,proto=tcp,port=2049,hard,timeo=600,retrans=2,sec=sys"

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


def state_root() -> Path:
    """Where each session's server keeps its config, pid, log and recovery dir."""
    return Path(tempfile.gettempdir()) / "pytest-hostperf-nfs"


def find_ganesha() -> Optional[str]:
    """Path of ``ganesha.nfsd``, None when nfs-ganesha is not installed."""
    return shutil.which("ganesha.nfsd") or next(
        (p for p in ("/usr/bin/ganesha.nfsd", "/usr/sbin/ganesha.nfsd") if os.access(p, os.X_OK)), None)


def guest_forward(port: int) -> str:
    """The ``guestfwd`` that connects the guest's 10.0.2.100:2049 to the server's port."""
    return f"guestfwd=tcp:{GUEST_SERVER}:2049-tcp:127.0.0.1:{port}"


def qemu_nic(port: int, *extra: str, model: str = "virtio-net-pci") -> str:
    """The ``-nic`` value: user networking whose only way out is the NFS server.

    ``extra`` are further ``hostfwd=``/``guestfwd=`` rules (docker@qemu adds its API port).
    """
    return ",".join([f"user,model={model},restrict=on", guest_forward(port), *extra])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class NfsExport:
    """An nfs-ganesha server exporting ``directory`` for one session; a context manager.

    ``readonly`` exports it read-only. ``env`` names the environment in errors.
    """

    def __init__(self, directory: Path, session_id: str, *, readonly: bool = False,
                 env: str = "qemu", root: Optional[Path] = None) -> None:
        self.directory = Path(directory).resolve()
        self.session_id = session_id
        self.readonly = readonly
        self.env = env
        self._root = root
        self.port: Optional[int] = None
        self.state: Optional[Path] = None
        self._proc = None
        self.squash_uid = self.squash_gid = NOBODY

    def __enter__(self) -> "NfsExport":
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
        if ganesha is None:
            raise EnvironmentFailure(self.env, "the NFS share needs nfs-ganesha, which is not installed",
                                     hint="apt-get install nfs-ganesha nfs-ganesha-vfs (scripts/setup.sh does)")
        if os.geteuid() != 0:
            raise EnvironmentFailure(self.env, "nfs-ganesha must run as root to export a directory "
                                     "(its VFS backend opens files by handle)", hint="run the session as root")
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
            self._proc = qemu_backend._spawn(
                [ganesha, "-F", "-f", str(self.state / "ganesha.conf"), "-L", str(log),
                 "-p", str(self.state / "ganesha.pid"), "-N", "NIV_EVENT"], self.state / "stdout.log")
            self._record_owner()
            if self._wait_listening(timeout):
                return self.port
            last = qemu_backend._tail(log, 15)
            qemu_backend._kill(self._proc, 2.0)
        self.stop()
        raise EnvironmentFailure(self.env, f"nfs-ganesha did not start serving {self.directory}",
                                 hint="look at the server log below", log_tail=last)

    def stop(self) -> None:
        """Stop the server and remove its state dir. Never raises; the export dir stays."""
        qemu_backend._kill(self._proc, 5.0)
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
        root = self._root or state_root()
        root.mkdir(parents=True, exist_ok=True)
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

    def _record_owner(self) -> None:
        assert self.state is not None and self._proc is not None
        owner = {"session_pid": os.getpid(), "session_id": self.session_id,
                 "pid_started": qemu_backend._process_start(os.getpid()), "created": time.time(),
                 "server_pid": self._proc.pid}
        (self.state / "owner.json").write_text(json.dumps(owner))

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


def sweep_stale(root: Optional[Path] = None) -> list:
    """Stop the servers of dead sessions and remove their state dirs; return the dirs.

    The server is killed only when its pid still runs ganesha with this state dir's
    config (a reused pid is left alone).
    """
    root = root or state_root()
    removed = []
    try:
        entries = [p for p in root.iterdir() if p.is_dir()]
    except OSError:
        return removed
    for state in entries:
        try:
            owner = json.loads((state / "owner.json").read_text())
        except (OSError, ValueError):
            try:
                if time.time() - state.stat().st_mtime < 60:   # still being set up
                    continue
            except OSError:
                continue
            owner = {}
        if owner and qemu_backend._owner_alive(owner):
            continue
        _kill_server(owner.get("server_pid"), state / "ganesha.conf")
        shutil.rmtree(state, ignore_errors=True)
        removed.append(state)
    return removed


def _kill_server(pid: object, config: Path) -> None:
    if not isinstance(pid, int):
        return
    try:
        import psutil

        proc = psutil.Process(pid)
        if str(config) not in " ".join(proc.cmdline()):
            return
        proc.kill()
        proc.wait(5)
    except Exception:  # noqa: BLE001 - gone already, or not ours
        pass
