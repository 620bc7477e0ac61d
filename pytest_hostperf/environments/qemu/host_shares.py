"""Writable host directories shared into a VM over a chosen file system: the share axis.

The qemu environment's ``share-9p`` and ``share-nfs`` mounts, and docker@qemu's
``bind-virtiofs``, ``bind-9p`` and ``bind-nfs`` (a host directory shared into the engine
VM, then bind-mounted into the container: the Docker Desktop path), are each one
:class:`HostShare`. :class:`HostShares` turns a set of them into what one VM needs:

* ``virtiofs``: a virtiofsd per share (root; the directory becomes a ``nosuid,nodev``
  bind mount of itself, see :mod:`.shares`), started before each boot attempt;
* ``9p``: QEMU's own server with ``security_model=mapped-xattr``: ownership and mode
  bits the guest sets live in xattrs, so guest root cannot make a setuid-root file;
* ``nfs``: a per-session nfs-ganesha (:mod:`pytest_hostperf.environments.nfs`) that the
  guest reaches through one ``guestfwd`` of a ``restrict=on`` user network, NFSv4.2,
  every guest user squashed.

Each share's facts (file system, the host side's options) go into the fingerprint:
they are what a user needs to recognise their own set-up.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Any, Final, Optional, Sequence

from pytest_hostperf.environments import nfs
from pytest_hostperf.environments.qemu import shares
from pytest_hostperf.environments.qemu.cmdline import ShareDevice
from pytest_hostperf.progress import SILENT, Reporter
from pytest_hostperf.vm.model import VmDisk

KINDS: Final = ("virtiofs", "9p", "nfs")
#: The guest's network when it has one: qemu user networking's fixed addresses.
USER_NETWORK: Final = {"address": "10.0.2.15", "netmask": "255.255.255.0", "gateway": "10.0.2.2", "dns": "10.0.2.3"}


@dataclasses.dataclass(frozen=True)
class HostShare:
    """One writable host directory the guest mounts at ``guest_path`` over ``kind``."""

    kind: str          # "virtiofs", "9p" or "nfs"
    host_path: Path
    guest_path: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"share kind {self.kind!r}: expected one of {', '.join(KINDS)}")

    @property
    def tag(self) -> str:
        """The 9p/virtiofs mount tag (unique per kind in one VM)."""
        return f"share-{self.kind}"

    def as_share(self) -> shares.Share:
        return shares.Share(self.tag, self.host_path, self.guest_path, False)


def unavailable_reason(kind: str, virtiofsd: Optional[str], euid: int) -> Optional[str]:
    """Why this host cannot serve a share of ``kind`` (None when it can)."""
    if kind == "nfs":
        return nfs.unavailable_reason()
    if kind == "virtiofs":
        if virtiofsd is None:
            return "virtiofsd is not installed (apt-get install qemu-system-common)"
        if euid != 0:
            return "virtiofsd (QEMU 7.2's) needs root"
    return None


class HostShares:
    """The host shares of one VM: :meth:`prepare` before booting, :meth:`stop` after.

    ``env`` names the environment in errors; ``die_with_parent`` ties the helpers
    (virtiofsd, nfs-ganesha) to the thread that starts them.
    """

    def __init__(self, wanted: Sequence[HostShare], session_id: str, env: str, *,
                 reporter: Reporter = SILENT, die_with_parent: bool = True) -> None:
        self.shares = tuple(wanted)
        self.session_id = session_id
        self.env = env
        self.reporter = reporter
        self.die_with_parent = die_with_parent
        self._nfs: Optional[nfs.NfsExport] = None
        self._virtiofs = [s for s in self.shares if s.kind == "virtiofs"]

    @property
    def needs_network(self) -> bool:
        """Whether the guest needs eth0 (the NFS share comes over it)."""
        return any(s.kind == "nfs" for s in self.shares)

    def prepare(self) -> None:
        """Create the host directories and start the NFS server (before the first boot)."""
        for share in self.shares:
            share.host_path.mkdir(mode=0o700, parents=True, exist_ok=True)
        nfs_share = next((s for s in self.shares if s.kind == "nfs"), None)
        if nfs_share is not None and self._nfs is None:
            export = nfs.NfsExport(nfs_share.host_path, self.session_id, env=self.env,
                                   die_with_parent=self.die_with_parent)
            export.start()
            self._nfs = export
            self.reporter.step(f"NFS server for {nfs_share.guest_path} on 127.0.0.1:{export.port}")

    def devices(self, workdir: Path) -> list[ShareDevice]:
        """The qemu devices of the 9p and virtiofs shares."""
        found: list[ShareDevice] = []
        for share in self.shares:
            if share.kind == "9p":
                found.append(shares.ninep_device(share.as_share()))
        found += shares.VirtiofsMode().devices([s.as_share() for s in self._virtiofs], workdir)
        return found

    def nic_rules(self) -> list[str]:
        """The ``guestfwd`` to the NFS server: the guest's one way out."""
        return [nfs.guest_forward(self._nfs.port)] if self._nfs is not None and self._nfs.port else []

    def start_helpers(self, workdir: Path) -> list[subprocess.Popen[bytes]]:
        """The virtiofsd of each virtiofs share (again for every boot attempt)."""
        if not self._virtiofs:
            return []
        return shares.VirtiofsMode().start([s.as_share() for s in self._virtiofs], workdir, self.reporter,
                                           self.die_with_parent)

    def guest_mounts(self, disk: Optional[VmDisk] = None) -> list[dict[str, str]]:
        """The bootstrap's mount entries, in the order of the shares."""
        mounts: list[dict[str, str]] = []
        for share in self.shares:
            if share.kind == "9p":
                mounts.append(shares.ninep_mount(share.as_share()))
            elif share.kind == "virtiofs":
                mounts.append({"source": share.tag, "target": share.guest_path, "fstype": "virtiofs", "options": ""})
            elif self._nfs is not None:
                mounts.append(dict(self._nfs.guest_mount(share.guest_path)))
        return mounts

    def facts(self) -> dict[str, dict[str, Any]]:
        """Per share kind: what serves it and with which host-side options (for the fingerprint)."""
        facts: dict[str, dict[str, Any]] = {}
        for share in self.shares:
            if share.kind == "9p":
                facts["9p"] = {"server": "qemu", "security_model": shares.mapped_model(share.host_path)}
            elif share.kind == "virtiofs":
                facts["virtiofs"] = {"server": "virtiofsd", "cache": shares.VIRTIOFS_CACHE}
            else:
                facts["nfs"] = {"server": nfs.ganesha_version(), "transport": "qemu user network (guestfwd)"}
        return facts

    def stop(self) -> None:
        """Stop the NFS server (virtiofsd goes with the VM's helpers). Never raises."""
        export, self._nfs = self._nfs, None
        if export is not None:
            export.stop()
