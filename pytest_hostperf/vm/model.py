"""What a built VM disk is, where things live inside the guest, and the error of building one."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Final, Optional

#: Bumped whenever the layout of the disk changes in a way that invalidates cached
#: disks (the guest files themselves are hashed into the cache key anyway).
FORMAT_VERSION: Final = 3

#: Where the guest files live (the agent package's copy, the init, the module lists).
GUEST_DIR: Final = "/opt/hostperf"
GUEST_INIT: Final = GUEST_DIR + "/init"
#: Mount points inside the guest: the project and the package (read-only shares or the
#: copy disk), the writable share, a tmpfs, the copy disk, and a directory on the root disk.
GUEST_PROJECT: Final = "/hostperf/project"
GUEST_PKG: Final = "/hostperf/pkg"
GUEST_SHARE: Final = "/hostperf/share"
GUEST_TMPFS: Final = "/hostperf/tmpfs"
GUEST_EXTRA: Final = "/hostperf/extra"
GUEST_OWN: Final = "/var/tmp/hostperf-guest"
MOUNT_POINTS: Final = (GUEST_PROJECT, GUEST_PKG, GUEST_SHARE, GUEST_TMPFS, GUEST_EXTRA, GUEST_OWN)


class VmImageError(Exception):
    """The VM disk could not be built; ``hint`` says what to do about it."""

    def __init__(self, message: str, hint: str = "", log_tail: str = "") -> None:
        self.hint = hint
        self.log_tail = log_tail
        super().__init__(message)


@dataclasses.dataclass(frozen=True)
class VmDisk:
    """A built, cached VM disk: everything the qemu environment needs to boot it."""

    path: Path                    # raw ext4 image, read-only at run time
    kernel: Path
    initrd: Optional[Path]        # only used when the root disk driver is a module
    key: str                      # the caller's key (e.g. image id)
    kernel_version: str = ""
    root_device: str = "nvme"     # "nvme" (built-in driver) or "virtio" (needs the initrd)
    share_fs: Optional[str] = None  # "9p", "virtiofs" or None: what the guest kernel can mount
    python: str = "/usr/bin/python3"
    size_mb: int = 0
    env: dict[str, str] = dataclasses.field(default_factory=dict)   # image environment (a venv's PATH...)

    @property
    def directory(self) -> Path:
        return self.path.parent

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in ("path", "kernel", "initrd"):
            if data[name] is not None:
                data[name] = Path(data[name]).name
        return data

    @classmethod
    def from_json(cls, directory: Path, data: dict[str, Any]) -> VmDisk:
        fields = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in fields}
        for name in ("path", "kernel", "initrd"):
            if data.get(name) is not None:
                data[name] = directory / data[name]
        return cls(**data)


def guest_files() -> dict[str, Path]:
    """What the disk builder copies into ``GUEST_DIR``: destination -> source on the host.

    The guest bootstrap and the protocol module it imports (plus the package markers),
    and the shell init. Their bytes are part of the cache key of every disk.
    """
    package = Path(__file__).resolve().parent.parent
    files = {f"pytest_hostperf/{rel}": package / rel
             for rel in ("__init__.py", "agent/__init__.py", "agent/protocol.py", "agent/boot.py")}
    files["init.sh"] = package / "agent" / "guest_init.sh"
    return files
