"""The VM disk for ``docker@qemu``: a Debian root filesystem with the Docker engine.

Docker Desktop, colima, Lima and Podman machine all run the engine inside a Linux VM
and let the host's docker client drive it. This recipe makes the same VM from parts we
already have, offline once the packages are downloaded:

1. the hostperf base image (debootstrap + python3, :mod:`pytest_hostperf.images`) is
   exported into a directory;
2. ``docker.io`` and what it needs beyond that tree (``containerd``, ``runc``, ``tini``,
   ``iptables`` and libraries) are downloaded on the host by ``apt-get --download-only``
   against the tree's own dpkg status, so exactly the missing packages come;
3. they are installed into the tree by ``dpkg -i`` in a chroot, with a ``policy-rc.d``
   that keeps their services from starting;
4. :func:`pytest_hostperf.vm.build_vm_disk` writes the cached ext4 disk.

The VM has no init system: the guest bootstrap runs :data:`ENGINE_SCRIPT` (a shell file
beside this module) as its command (see :mod:`pytest_hostperf.environments.qemu.engine_vm`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Final, Optional

from pytest_hostperf.environments import labels
from pytest_hostperf.progress import SILENT, Reporter
from pytest_hostperf.vm.cache import default_cache_dir, load_cached
from pytest_hostperf.vm.disk import build_vm_disk, extract_tar
from pytest_hostperf.vm.model import VmDisk, VmImageError

__all__ = ["ENGINE_PACKAGES", "ENGINE_PORT", "ENGINE_SCRIPT", "engine_disk_key", "engine_script", "engine_version",
           "ensure_engine_disk", "install_engine"]

ENGINE_PACKAGES: Final = ("docker.io", "containerd", "runc")
#: Port dockerd listens on inside the guest; QEMU forwards a host loopback port to it.
ENGINE_PORT: Final = 2375
#: The engine VM's command: starts containerd and dockerd, stops them on a line from the controller.
ENGINE_SCRIPT: Final = Path(__file__).resolve().parent / "docker_engine.sh"
#: The engine disk's own cache directory: the project disks' cache is pruned to a few
#: disks, and the engine disk must not push them out (nor they it).
ENGINE_CACHE: Final = "engine"


def engine_script() -> str:
    """The text of :data:`ENGINE_SCRIPT` (sent to the guest in the launch message)."""
    return ENGINE_SCRIPT.read_text()


def engine_disk_key(base_id: str, debs: list[str]) -> str:
    """The engine disk's cache key: the base image and the exact packages installed."""
    digest = hashlib.sha256(base_id.encode())
    for name in sorted(debs):
        digest.update(b"\0" + name.encode())
    return "docker-engine:" + digest.hexdigest()[:24]


def download_engine_debs(rootfs: Path, debs_dir: Path) -> list[str]:
    """Download the engine's packages missing from ``rootfs`` into ``debs_dir``; their file names.

    apt resolves against the tree's own dpkg status, so exactly the missing packages
    come; which ones is read from a simulated install (a download prints nothing for
    files already in ``debs_dir``).
    """
    status = rootfs / "var" / "lib" / "dpkg" / "status"
    if not status.is_file():
        raise VmImageError(f"{rootfs} has no dpkg status: the docker@qemu disk needs a Debian tree",
                           hint="use the hostperf base image (hostperf image base)")
    (debs_dir / "partial").mkdir(parents=True, exist_ok=True)
    options = ["-o", f"Dir::State::status={status}", "-o", f"Dir::Cache::archives={debs_dir}",
               "-o", "Debug::NoLocking=1", "--no-install-recommends", *ENGINE_PACKAGES]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    plan = subprocess.run(["apt-get", "install", "-s", "-q", *options], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env, check=False)
    fetch = subprocess.run(["apt-get", "install", "-y", "-q", "--download-only", *options], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=env, check=False)
    packages = re.findall(r"^Inst (\S+) ", plan.stdout, re.M)
    if plan.returncode != 0 or fetch.returncode != 0 or not packages:
        raise VmImageError("downloading the Docker engine packages failed: " + (plan.stdout + fetch.stdout)[-600:],
                           hint="check the Debian mirror (apt-get update)")
    files = []
    for package in packages:
        found = sorted(p.name for p in debs_dir.glob(f"{package}_*.deb"))
        if not found:
            raise VmImageError(f"apt-get did not leave {package}_*.deb in {debs_dir}")
        files.append(found[-1])
    return files


