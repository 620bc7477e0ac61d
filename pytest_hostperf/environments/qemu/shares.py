"""How the project, the agent package and the writable share reach the guest.

A :class:`ShareMode` turns the planned :class:`Share` s into qemu devices
(:mod:`.cmdline`), host helpers (virtiofsd) and the guest's mount table. Three modes
exist; another (NFS, say) joins by adding a subclass to :data:`MODES` and saying in
:func:`choose_mode` when it applies:

* ``9p``: qemu's own file server. The read-only shares use ``security_model=none``
  (readonly on the host side too); the writable one ``mapped-xattr`` (or
  ``mapped-file`` where the host filesystem has no user xattrs), so ownership and
  mode bits a guest sets stay in metadata: guest root cannot plant a setuid-root file.
* ``virtiofs``: virtiofsd, which needs root. Read-only shares are enforced read-only
  in virtiofsd's own mount namespace; the writable share is a ``nosuid,nodev`` bind
  mount of itself on the host, so a setuid file the guest makes gives nobody root.
* ``copy``: no shared filesystem in the guest kernel: the project and the package
  travel on a read-only ext4 disk (:mod:`pytest_hostperf.environments.ship`), and
  there is no ``share`` mount.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Final, Optional, Sequence

from pytest_hostperf.environments import ship
from pytest_hostperf.environments.base import EnvironmentFailure, package_parent
from pytest_hostperf.environments.process import spawn_logged, stop_process, tail_file
from pytest_hostperf.environments.qemu.cmdline import ExtraDisk, ShareDevice, VhostUserFs, Virtfs
from pytest_hostperf.progress import Reporter
from pytest_hostperf.vm.model import GUEST_EXTRA, GUEST_PKG, GUEST_PROJECT, GUEST_SHARE, GUEST_TMPFS, VmDisk

VIRTIOFSD_PATHS: Final = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/virtiofsd")
#: virtiofsd's cache mode (what the guest's page cache may keep): part of the fingerprint.
VIRTIOFS_CACHE: Final = "auto"
#: msize 512 KiB: the 6.1 default (8 KiB) makes every large read dozens of round trips.
NINEP_OPTIONS: Final = "trans=virtio,version=9p2000.L,msize=524288"
ENV_NAME: Final = "qemu"


@dataclasses.dataclass(frozen=True)
class Share:
    """A host directory the guest mounts."""

    tag: str
    host_path: Path
    guest_path: str
    readonly: bool


def package_in_project(project_dir: Path) -> Optional[Path]:
    """Where the ``pytest_hostperf`` package's parent is inside the project, if it is."""
    try:
        return (package_parent() / "pytest_hostperf").relative_to(project_dir).parent
    except ValueError:
        return None


def find_virtiofsd() -> Optional[str]:
    for path in VIRTIOFSD_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("virtiofsd")


class ShareMode(abc.ABC):
    """One way of getting host directories into the guest."""

    name: str
    #: Whether the writable ``share`` mount exists in this mode.
    offers_share: bool = True

    def plan(self, project_dir: Path, workdir: Path) -> list[Share]:
        """The shares of one boot: the project and the package read-only, the writable share."""
        shares = [Share("project", project_dir, GUEST_PROJECT, True)]
        if package_in_project(project_dir) is None:
            # Share only the package, never the rest of a site-packages directory.
            shares.append(Share("pkg", package_parent() / "pytest_hostperf", GUEST_PKG + "/pytest_hostperf", True))
        if self.offers_share:
            (workdir / "share").mkdir(mode=0o700, exist_ok=True)
            shares.append(Share("share", workdir / "share", GUEST_SHARE, False))
        return shares

    @abc.abstractmethod
    def devices(self, shares: Sequence[Share], workdir: Path) -> list[ShareDevice]:
        """What qemu needs on its command line for these shares."""

    def start(self, shares: Sequence[Share], workdir: Path, reporter: Reporter,
              die_with_parent: bool) -> list[subprocess.Popen[bytes]]:
        """Start host helpers (before qemu); return them to be stopped with the VM."""
        return []

    @abc.abstractmethod
    def guest_mounts(self, shares: Sequence[Share], disk: VmDisk) -> list[dict[str, str]]:
        """The guest bootstrap's mount table for these shares (plus the tmpfs)."""

    def project_dir(self) -> str:
        """Where the project is inside the guest."""
        return GUEST_PROJECT

    def package_dir(self) -> str:
        """The guest directory that holds ``pytest_hostperf`` when it is not in the project."""
        return GUEST_PKG


