"""docker@qemu's engine VM against a real Docker engine in a real QEMU VM, driven by the SDK.

The engine disk (base image + docker.io, built once per machine, a few minutes) is
cached; the data disk is built in a temp cache dir with a one-binary busybox image, by
the fallback path (loading through the VM's own engine, which must then stop cleanly
for the disk to be kept). The default path (a private dockerd on the host writes the
data root) is checked without a boot: the ext4 image it writes holds the image. Reusing
a cached data disk is what every docker@qemu session after the first does
(``test_topologies.py``). Expect several minutes under TCG on a loaded 2-core host.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest

from pytest_hostperf import images
from pytest_hostperf.environments import nfs
from pytest_hostperf.environments.qemu import find_qemu, session_root
from pytest_hostperf.environments.qemu.engine_vm import EngineVM
from pytest_hostperf.progress import Reporter
from pytest_hostperf.vm import engine_data, engine_disk, guest_kernel

pytestmark = [pytest.mark.qemu, pytest.mark.docker, pytest.mark.slow]

if find_qemu() is None and not os.environ.get("HOSTPERF_REQUIRE_QEMU"):
    pytest.skip("qemu-system-x86_64 is not installed", allow_module_level=True)
if (os.geteuid() != 0 or nfs.find_ganesha() is None) and not os.environ.get("HOSTPERF_REQUIRE_QEMU"):
    pytest.skip("the engine disk is built in a chroot and NFS needs nfs-ganesha: run as root after "
                "scripts/setup.sh", allow_module_level=True)


@pytest.fixture(scope="module")
def disk(engine: Any, project_image: images.ImageRef) -> Any:
    # project_image builds the base image too when the engine lacks it.
    return engine_disk.ensure_engine_disk(engine, images.BASE_TAG, reporter=Reporter(print))


@pytest.fixture(scope="module")
def kernel() -> guest_kernel.GuestKernel:
    return guest_kernel.ensure_guest_kernel(progress=print)


@pytest.fixture(scope="module")
def tiny_image(engine: Any, kernel: guest_kernel.GuestKernel) -> Iterator[Any]:
    """A one-binary image (static busybox from the kernel cache's packages): quick to load."""
    deb = sorted((guest_kernel.default_kernel_cache() / "debs").glob("busybox-static_*.deb"))[-1]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        binary = (Path(tmp) / "bin" / "busybox").read_bytes()
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w") as tar:
        for name in ("bin", "tmp", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(binary), 0o755
        tar.addfile(info, io.BytesIO(binary))
        for applet in ("sh", "cat", "grep", "echo", "ls"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    tag = f"hostperf-test-busybox:{os.getpid()}"
    engine.api.import_image_from_data(stream.getvalue(), repository=tag.split(":")[0], tag=tag.split(":")[1])
    image = engine.images.get(tag)
    yield image
    engine.images.remove(image.id, force=True)


def _session_processes(session: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if f"hostperf-{session}" in cmdline or f"{nfs.state_root()}/{session[:24]}" in cmdline:
            found.append(cmdline[:160])
    return found


def _images_on_data_disk(image: Path) -> dict[str, Any]:
    """The image repositories dockerd recorded in an ext4 data disk, read without booting it."""
    listed = subprocess.run(["debugfs", "-R", "cat /image/overlay2/repositories.json", str(image)],
                            capture_output=True, text=True, check=True).stdout
    return dict(json.loads(listed)["Repositories"])


# The fallback fill (no dockerd of the VM's version on the host) boots the engine VM and
# loads the images through it: ~3 minutes under TCG. CI's host has that dockerd, so CI takes
# the host path (test_data_disk_filled_on_the_host_holds_the_image, test_topologies) and
# leaves this one to `pytest -m extended` to stay within its time.
@pytest.mark.extended
def test_engine_in_vm_loads_its_images_and_stops_cleanly_so_the_disk_is_kept(
        tmp_path: Path, engine: Any, disk: Any, kernel: guest_kernel.GuestKernel, tiny_image: Any) -> None:
    """The fallback fill (the host's dockerd is another version): one boot, load, clean stop.

    A session on the cached disk (its bind mounts of 9p, NFS and virtiofs shares and its
    volume, as the container sees them) is ``test_topologies.py``: booting one here too
    would cost CI another few minutes of TCG for the same checks.
    """
    session = f"test-evm-{os.getpid()}"
    cache = tmp_path / "engine-data"
    lines: list[str] = []
    made = EngineVM(disk, kernel, session_id=session, host_client=engine, images=[tiny_image.tags[0]],
                    cache_dir=cache, fill_on_host=False,
                    reporter=Reporter(lines.append))
    try:
        data = made.ensure_data_disk(timeout=900)
    finally:
        made.stop()
    assert any("into the VM's engine" in line for line in lines), lines
    assert json.loads((data.parent / "data.json").read_text())["filled_by"] == "vm"
    # dockerd wrote its state and was stopped cleanly (else the disk would not be kept).
    repositories = _images_on_data_disk(data)
    assert tiny_image.id in repositories[tiny_image.tags[0].split(":")[0]].values()
    assert not list(cache.glob(".build-*"))   # the staging dir became the cache entry
    assert _session_processes(f"{session}-dq-fill") == []
    assert not list(session_root().glob(f"{session}*"))


@pytest.mark.skipif(engine_data.host_dockerd_version() is None, reason="needs dockerd on the host")
def test_data_disk_filled_on_the_host_holds_the_image(tmp_path: Path, engine: Any, tiny_image: Any) -> None:
    """The default path, without a boot: a private dockerd writes /var/lib/docker, mke2fs -d the disk."""
    image = tmp_path / "data.img"
    engine_data.fill_on_host(image, engine, [tiny_image.tags[0]], 512, session_id=f"test-fill-{os.getpid()}")
    repositories = _images_on_data_disk(image)
    assert tiny_image.id in repositories[tiny_image.tags[0].split(":")[0]].values()
    assert not (tmp_path / "data-root").exists()   # the staging data root is gone
    assert not list(Path(tempfile.gettempdir()).glob(f"hostperf-dockerd-*/{'dockerd.pid'}"))