def install_engine(rootfs: Path, debs_dir: Path, reporter: Reporter = SILENT) -> list[str]:
    """Install the Docker engine into ``rootfs`` (as root, offline after the download)."""
    if os.geteuid() != 0:
        raise VmImageError("installing the Docker engine into the VM disk needs root (dpkg in a chroot)",
                           hint="run `hostperf image build --vm-docker` as root once; the disk is cached")
    debs = download_engine_debs(rootfs, debs_dir)
    reporter.step(f"installing {len(debs)} packages ({', '.join(ENGINE_PACKAGES)} ...) into the engine VM disk")
    inbox = rootfs / "tmp" / "hostperf-debs"
    inbox.mkdir(parents=True, exist_ok=True)
    policy = rootfs / "usr" / "sbin" / "policy-rc.d"
    policy.write_text("#!/bin/sh\n# hostperf: no service starts while the disk is built\nexit 101\n")
    policy.chmod(0o755)
    try:
        for name in debs:
            shutil.copyfile(debs_dir / name, inbox / name)
        argv = ["chroot", str(rootfs), "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "DEBIAN_FRONTEND=noninteractive", "dpkg", "-i", "--force-confdef", "--force-confold",
                *(f"/tmp/hostperf-debs/{name}" for name in debs)]
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        if proc.returncode != 0:
            raise VmImageError("installing the Docker engine into the VM disk failed (dpkg -i): "
                               + proc.stdout[-600:], log_tail=proc.stdout[-2000:])
    finally:
        shutil.rmtree(inbox, ignore_errors=True)
        policy.unlink(missing_ok=True)
    for binary in ("usr/sbin/dockerd", "usr/bin/containerd", "usr/sbin/runc"):
        if not (rootfs / binary).exists():
            raise VmImageError(f"the Docker engine was installed but /{binary} is missing")
    return debs


def ensure_engine_disk(client: Any, base_tag: str, cache_dir: Optional[Path] = None,
                       reporter: Reporter = SILENT, session_id: str = "image-build") -> VmDisk:
    """The cached docker@qemu disk made from the local image ``base_tag``.

    ``client`` is the host's Docker SDK client (the base image is exported from it).
    The key is the base image id plus the engine packages, so a Debian update of
    docker.io makes a new disk.
    """
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir() / ENGINE_CACHE
    image = client.images.get(base_tag)
    marker = cache_dir / f"engine-{image.id.split(':')[-1][:16]}.key"
    cached = _cached(cache_dir, marker)
    if cached is not None:
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".engine.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # one build at a time; what a killed one left goes
        for leftover in cache_dir.glob(".engine-rootfs-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        cached = _cached(cache_dir, marker)   # built by another session while we waited
        if cached is not None:
            return cached
        return _build_engine_disk(client, base_tag, image.id, cache_dir, marker, reporter, session_id)


def _cached(cache_dir: Path, marker: Path) -> Optional[VmDisk]:
    """The disk of the last build from this base (its key is in ``marker``), without a download."""
    try:
        return load_cached(cache_dir, marker.read_text().strip())
    except OSError:
        return None


def _build_engine_disk(client: Any, base_tag: str, base_id: str, cache_dir: Path, marker: Path,
                       reporter: Reporter, session_id: str) -> VmDisk:
    debs_dir = cache_dir / "engine-debs"
    with tempfile.TemporaryDirectory(prefix=".engine-rootfs-", dir=cache_dir) as tmp:
        rootfs = Path(tmp) / "rootfs"
        rootfs.mkdir()
        # Labelled like the docker backend's containers, so its sweep removes it after a crash.
        container = client.containers.create(base_tag, command=["true"], labels=labels.owner_labels(session_id))
        try:
            reporter.step(f"exporting {base_tag} for the engine VM disk")
            extract_tar(container.export(), rootfs)
        finally:
            container.remove(force=True)
        debs = install_engine(rootfs, debs_dir, reporter)
        key = engine_disk_key(base_id, debs)
        disk = build_vm_disk(rootfs, cache_dir, key, reporter, free_mb=256, label="docker-engine")
    (disk.directory / "engine.json").write_text(json.dumps({"debs": debs}, indent=2) + "\n")
    marker.write_text(key + "\n")
    return disk


def engine_version(disk: VmDisk) -> Optional[str]:
    """The upstream docker.io version installed on an engine disk (``20.10.24+dfsg1``)."""
    try:
        debs = json.loads((disk.directory / "engine.json").read_text())["debs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for name in debs:
        if name.startswith("docker.io_"):
            return str(name.split("_")[1].split("-")[0])
    return None
