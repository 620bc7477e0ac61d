"""Where a qemu environment's VM disk comes from: a built disk, a root filesystem, or the docker image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from pytest_hostperf import vm
from pytest_hostperf.environments import labels
from pytest_hostperf.progress import SILENT, Reporter


def prepare_vm_disk(ref: Any, client: Any = None, cache_dir: Optional[Path] = None, reporter: Reporter = SILENT,
                    kernel: Optional[Path] = None, session_id: str = "image-build") -> vm.VmDisk:
    """The cached VM disk for a docker image (``images.ImageRef``), exported and built once.

    The image is exported through a created (never started) container labelled with
    the session and its owner (so a sweep removes it if this process dies), which is
    removed again; the disk is keyed by the image id.
    """
    cache_dir = Path(cache_dir) if cache_dir else vm.default_cache_dir()
    chosen = vm.explicit_kernel(kernel, None) if kernel else None
    cached = vm.load_cached(cache_dir, ref.id, chosen)
    if cached is not None:
        return cached
    if client is None:
        from pytest_hostperf.environments.docker import connect

        client = connect()
    image = client.images.get(ref.tag)
    image_env = dict(item.split("=", 1) for item in (image.attrs.get("Config", {}).get("Env") or []) if "=" in item)
    container = client.containers.create(ref.tag, command=["true"], labels=labels.owner_labels(session_id))
    try:
        return vm.build_vm_disk(container.export(), cache_dir, ref.id, reporter, kernel=kernel,
                                python=ref.python, env=image_env, label=ref.tag)
    finally:
        try:
            container.remove(force=True)
        except Exception:  # noqa: BLE001 - best effort; the docker sweep removes labelled leftovers
            pass


def disk_from_path(path: Path, cache_dir: Path, reporter: Reporter, kernel: Optional[Path]) -> vm.VmDisk:
    """--hostperf-vm-image: a built disk directory, its disk.img, or a root filesystem dir."""
    path = Path(path).expanduser().resolve()
    for directory in (path, path.parent):
        manifest = directory / "disk.json"
        if manifest.is_file():
            try:
                return vm.VmDisk.from_json(directory, json.loads(manifest.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                raise vm.VmImageError(f"unreadable VM disk manifest {manifest}: {exc}") from None
    if path.is_dir() and (path / "usr").is_dir():
        return vm.build_vm_disk(path, cache_dir, "dir:" + str(path), reporter, kernel=kernel)
    raise vm.VmImageError(
        f"{path} is neither a VM disk made by hostperf (a directory with disk.json) nor a root filesystem",
        hint="use the directory printed by `hostperf image build --vm`, or a root filesystem directory")
