"""docker@qemu against a real Docker engine in a real QEMU VM, driven by the Docker SDK.

The engine disk (base image + docker.io, built once per machine, a few minutes) is
cached; the data disk is built in a temp cache dir with a tiny busybox image so both
its build (load into the VM's engine, clean shutdown) and its reuse are exercised.
Expect several minutes under TCG on a loaded 2-core host.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from pytest_hostperf.environments import nfs
from pytest_hostperf.environments import qemu as qemu_mod
from pytest_hostperf.environments.docker_in_vm import EngineShare, VmDockerEngine
from pytest_hostperf.vm import docker_data, docker_engine, guest_kernel

pytestmark = [pytest.mark.qemu, pytest.mark.docker, pytest.mark.slow]

if qemu_mod.find_qemu() is None and not os.environ.get("HOSTPERF_REQUIRE_QEMU"):
    pytest.skip("qemu-system-x86_64 is not installed", allow_module_level=True)
if os.geteuid() != 0 or nfs.find_ganesha() is None:
    pytest.skip("the engine disk is built in a chroot and NFS needs nfs-ganesha: run as root after "
                "scripts/setup.sh", allow_module_level=True)


@pytest.fixture(scope="module")
def engine_disk(engine: Any, project_image: Any) -> Any:
    # project_image builds the base image too when the engine lacks it.
    return docker_engine.ensure_engine_disk(engine, "hostperf-base:bookworm", progress=print)


@pytest.fixture(scope="module")
def kernel() -> guest_kernel.GuestKernel:
    return guest_kernel.ensure_guest_kernel(progress=print)


@pytest.fixture(scope="module")
def tiny_image(engine: Any, kernel: guest_kernel.GuestKernel) -> Any:
    """A one-binary image (static busybox from the kernel cache's packages): quick to load."""
    import subprocess

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
        for applet in ("sh", "cat", "grep", "stat", "echo", "ls"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    tag = f"hostperf-test-busybox:{os.getpid()}"
    engine.api.import_image_from_data(stream.getvalue(), repository=tag.split(":")[0], tag=tag.split(":")[1])
    image = engine.images.get(tag)
    yield image
    engine.images.remove(image.id, force=True)


def _our_processes(session: str) -> list:
    marker = f"hostperf-{session}"
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if marker in cmdline or (session in cmdline and "ganesha" in cmdline):
            found.append(cmdline[:120])
    return found


def test_engine_in_vm_serves_bind_mounts_of_each_share_and_a_volume(
        tmp_path: Path, engine: Any, engine_disk: Any, kernel: guest_kernel.GuestKernel, tiny_image: Any) -> None:
    shares = {kind: tmp_path / kind for kind in ("9p", "nfs")}
    for kind, directory in shares.items():
        directory.mkdir()
        (directory / "from-host").write_text(f"host via {kind}\n")
    session = f"test-dvm-{os.getpid()}"
    cache = tmp_path / "engine-data"
    lines: list = []
    # fill_on_host=False: the images go in through the VM's engine, which must then stop
    # cleanly for the disk to be kept (the fallback when the host has another dockerd).
    made = VmDockerEngine(engine_disk, kernel, session_id=session, host_client=engine, images=[tiny_image.tags[0]],
                          shares=[EngineShare(kind, path) for kind, path in shares.items()], cache_dir=cache,
                          fill_on_host=False, progress=lines.append)
    client = made.start()
    try:
        assert any("loading" in line and "into the VM's engine" in line for line in lines), lines
        assert json.loads((cache / made.data_disk_key() / "data.json").read_text())["filled_by"] == "vm"
        info = client.info()
        assert info["KernelVersion"] == kernel.version          # the VM's kernel, not the host's
        assert info["Driver"] == "overlay2" and str(info["CgroupVersion"]) == "2"
        script = ("grep -E ' /(m9p|mnfs|vol) ' /proc/mounts; cat /m9p/from-host /mnfs/from-host; "
                  "echo c9p > /m9p/from-container; echo cnfs > /mnfs/from-container; echo v > /vol/x; cat /vol/x")
        from docker.types import Mount

        out = client.containers.run(
            tiny_image.tags[0], ["sh", "-c", script], remove=True, network_mode="none",
            mounts=[Mount("/m9p", "/hostperf/shares/9p", type="bind"),
                    Mount("/mnfs", "/hostperf/shares/nfs", type="bind"),
                    Mount("/vol", f"{session}-vol", type="volume")]).decode()
        fstypes = {line.split()[1]: line.split()[2] for line in out.splitlines() if line.startswith(("share", "10.", "/dev"))}
        assert fstypes == {"/m9p": "9p", "/mnfs": "nfs4", "/vol": "ext4"}, out   # as the container sees them
        assert "host via 9p" in out and "host via nfs" in out and out.rstrip().endswith("v")
        assert (shares["9p"] / "from-container").read_text() == "c9p\n"
        assert (shares["nfs"] / "from-container").read_text() == "cnfs\n"
    finally:
        made.stop()
    assert _our_processes(session) == []
    assert not (qemu_mod.session_root() / session).exists()

    # Second session on the same cache: the data disk (and the image in it) is reused.
    lines.clear()
    again = VmDockerEngine(engine_disk, kernel, session_id=session + "-2", host_client=engine,
                           images=[tiny_image.tags[0]], cache_dir=cache, progress=lines.append)
    started = time.monotonic()
    client = again.start()
    try:
        assert not any("building" in line or "loading" in line for line in lines), lines
        assert tiny_image.id in [image.id for image in client.images.list()]
        assert client.containers.run(tiny_image.tags[0], ["echo", "ok"], remove=True,
                                     network_mode="none").strip() == b"ok"
        print(f"docker@qemu start-up with a cached data disk: {again.timings} "
              f"(first container done {time.monotonic() - started:.1f} s after start())")
    finally:
        again.stop()
    assert _our_processes(session + "-2") == []


@pytest.mark.skipif(docker_data.host_dockerd_version() is None, reason="needs dockerd on the host")
def test_data_disk_filled_on_the_host_boots_with_the_image(
        tmp_path: Path, engine: Any, engine_disk: Any, kernel: guest_kernel.GuestKernel, tiny_image: Any) -> None:
    if docker_data.host_dockerd_version() != docker_engine.engine_version(engine_disk):
        pytest.skip("the host's dockerd is not the VM's version: the data disk is filled in the VM")
    session = f"test-dvm-host-{os.getpid()}"
    made = VmDockerEngine(engine_disk, kernel, session_id=session, host_client=engine,
                          images=[tiny_image.tags[0]], cache_dir=tmp_path / "engine-data", progress=print)
    client = made.start()
    try:
        manifest = json.loads((tmp_path / "engine-data" / made.data_disk_key() / "data.json").read_text())
        assert manifest["filled_by"] == "host", manifest
        assert tiny_image.id in [image.id for image in client.images.list()]
        out = client.containers.run(tiny_image.tags[0], ["sh", "-c", "echo from-vm; grep ' / ' /proc/mounts"],
                                    remove=True, network_mode="none").decode()
        assert out.startswith("from-vm") and " / overlay " in out, out
    finally:
        made.stop()
    assert _our_processes(session) == []
    assert not list(Path(tempfile.gettempdir()).glob("hostperf-dockerd-*"))   # the private dockerd's dirs
