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
4. :func:`pytest_hostperf.vmimage.build_vm_disk` turns the tree into the usual cached disk.

The engine is not started by an init system: the guest bootstrap runs
:data:`ENGINE_SCRIPT` as its command (see :mod:`pytest_hostperf.environments.docker_in_vm`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Final, Optional

from pytest_hostperf import vmimage
from pytest_hostperf.environments.base import sweep_label
from pytest_hostperf.environments.docker import LABEL_HOST, LABEL_PID

__all__ = ["ENGINE_PACKAGES", "ENGINE_SCRIPT", "install_engine", "ensure_engine_disk", "engine_disk_key",
           "engine_version"]

Progress = Callable[[str], None]

ENGINE_PACKAGES: Final = ("docker.io", "containerd", "runc")
#: Port dockerd listens on inside the guest; QEMU forwards a host loopback port to it.
ENGINE_PORT: Final = 2375

# The guest bootstrap's command for docker@qemu. containerd is started first and
# waited for: dockerd's own start of it timed out in a TCG guest on a loaded host.
# No iptables and no bridge: containers get network "none" (hostperf's default), so
# the VM needs neither netfilter nor a docker0. The controller stops the engine by writing
# a line to the agent port; the script then waits for dockerd so the data disk is clean.
ENGINE_SCRIPT: Final = """\
set -u
containerd --log-level=warn >/dev/console 2>&1 &
containerd=$!
tries=0
while [ ! -S /run/containerd/containerd.sock ]; do
    tries=$((tries + 1))
    if [ "$tries" -gt 1200 ] || ! kill -0 "$containerd" 2>/dev/null; then
        echo "@@engine-exited containerd did not start"; exit 1
    fi
    sleep 0.1
done
dockerd --containerd=/run/containerd/containerd.sock \\
    --host=tcp://10.0.2.15:2375 --host=unix:///run/docker.sock --tls=false \\
    --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --bridge=none \\
    --userland-proxy=false --storage-driver=overlay2 --log-level=warn >/dev/console 2>&1 &
engine=$!
echo "@@engine-started $engine"
# If dockerd dies, end this script too: the VM powers off and the controller sees why.
( while kill -0 "$engine" 2>/dev/null; do sleep 1; done; echo "@@engine-exited"; kill -TERM $$ ) &
watcher=$!
read -r _request || true
kill "$watcher"
kill -TERM "$engine" 2>/dev/null
wait "$engine"
status=$?
kill -TERM "$containerd"
wait "$containerd"
echo "@@engine-stopped $status"
sync
"""


def engine_disk_key(base_id: str, debs: list) -> str:
    """The engine disk's cache key: the base image and the exact packages installed."""
    digest = hashlib.sha256(base_id.encode())
    for name in sorted(debs):
        digest.update(b"\0" + name.encode())
    return "docker-engine:" + digest.hexdigest()[:24]


def download_engine_debs(rootfs: Path, debs_dir: Path) -> list:
    """Download the engine's packages missing from ``rootfs`` into ``debs_dir``; their file names.

    apt resolves against the tree's own dpkg status, so exactly the missing packages
    come; which ones is read from a simulated install (a download prints nothing for
    files already in ``debs_dir``).
    """
    status = rootfs / "var" / "lib" / "dpkg" / "status"
    if not status.is_file():
        raise vmimage.VmImageError(f"{rootfs} has no dpkg status: the docker@qemu disk needs a Debian tree",
                                   hint="use the hostperf base image (hostperf image base)")
    (debs_dir / "partial").mkdir(parents=True, exist_ok=True)
    options = ["-o", f"Dir::State::status={status}", "-o", f"Dir::Cache::archives={debs_dir}",
               "-o", "Debug::NoLocking=1", "--no-install-recommends", *ENGINE_PACKAGES]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    plan = subprocess.run(["apt-get", "install", "-s", "-q", *options], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env)
    fetch = subprocess.run(["apt-get", "install", "-y", "-q", "--download-only", *options], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=env)
    packages = re.findall(r"^Inst (\S+) ", plan.stdout, re.M)
    if plan.returncode != 0 or fetch.returncode != 0 or not packages:
        raise vmimage.VmImageError("downloading the Docker engine packages failed: "
                                   + (plan.stdout + fetch.stdout)[-600:], hint="check the Debian mirror (apt-get update)")
    files = []
    for package in packages:
        found = sorted(p.name for p in debs_dir.glob(f"{package}_*.deb"))
        if not found:
            raise vmimage.VmImageError(f"apt-get did not leave {package}_*.deb in {debs_dir}")
        files.append(found[-1])
    return files


def install_engine(rootfs: Path, debs_dir: Path, say: Progress) -> list:
    """Install the Docker engine into ``rootfs`` (as root, offline after the download)."""
    if os.geteuid() != 0:
        raise vmimage.VmImageError("installing the Docker engine into the VM disk needs root (dpkg in a chroot)",
                                   hint="run `hostperf image build --vm-docker` as root once; the disk is cached")
    debs = download_engine_debs(rootfs, debs_dir)
    say(f"docker@qemu: installing {len(debs)} packages ({', '.join(ENGINE_PACKAGES)} ...) into the VM disk")
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
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise vmimage.VmImageError("installing the Docker engine into the VM disk failed (dpkg -i): "
                                       + proc.stdout[-600:], log_tail=proc.stdout[-2000:])
    finally:
        shutil.rmtree(inbox, ignore_errors=True)
        policy.unlink(missing_ok=True)
    for binary in ("usr/sbin/dockerd", "usr/bin/containerd", "usr/sbin/runc"):
        if not (rootfs / binary).exists():
            raise vmimage.VmImageError(f"the Docker engine was installed but /{binary} is missing")
    return debs


def ensure_engine_disk(client: Any, base_tag: str, cache_dir: Optional[Path] = None,
                       progress: Optional[Progress] = None) -> vmimage.VmDisk:
    """The cached docker@qemu disk made from the local image ``base_tag``.

    ``client`` is the host's Docker SDK client (the base image is exported from it).
    The key is the base image id plus the engine packages, so a Debian update of
    docker.io makes a new disk.
    """
    say = progress or (lambda _msg: None)
    # A directory of its own: vmimage prunes its cache to the 4 most recent disks, and
    # the engine disk must not push the project disks out (nor they it).
    cache_dir = Path(cache_dir) if cache_dir else vmimage.default_cache_dir() / "engine"
    image = client.images.get(base_tag)
    marker = cache_dir / f"engine-{image.id.split(':')[-1][:16]}.key"
    try:   # the key of the last build from this base: the cached disk, without a download
        key = marker.read_text().strip()
        cached = vmimage.load_cached(cache_dir, key)
        if cached is not None:
            return cached
    except OSError:
        pass
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".engine.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # one build at a time; what a killed one left goes
        for leftover in cache_dir.glob(".engine-rootfs-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        return _build_engine_disk(client, base_tag, image.id, cache_dir, marker, say)


def _build_engine_disk(client: Any, base_tag: str, base_id: str, cache_dir: Path, marker: Path,
                       say: Progress) -> vmimage.VmDisk:
    try:   # built by another session while we waited for the lock
        cached = vmimage.load_cached(cache_dir, marker.read_text().strip())
        if cached is not None:
            return cached
    except OSError:
        pass
    debs_dir = cache_dir / "engine-debs"
    with tempfile.TemporaryDirectory(prefix=".engine-rootfs-", dir=cache_dir) as tmp:
        rootfs = Path(tmp) / "rootfs"
        rootfs.mkdir()
        # Labelled like the docker backend's containers, so its sweep removes it after a crash.
        labels = {sweep_label(): "engine-disk", LABEL_PID: str(os.getpid()), LABEL_HOST: socket.gethostname()}
        container = client.containers.create(base_tag, command=["true"], labels=labels)
        try:
            say(f"docker@qemu: exporting {base_tag} for the engine VM disk")
            vmimage._extract_tar(container.export(), rootfs)
        finally:
            container.remove(force=True)
        debs = install_engine(rootfs, debs_dir, say)
        key = engine_disk_key(base_id, debs)
        disk = vmimage.build_vm_disk(rootfs, cache_dir, key, say, free_mb=256, label="docker-engine")
    (disk.directory / "engine.json").write_text(json.dumps({"debs": debs}, indent=2) + "\n")
    marker.write_text(key + "\n")
    return disk


def engine_version(disk: vmimage.VmDisk) -> Optional[str]:
    """The upstream docker.io version installed on an engine disk (``20.10.24+dfsg1``)."""
    try:
        debs = json.loads((disk.directory / "engine.json").read_text())["debs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for name in debs:
        if name.startswith("docker.io_"):
            return name.split("_")[1].split("-")[0]
    return None
