"""Turn a root filesystem into a bootable, cached VM disk for the qemu environment.

The root filesystem can come from anywhere: a directory (a debootstrap tree), a tar
stream (``docker export`` of the image the docker environment uses), or an iterable of
tar chunks (what the Docker SDK's ``container.export()`` yields). :func:`build_vm_disk`
adds the guest files (:func:`~pytest_hostperf.vm.model.guest_files`: the shell init and
the Python bootstrap with the protocol module it imports), the kernel modules the guest
needs when the kernel comes from the host, and writes a raw ext4 image with
``mke2fs -d`` (no root mount, no loop device). The result is cached (see
:mod:`pytest_hostperf.vm.cache`) and never modified at run time: every session boots
from a throwaway qcow2 overlay on top of it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Mapping, Optional, Union

from pytest_hostperf.agent import boot
from pytest_hostperf.progress import SILENT, Reporter
from pytest_hostperf.vm.cache import (
    BUILD_PREFIX,
    MANIFEST,
    build_lock,
    cache_digest,
    default_cache_dir,
    load_cached,
    prune_cache,
    sweep_build_dirs,
)
from pytest_hostperf.vm.kernel import (
    KernelInfo,
    builtin_modules,
    explicit_kernel,
    find_host_kernel,
    install_modules,
    module_name,
    rootfs_kernel,
)
from pytest_hostperf.vm.model import GUEST_DIR, MOUNT_POINTS, VmDisk, VmImageError, guest_files

RootfsSource = Union[str, Path, IO[bytes], Iterable[bytes]]


def build_vm_disk(
    rootfs: RootfsSource,
    cache_dir: Optional[Path] = None,
    key: str = "",
    reporter: Reporter = SILENT,
    *,
    kernel: Optional[Path] = None,
    initrd: Optional[Path] = None,
    free_mb: int = 1024,
    python: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
    label: str = "",
) -> VmDisk:
    """Build (or reuse) the VM disk for ``rootfs``, cached under ``cache_dir/<digest>``.

    ``rootfs`` is a directory, a binary file object with a tar stream, or an iterable of
    tar chunks. ``key`` identifies its content (an image id); when a disk for the same
    key, kernel and guest files exists, it is returned without reading ``rootfs``.
    ``free_mb`` is the free space left on the guest's own filesystem (the "guest" mount).
    ``python`` names the interpreter that has pytest (default: the first python3 found);
    ``env`` is the image's environment (e.g. a venv's PATH), applied to the agent.
    """
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    if not key:
        if isinstance(rootfs, (str, Path)):
            key = "dir:" + str(Path(rootfs).resolve())
        else:
            raise VmImageError("build_vm_disk needs a key for a streamed root filesystem")
    chosen = explicit_kernel(kernel, initrd) if kernel is not None else None
    cached = load_cached(cache_dir, key, chosen)
    if cached is not None:
        return cached
    for tool in ("mke2fs", "tar"):
        if shutil.which(tool) is None and not Path("/sbin", tool).exists():
            raise VmImageError(f"{tool} is not installed",
                               hint="apt-get install e2fsprogs tar (or run .ci/install-qemu.sh)")

    cache_dir.mkdir(parents=True, exist_ok=True)
    sweep_build_dirs(cache_dir)  # what killed builds left (GBs each)
    digest = cache_digest(key, chosen)
    final = cache_dir / digest
    with open(build_lock(cache_dir, digest), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # another session may be building the same disk
        cached = load_cached(cache_dir, key, chosen)
        if cached is not None:
            return cached
        staging = Path(tempfile.mkdtemp(prefix=f"{BUILD_PREFIX}{digest}-", dir=cache_dir))
        try:
            disk = dataclasses.replace(
                _build(rootfs, staging, label or key[:19], reporter, chosen, free_mb, python, dict(env or {})),
                key=key)
            (staging / "out" / MANIFEST).write_text(json.dumps(disk.to_json(), indent=2) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.rename(staging / "out", final)
            prune_cache(cache_dir, protect=[final])
            return VmDisk.from_json(final, json.loads((final / MANIFEST).read_text()))
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _build(rootfs: RootfsSource, staging: Path, label: str, reporter: Reporter,
           chosen: Optional[KernelInfo], free_mb: int, python: Optional[str], env: dict[str, str]) -> VmDisk:
    tree = staging / "rootfs"
    out = staging / "out"
    out.mkdir()
    if isinstance(rootfs, (str, Path)):
        source = Path(rootfs)
        if not source.is_dir():
            raise VmImageError(f"root filesystem {source} is not a directory")
        reporter.step(f"building VM disk from {source} ({du_mb(source)} MB)")
        run(["cp", "-a", "--reflink=auto", f"{source}/.", str(tree)], "copying the root filesystem")
    else:
        tree.mkdir()
        extract_tar(rootfs, tree)
        reporter.step(f"building VM disk from image {label} ({du_mb(tree)} MB)")

    # Docker leaves these in every exported container; they would make the guest look
    # like a container to the fingerprint.
    for leftover in (".dockerenv", "run/.containerenv"):
        try:
            (tree / leftover).unlink()
        except OSError:
            pass
    if python and not os.path.lexists(tree / python.lstrip("/")):
        raise VmImageError(f"the root filesystem has no {python}")
    python = python or _find_python(tree)
    kernel_info = chosen or rootfs_kernel(tree) or find_host_kernel()
    modules, network_modules = install_modules(kernel_info, tree)
    builtin = builtin_modules(kernel_info)
    root_device = "nvme" if ("nvme" in builtin) else "virtio"
    if root_device == "virtio" and "virtio_blk" not in builtin and kernel_info.initrd is None:
        raise VmImageError(
            f"kernel {kernel_info.path} has neither NVMe nor virtio-blk built in and no initrd",
            hint="use a Debian kernel with its initrd (apt-get install linux-image-cloud-amd64)")
    names = {module_name(m) for m in modules} | builtin
    share_fs = "9p" if {"9p", "9pnet_virtio"} <= names else ("virtiofs" if "virtiofs" in names else None)

    install_guest_files(tree, python, modules, network_modules)

    kernel_copy = out / "vmlinuz"
    shutil.copyfile(kernel_info.path, kernel_copy)
    initrd_copy = None
    if kernel_info.initrd is not None and root_device == "virtio":
        initrd_copy = out / "initrd.img"
        shutil.copyfile(kernel_info.initrd, initrd_copy)

    used = du_mb(tree)
    size_mb = int(used * 1.2) + free_mb
    reporter.step(f"writing ext4 disk ({used} MB used, {size_mb} MB total)")
    image = out / "disk.img"
    run(["mke2fs", "-q", "-t", "ext4", "-L", "hostperf-root", "-d", str(tree), "-F", str(image), f"{size_mb}M"],
        "writing the ext4 image", env={**os.environ, "E2FSPROGS_FAKE_TIME": "0"})
    return VmDisk(path=image, kernel=kernel_copy, initrd=initrd_copy, key="",
                  kernel_version=kernel_info.version, root_device=root_device, share_fs=share_fs,
                  python=python, size_mb=size_mb, env=dict(env))


def install_guest_files(tree: Path, python: str, modules: list[str], network_modules: list[str]) -> None:
    """Put the init, the bootstrap and the module lists into the root filesystem ``tree``."""
    guest = tree / GUEST_DIR.lstrip("/")
    guest.mkdir(parents=True, exist_ok=True)
    sources = guest_files()
    for name, source in sources.items():
        if name.endswith(".py"):
            target = guest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    (guest / boot.PYTHON_FILE).write_text(python + "\n")
    init = guest / "init"
    # A shell init when the image has one (clear errors even if python is broken), else
    # the interpreter itself as PID 1, running the bootstrap module from GUEST_DIR.
    if os.path.lexists(tree / "bin/sh"):
        shutil.copyfile(sources["init.sh"], init)
    else:
        init.write_text(f"#!{python} -S\nimport runpy, sys\nsys.path.insert(0, {GUEST_DIR!r})\n"
                        "runpy.run_module('pytest_hostperf.agent.boot', run_name='__main__', alter_sys=True)\n")
    init.chmod(0o755)
    (guest / boot.MODULES_LIST).write_text("".join(m + "\n" for m in modules))
    (guest / boot.NETWORK_MODULES_LIST).write_text("".join(m + "\n" for m in network_modules))
    for mountpoint in ("proc", "sys", "dev", "run", "tmp", *(p.lstrip("/") for p in MOUNT_POINTS)):
        (tree / mountpoint).mkdir(parents=True, exist_ok=True)


def build_debootstrap_rootfs(dest: Path, requirements: Iterable[str] = (), reporter: Reporter = SILENT,
                             mirror: str = "") -> Path:
    """A Debian root filesystem with python3, pytest and pytest-benchmark, without Docker.

    For hosts without a Docker engine: the base image's debootstrap recipe
    (:func:`pytest_hostperf.images.base.debootstrap_rootfs`), then the project image's
    wheels (:mod:`pytest_hostperf.images.requirements`) installed into the tree.
    Reuses ``dest`` when a previous call completed it with the same requirements.
    """
    from pytest_hostperf.images import base
    from pytest_hostperf.images import requirements as reqs_module

    dest = Path(dest)
    done = dest / GUEST_DIR.lstrip("/") / "rootfs.done"
    reqs = reqs_module.requirement_list(requirements)
    if done.is_file() and done.read_text() == json.dumps(reqs):
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    try:
        base.debootstrap_rootfs(dest, mirror or base.host_debian_mirror(), reporter)
        python_version = base.rootfs_python_version(dest)
        reporter.step(f"installing {', '.join(reqs)} into the root filesystem (python {python_version})")
        reqs_module.install_into_rootfs(dest, reqs, python_version)
    except base.ImageBuildError as exc:
        raise VmImageError(str(exc), hint=exc.hint, log_tail=exc.output) from None
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(reqs))
    return dest


def run(argv: list[str], doing: str, **kwargs: Any) -> None:
    """Run a build tool; VmImageError with its output when it fails."""
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False, **kwargs)
    if proc.returncode != 0:
        raise VmImageError(f"{doing} failed: {' '.join(argv[:3])} ... exited with {proc.returncode}",
                           log_tail=proc.stdout.decode(errors="replace")[-2000:])


def du_mb(path: Path) -> int:
    """Megabytes used under ``path`` (``du -sm``; 0 when it cannot tell)."""
    proc = subprocess.run(["du", "-sm", str(path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False)
    try:
        return int(proc.stdout.split()[0])
    except (IndexError, ValueError):
        return 0


def extract_tar(stream: Union[IO[bytes], Iterable[bytes]], tree: Path) -> None:
    argv = ["tar", "-x", "-C", str(tree), "--anchored", "--exclude=dev/*", "--exclude=./dev/*"]
    argv += ["--numeric-owner"] if os.geteuid() == 0 else ["--no-same-owner", "--no-same-permissions"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        if hasattr(stream, "read"):
            shutil.copyfileobj(stream, proc.stdin, 1 << 20)  # type: ignore[arg-type,type-var]
        else:
            for chunk in stream:
                proc.stdin.write(chunk)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    err = ""
    if proc.stderr is not None:
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()  # read to its end is not closed: a ResourceWarning when collected
    if proc.wait() != 0:
        raise VmImageError(f"extracting the root filesystem failed (tar exited with {proc.returncode})",
                           log_tail=err[-2000:])
    (tree / "dev").mkdir(exist_ok=True)


def _find_python(tree: Path) -> str:
    for candidate in ("usr/local/bin/python3", "usr/bin/python3", "bin/python3"):
        if os.path.lexists(tree / candidate):
            return "/" + candidate
    raise VmImageError("the root filesystem has no python3 (looked in /usr/local/bin, /usr/bin, /bin)",
                       hint="use an image with python3, pytest and pytest-benchmark (hostperf image build)")


__all__ = ["RootfsSource", "build_debootstrap_rootfs", "build_vm_disk", "extract_tar", "install_guest_files"]
