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
from pytest_hostperf.environments.qemu.engine_vm import EngineVM, guest_path
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


def test_engine_in_vm_loads_its_images_then_serves_bind_mounts_of_each_share_and_a_volume(
        tmp_path: Path, engine: Any, disk: Any, kernel: guest_kernel.GuestKernel, tiny_image: Any) -> None:
    session = f"test-evm-{os.getpid()}"
    cache = tmp_path / "engine-data"
    lines: list[str] = []
    # fill_on_host=False: the image goes in through the VM's engine, which must then stop
    # cleanly for the disk to be kept (the fallback when the host has another dockerd).
    made = EngineVM(disk, kernel, session_id=session, host_client=engine, images=[tiny_image.tags[0]],
                    share_kinds=["9p", "nfs"], cache_dir=cache, fill_on_host=False,
                    reporter=Reporter(lines.append))
    client = made.start()
    try:
        assert any("into the VM's engine" in line for line in lines), lines
        assert json.loads((cache / made.data_disk_key() / "data.json").read_text())["filled_by"] == "vm"
        assert tiny_image.id in [image.id for image in client.images.list()]   # kept across the clean stop
        info = client.info()
        assert info["KernelVersion"] == kernel.version != os.uname().release   # the VM's kernel
        assert info["Driver"] == "overlay2" and str(info["CgroupVersion"]) == "2"
        for kind in ("9p", "nfs"):
            (made.host_path(kind) / "from-host").write_text(f"host via {kind}\n")   # type: ignore[operator]
        script = ("grep -E ' /(m9p|mnfs|vol) ' /proc/mounts; cat /m9p/from-host /mnfs/from-host; "
                  "echo c9p > /m9p/from-container; echo cnfs > /mnfs/from-container; echo v > /vol/x; cat /vol/x")
        from docker.types import Mount

        out = client.containers.run(
            tiny_image.tags[0], ["sh", "-c", script], remove=True, network_mode="none",
            mounts=[Mount("/m9p", guest_path("9p"), type="bind"), Mount("/mnfs", guest_path("nfs"), type="bind"),
                    Mount("/vol", f"{session}-vol", type="volume")]).decode()
        fstypes = {line.split()[1]: line.split()[2] for line in out.splitlines() if " /m" in line or " /vol " in line}
        assert fstypes == {"/m9p": "9p", "/mnfs": "nfs4", "/vol": "ext4"}, out   # as the container sees them
        assert "host via 9p" in out and "host via nfs" in out and out.rstrip().endswith("v")
        assert (made.host_path("9p") / "from-container").read_text() == "c9p\n"   # type: ignore[operator]
        assert (made.host_path("nfs") / "from-container").read_text() == "cnfs\n"   # type: ignore[operator]
        facts = made.describe()
        assert facts["kernel"] == kernel.version and facts["accelerator"] in ("tcg", "kvm")
        assert set(facts["shares"]) == {"9p", "nfs"} and facts["startup_s"] > 0
        workdir = made.workdir
    finally:
        made.stop()
    assert _session_processes(f"{session}-dq") == [] and _session_processes(f"{session}-dq-fill") == []
    assert workdir is not None and not workdir.exists()
    assert not list(session_root().glob(f"{session}*"))


@pytest.mark.skipif(engine_data.host_dockerd_version() is None, reason="needs dockerd on the host")
def test_data_disk_filled_on_the_host_holds_the_image(tmp_path: Path, engine: Any, tiny_image: Any) -> None:
    """The default path, without a boot: a private dockerd writes /var/lib/docker, mke2fs -d the disk."""
    image = tmp_path / "data.img"
    engine_data.fill_on_host(image, engine, [tiny_image.tags[0]], 512, session_id=f"test-fill-{os.getpid()}")
    listed = subprocess.run(["debugfs", "-R", "cat /image/overlay2/repositories.json", str(image)],
                            capture_output=True, text=True, check=True).stdout
    repositories = json.loads(listed)["Repositories"]
    assert tiny_image.id in repositories[tiny_image.tags[0].split(":")[0]].values()
    assert not (tmp_path / "data-root").exists()   # the staging data root is gone
    assert not list(Path(tempfile.gettempdir()).glob(f"hostperf-dockerd-*/{'dockerd.pid'}"))