def tmpfs_mount() -> dict[str, str]:
    return {"source": "tmpfs", "target": GUEST_TMPFS, "fstype": "tmpfs", "options": "mode=1777"}


class NinePMode(ShareMode):
    name = "9p"

    def devices(self, shares: Sequence[Share], workdir: Path) -> list[ShareDevice]:
        return [ninep_device(s) for s in shares]

    def guest_mounts(self, shares: Sequence[Share], disk: VmDisk) -> list[dict[str, str]]:
        return [*(ninep_mount(s) for s in shares), tmpfs_mount()]


def ninep_device(share: Share) -> Virtfs:
    """The ``-virtfs`` of one share: read-only passthrough, or the writable one mapped."""
    model = "none" if share.readonly else mapped_model(share.host_path)
    return Virtfs(share.tag, share.host_path, share.readonly, model)


def ninep_mount(share: Share) -> dict[str, str]:
    """The guest bootstrap's mount entry for a 9p share (cache=none, the kernel's default)."""
    return {"source": share.tag, "target": share.guest_path, "fstype": "9p",
            "options": ",".join(filter(None, ["ro" if share.readonly else "", NINEP_OPTIONS]))}


def mapped_model(path: Path) -> str:
    """``mapped-xattr`` where the host filesystem takes user xattrs, else ``mapped-file``."""
    try:
        os.setxattr(path, "user.hostperf.probe", b"1")
        os.removexattr(path, "user.hostperf.probe")
        return "mapped-xattr"
    except (OSError, AttributeError):
        return "mapped-file"


class VirtiofsMode(ShareMode):
    name = "virtiofs"

    def devices(self, shares: Sequence[Share], workdir: Path) -> list[ShareDevice]:
        return [VhostUserFs(s.tag, workdir / f"fs-{s.tag}.sock") for s in shares]

    def start(self, shares: Sequence[Share], workdir: Path, reporter: Reporter,
              die_with_parent: bool) -> list[subprocess.Popen[bytes]]:
        virtiofsd = find_virtiofsd()
        assert virtiofsd is not None
        helpers = []
        for share in shares:
            if not share.readonly:
                nosuid_bind(share.host_path)
            sock = workdir / f"fs-{share.tag}.sock"
            sock.unlink(missing_ok=True)
            helpers.append(spawn_logged(virtiofsd_argv(virtiofsd, share, sock), workdir / f"virtiofsd-{share.tag}.log",
                                        die_with_parent))
        deadline = time.monotonic() + 10
        for share in shares:
            sock = workdir / f"fs-{share.tag}.sock"
            while not sock.exists():
                if any(h.poll() is not None for h in helpers) or time.monotonic() > deadline:
                    for helper in helpers:
                        stop_process(helper)
                    raise EnvironmentFailure(ENV_NAME, f"virtiofsd for {share.host_path} did not start",
                                             hint="run as root, or use a guest kernel with 9p",
                                             log_tail=tail_file(workdir / f"virtiofsd-{share.tag}.log"))
                time.sleep(0.02)
        return helpers

    def guest_mounts(self, shares: Sequence[Share], disk: VmDisk) -> list[dict[str, str]]:
        mounts = [{"source": s.tag, "target": s.guest_path, "fstype": "virtiofs", "options": "ro" if s.readonly else ""}
                  for s in shares]
        return [*mounts, tmpfs_mount()]


def virtiofsd_argv(virtiofsd: str, share: Share, sock: Path) -> list[str]:
    """virtiofsd for one share; a read-only share is also read-only in virtiofsd's namespace."""
    # fuse option lists are comma-separated: a comma in the path is written "\,".
    source = str(share.host_path).replace("\\", "\\\\").replace(",", "\\,")
    argv = [virtiofsd, f"--socket-path={sock}", "-o", f"source={source}",
            "-o", f"cache={VIRTIOFS_CACHE}", "-o", "no_posix_lock", "-o", "log_level=warn"]
    if share.readonly and os.geteuid() == 0 and shutil.which("unshare"):
        # A private read-only bind of the source in a mount namespace of virtiofsd's own.
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && exec "$@"',
                "sh", str(share.host_path), *argv]
    return argv


def nosuid_bind(path: Path) -> None:
    """Make ``path`` a ``nosuid,nodev`` bind mount of itself (root only; undone by :func:`release_mounts`)."""
    for argv in (["mount", "--bind", str(path), str(path)],
                 ["mount", "-o", "remount,bind,nosuid,nodev", str(path), str(path)]):
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise EnvironmentFailure(ENV_NAME, f"could not make the writable share {path} nosuid: "
                                     f"{' '.join(argv)} exited with {result.returncode}",
                                     hint="virtiofs needs root; without it hostperf uses the copy mode",
                                     log_tail=result.stderr)


def release_mounts(directory: Path) -> None:
    """Unmount whatever is mounted at or below ``directory`` (deepest first)."""
    for mountpoint in sorted(mounts_under(directory), key=len, reverse=True):
        subprocess.run(["umount", "-l", mountpoint], capture_output=True, check=False)


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory`` in this mount namespace."""
    prefix = str(directory.resolve()) if directory.exists() else str(directory)
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) > 4:
            point = fields[4].encode().decode("unicode_escape")   # \040 for spaces and so on
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


class CopyMode(ShareMode):
    name = "copy"
    offers_share = False

    def plan(self, project_dir: Path, workdir: Path) -> list[Share]:
        return []

    def devices(self, shares: Sequence[Share], workdir: Path) -> list[ShareDevice]:
        return [ExtraDisk(workdir / "extra.img")]

    def start(self, shares: Sequence[Share], workdir: Path, reporter: Reporter,
              die_with_parent: bool) -> list[subprocess.Popen[bytes]]:
        return []

    def guest_mounts(self, shares: Sequence[Share], disk: VmDisk) -> list[dict[str, str]]:
        # The copy disk is the first virtio-blk disk, or the second when the root is one.
        device = "/dev/vdb" if disk.root_device == "virtio" else "/dev/vda"
        return [{"source": device, "target": GUEST_EXTRA, "fstype": "ext4", "options": "ro"}, tmpfs_mount()]

    def project_dir(self) -> str:
        return f"{GUEST_EXTRA}/{ship.PROJECT_DIR}"

    def package_dir(self) -> str:
        return f"{GUEST_EXTRA}/{ship.AGENT_DIR}"


def build_copy_disk(project_dir: Path, workdir: Path, skip: Sequence[Path], reporter: Reporter) -> Path:
    """The project and the package on a read-only ext4 image (``workdir/extra.img``)."""
    from pytest_hostperf.vm.disk import du_mb

    image = workdir / "extra.img"
    if image.exists():
        return image
    staging = workdir / "extra"
    reporter.step("guest kernel has no 9p/virtiofs; copying the project into a read-only disk")
    try:
        ship.copy_to(staging, ship.members(project_dir, skip))
        size = max(64, int(du_mb(staging) * 1.5) + 32)
        proc = subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(staging), "-F", str(image), f"{size}M"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if proc.returncode != 0:
        raise EnvironmentFailure(ENV_NAME, "could not write the project copy disk",
                                 log_tail=proc.stdout.decode(errors="replace"))
    return image


MODES: Final[dict[str, ShareMode]] = {mode.name: mode for mode in (NinePMode(), VirtiofsMode(), CopyMode())}


def choose_mode(request: str, disk: VmDisk, virtiofsd: Optional[str], euid: int) -> ShareMode:
    """The share mode for a request ("auto", or a mode name) and what the guest kernel mounts."""
    if request != "auto":
        if request not in MODES:
            raise ValueError(f"share must be auto or one of {', '.join(MODES)}, not {request!r}")
        if request != "copy" and disk.share_fs != request:
            raise EnvironmentFailure(ENV_NAME, f"the guest kernel {disk.kernel_version} cannot mount {request}",
                                     hint="use share='auto' or 'copy'")
        return MODES[request]
    if disk.share_fs == "9p":
        return MODES["9p"]
    if disk.share_fs == "virtiofs" and virtiofsd is not None and euid == 0:
        return MODES["virtiofs"]
    # virtiofsd (C, qemu 7.2) needs root; without a share the project is copied onto a
    # read-only disk and the "share" mount is not offered.
    return MODES["copy"]


def mode_facts(mode: ShareMode, writable: Path) -> dict[str, str]:
    """What serves the writable ``share`` in this mode, with its host-side options (fingerprint)."""
    if mode.name == "9p":
        return {"server": "qemu", "security_model": mapped_model(writable)}
    if mode.name == "virtiofs":
        return {"server": "virtiofsd", "cache": VIRTIOFS_CACHE}
    return {}
