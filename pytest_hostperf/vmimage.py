"""Turn a root filesystem into a bootable, cached VM disk for the qemu environment.

The root filesystem can come from anywhere: a directory (a debootstrap tree), a tar
stream (``docker export`` of the image the docker environment uses), or an iterable of
tar chunks (what the Docker SDK's ``container.export()`` yields). :func:`build_vm_disk`
adds a small guest init (``/opt/hostperf/init``), the kernel modules the guest needs
when the kernel comes from the host, and writes a raw ext4 image with
``mke2fs -d`` (no root mount, no loop device). The result is cached under
``~/.cache/pytest-hostperf/vm/<digest>/`` and never modified at run time: every session
boots from a throwaway qcow2 overlay on top of it.

The guest boots straight into ``/opt/hostperf/init`` (no systemd, no initrd when the
kernel has a built-in NVMe or virtio-blk driver for the root disk), which loads modules
with ``finit_module(2)`` (so the image needs no kmod), waits for the controller's launch
message on the virtio-serial port, mounts the shares it names and runs the agent with
stdin/stdout on that port.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Callable, Final, Iterable, Optional, Union

__all__ = [
    "VmDisk",
    "KernelInfo",
    "VmImageError",
    "build_vm_disk",
    "default_cache_dir",
    "find_host_kernel",
    "explicit_kernel",
    "cache_digest",
    "load_cached",
    "prune_cache",
    "build_debootstrap_rootfs",
]

#: Bumped whenever the layout of the disk or the guest init changes in a way that
#: invalidates cached disks.
FORMAT_VERSION: Final = 2

Progress = Callable[[str], None]
RootfsSource = Union[str, Path, IO[bytes], Iterable[bytes]]

#: Modules the guest may need, in the order they should be tried (dependencies are
#: resolved from ``modules.dep``, so only the leaves matter here).
WANTED_MODULES: Final = (
    "virtio_pci", "virtio_console", "virtio_blk", "virtio_rng",
    "9pnet_virtio", "9p", "virtiofs", "nvme",
)
#: Loaded only when the controller asks for a network (``-nic none`` otherwise).
NETWORK_MODULES: Final = ("virtio_net",)

#: Where things live inside the guest.
GUEST_DIR: Final = "/opt/hostperf"
GUEST_INIT: Final = GUEST_DIR + "/init"
AGENT_PORT_NAME: Final = "hostperf.agent"
BOOT_MARKER: Final = b"@@hostperf-boot@@"


class VmImageError(Exception):
    """The VM disk could not be built; ``hint`` says what to do about it."""

    def __init__(self, message: str, hint: str = "", log_tail: str = "") -> None:
        self.hint = hint
        self.log_tail = log_tail
        super().__init__(message)


@dataclasses.dataclass(frozen=True)
class KernelInfo:
    """A kernel to boot the guest with, and where its modules are."""

    path: Path
    version: str
    initrd: Optional[Path]
    modules_dir: Optional[Path]   # /lib/modules/<version> (host or inside the rootfs)
    source: str                   # "rootfs", "host" or "explicit"


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
    env: dict = dataclasses.field(default_factory=dict)   # image environment (PATH of a venv, ...)

    @property
    def directory(self) -> Path:
        return self.path.parent

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        for name in ("path", "kernel", "initrd"):
            if data[name] is not None:
                data[name] = Path(data[name]).name
        return data

    @classmethod
    def from_json(cls, directory: Path, data: dict) -> "VmDisk":
        fields = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in fields}
        for name in ("path", "kernel", "initrd"):
            if data.get(name) is not None:
                data[name] = directory / data[name]
        return cls(**data)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pytest-hostperf/vm`` (``~/.cache/...`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-hostperf" / "vm"


def _guest_files_hash() -> str:
    digest = hashlib.sha256()
    digest.update(str(FORMAT_VERSION).encode())
    digest.update(_INIT_SCRIPT.encode())
    digest.update(_BOOT_PY.encode())
    digest.update(repr((WANTED_MODULES, NETWORK_MODULES)).encode())
    return digest.hexdigest()[:16]


def _version_key(version: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.\-+~]", version)]


def find_host_kernel(boot_dir: Path = Path("/boot"), modules_root: Path = Path("/lib/modules")) -> KernelInfo:
    """The newest host kernel that has its modules installed (Debian cloud kernel first)."""
    candidates = []
    for kernel in boot_dir.glob("vmlinuz-*"):
        version = kernel.name[len("vmlinuz-"):]
        if (modules_root / version).is_dir():
            candidates.append((("cloud" in version), _version_key(version), kernel, version))
    if not candidates:
        raise VmImageError(
            f"no kernel found: neither the root filesystem nor {boot_dir} has a vmlinuz-* "
            f"with modules in {modules_root}",
            hint="apt-get install linux-image-cloud-amd64 (or run .ci/install-qemu.sh)",
        )
    candidates.sort(key=lambda c: (c[0], c[1]))
    _, _, kernel, version = candidates[-1]
    initrd = boot_dir / f"initrd.img-{version}"
    return KernelInfo(kernel, version, initrd if initrd.exists() else None, modules_root / version, "host")


def _rootfs_kernel(rootfs: Path) -> Optional[KernelInfo]:
    boot = rootfs / "boot"
    if not boot.is_dir():
        return None
    for module_root in (rootfs / "lib" / "modules", rootfs / "usr" / "lib" / "modules"):
        try:
            return find_host_kernel(boot, module_root)
        except VmImageError:
            continue
    return None


def explicit_kernel(kernel: Path, initrd: Optional[Path] = None) -> KernelInfo:
    """A kernel the user named; its modules are looked up in /lib/modules/<version>."""
    kernel = Path(kernel)
    if not kernel.is_file():
        raise VmImageError(f"no kernel found at {kernel}",
                           hint="pass an existing vmlinuz, or none to use the host's /boot/vmlinuz-*")
    if not os.access(kernel, os.R_OK):
        raise VmImageError(f"kernel {kernel} is not readable by this user",
                           hint=f"chmod a+r {kernel}, or run as a user that can read it")
    version = kernel.name[len("vmlinuz-"):] if kernel.name.startswith("vmlinuz-") else ""
    modules = Path("/lib/modules") / version if version else None
    if initrd is None and version:
        guess = kernel.parent / f"initrd.img-{version}"
        initrd = guess if guess.exists() else None
    return KernelInfo(kernel, version, initrd, modules if modules and modules.is_dir() else None, "explicit")


def cache_digest(key: str, kernel: Optional[KernelInfo] = None) -> str:
    """Cache directory name: the caller's key + fallback kernel + guest init version."""
    if kernel is None:
        try:
            kernel = find_host_kernel()
        except VmImageError:
            kernel = None
    digest = hashlib.sha256()
    digest.update(key.encode())
    digest.update(b"\0" + (f"{kernel.path}:{kernel.version}".encode() if kernel else b"-"))
    digest.update(b"\0" + _guest_files_hash().encode())
    return digest.hexdigest()[:20]


def load_cached(cache_dir: Path, key: str, kernel: Optional[KernelInfo] = None) -> Optional[VmDisk]:
    """The cached disk for ``key`` when it was built before, else None."""
    directory = Path(cache_dir) / cache_digest(key, kernel)
    manifest = directory / "disk.json"
    try:
        disk = VmDisk.from_json(directory, json.loads(manifest.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if not (disk.path.is_file() and disk.kernel.is_file()):
        return None
    try:
        os.utime(manifest)   # last use, for pruning
    except OSError:
        pass
    return disk


def prune_cache(cache_dir: Path, keep: int = 4, protect: Iterable[Path] = ()) -> list:
    """Remove all but the ``keep`` most recently used disks; return the removed dirs.

    A running VM is unaffected (qemu keeps its backing file open); ``protect`` names
    directories never to remove.
    """
    protected = {Path(p).resolve() for p in protect}
    disks = []
    for manifest in Path(cache_dir).glob("*/disk.json"):
        try:
            disks.append((manifest.stat().st_mtime, manifest.parent))
        except OSError:
            continue
    disks.sort(reverse=True)
    removed = []
    for _, directory in disks[keep:]:
        if directory.resolve() in protected:
            continue
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    return removed


def build_vm_disk(
    rootfs: RootfsSource,
    cache_dir: Optional[Path] = None,
    key: str = "",
    progress: Optional[Progress] = None,
    *,
    kernel: Optional[Path] = None,
    initrd: Optional[Path] = None,
    free_mb: int = 1024,
    python: Optional[str] = None,
    env: Optional[dict] = None,
    label: str = "",
) -> VmDisk:
    """Build (or reuse) the VM disk for ``rootfs``, cached under ``cache_dir/<digest>``.

    ``rootfs`` is a directory, a binary file object with a tar stream, or an iterable of
    tar chunks. ``key`` identifies its content (an image id); when a disk for the same
    key, kernel and guest init exists, it is returned without reading ``rootfs``.
    ``free_mb`` is the free space left on the guest's own filesystem (the "guest" mount).
    ``python`` names the interpreter that has pytest (default: the first python3 found);
    ``env`` is the image's environment (e.g. a venv's PATH), applied to the agent.
    """
    say = progress or (lambda _msg: None)
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
            raise VmImageError(f"{tool} is not installed", hint="apt-get install e2fsprogs tar (or run .ci/install-qemu.sh)")

    cache_dir.mkdir(parents=True, exist_ok=True)
    digest = cache_digest(key, chosen)
    final = cache_dir / digest
    with open(cache_dir / f".{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # another session may be building the same disk
        cached = load_cached(cache_dir, key, chosen)
        if cached is not None:
            return cached
        staging = Path(tempfile.mkdtemp(prefix=f".build-{digest}-", dir=cache_dir))
        try:
            disk = dataclasses.replace(
                _build(rootfs, staging, label or key[:19], say, chosen, free_mb, python, env or {}), key=key)
            (staging / "out" / "disk.json").write_text(json.dumps(disk.to_json(), indent=2) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.rename(staging / "out", final)
            prune_cache(cache_dir, protect=[final])
            return VmDisk.from_json(final, json.loads((final / "disk.json").read_text()))
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _build(rootfs: RootfsSource, staging: Path, label: str, say: Progress,
           chosen: Optional[KernelInfo], free_mb: int, python: Optional[str], env: dict) -> VmDisk:
    tree = staging / "rootfs"
    out = staging / "out"
    out.mkdir()
    if isinstance(rootfs, (str, Path)):
        source = Path(rootfs)
        if not source.is_dir():
            raise VmImageError(f"root filesystem {source} is not a directory")
        say(f"qemu: building VM disk from {source} ({_du_mb(source)} MB)")
        _run(["cp", "-a", "--reflink=auto", f"{source}/.", str(tree)], "copying the root filesystem")
    else:
        tree.mkdir()
        _extract_tar(rootfs, tree)
        say(f"qemu: building VM disk from image {label} ({_du_mb(tree)} MB)")

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
    kernel_info = chosen or _rootfs_kernel(tree) or find_host_kernel()
    modules, network_modules = _install_modules(kernel_info, tree)
    builtin = _builtin_modules(kernel_info)
    root_device = "nvme" if ("nvme" in builtin) else "virtio"
    if root_device == "virtio" and "virtio_blk" not in builtin and kernel_info.initrd is None:
        raise VmImageError(
            f"kernel {kernel_info.path} has neither NVMe nor virtio-blk built in and no initrd",
            hint="use a Debian kernel with its initrd (apt-get install linux-image-cloud-amd64)")
    names = {_module_name(m) for m in modules} | builtin
    share_fs = "9p" if {"9p", "9pnet_virtio"} <= names else ("virtiofs" if "virtiofs" in names else None)

    _install_guest_files(tree, python, modules, network_modules)

    kernel_copy = out / "vmlinuz"
    shutil.copyfile(kernel_info.path, kernel_copy)
    initrd_copy = None
    if kernel_info.initrd is not None and root_device == "virtio":
        initrd_copy = out / "initrd.img"
        shutil.copyfile(kernel_info.initrd, initrd_copy)

    used = _du_mb(tree)
    size_mb = int(used * 1.2) + free_mb
    say(f"qemu: writing ext4 disk ({used} MB used, {size_mb} MB total)")
    image = out / "disk.img"
    _run(["mke2fs", "-q", "-t", "ext4", "-L", "hostperf-root", "-d", str(tree), "-F", str(image), f"{size_mb}M"],
         "writing the ext4 image", env={**os.environ, "E2FSPROGS_FAKE_TIME": "0"})
    disk = VmDisk(path=image, kernel=kernel_copy, initrd=initrd_copy, key="",
                  kernel_version=kernel_info.version, root_device=root_device, share_fs=share_fs,
                  python=python, size_mb=size_mb, env=dict(env))
    return disk


def build_debootstrap_rootfs(dest: Path, requirements: Iterable[str] = (), progress: Optional[Progress] = None,
                             suite: str = "bookworm", mirror: str = "") -> Path:
    """A Debian root filesystem with python3, pytest and pytest-benchmark, without Docker.

    For hosts without a Docker engine: ``debootstrap --variant=minbase`` (needs root and
    the Debian mirror), then wheels downloaded on the host and installed with
    ``--no-index``. pytest and pytest-benchmark are pinned to the controller's versions.
    Reuses ``dest`` when a previous call completed it.
    """
    import importlib.metadata
    import sys

    say = progress or (lambda _msg: None)
    dest = Path(dest)
    done = dest / "opt" / "hostperf" / "rootfs.done"
    reqs = [f"{n}=={importlib.metadata.version(n)}" for n in ("pytest", "pytest-benchmark")] + list(requirements)
    if done.is_file() and done.read_text() == json.dumps(reqs):
        return dest
    if shutil.which("debootstrap") is None:
        raise VmImageError("debootstrap is not installed", hint="apt-get install debootstrap")
    if dest.exists():
        shutil.rmtree(dest)
    say(f"qemu: debootstrap {suite} into {dest} (about a minute)")
    argv = ["debootstrap", "--variant=minbase", "--include=python3", suite, str(dest)]
    _run(argv + ([mirror] if mirror else []), "debootstrap")
    versions = sorted((dest / "usr" / "bin").glob("python3.[0-9]*"), key=lambda p: _version_key(p.name))
    pyver = versions[-1].name[len("python"):] if versions else "3"
    with tempfile.TemporaryDirectory(prefix="hostperf-wheels-") as wheels:
        say(f"qemu: installing {', '.join(reqs)} into the root filesystem (python {pyver})")
        _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", pyver,
              "--platform", "manylinux2014_x86_64", "-d", wheels, *reqs], "downloading wheels")
        _run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", wheels,
              # the host's .pyc files are valid inside only for the same python minor
              *([] if pyver == "%d.%d" % sys.version_info[:2] else ["--no-compile"]), "--target", str(dest / f"usr/local/lib/python{pyver}/dist-packages"), *reqs],
             "installing wheels")
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(reqs))
    return dest


def _run(argv: list, doing: str, **kwargs) -> None:
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)
    if proc.returncode != 0:
        raise VmImageError(f"{doing} failed: {' '.join(argv[:3])} ... exited with {proc.returncode}",
                           log_tail=proc.stdout.decode(errors="replace")[-2000:])


def _du_mb(path: Path) -> int:
    proc = subprocess.run(["du", "-sm", str(path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        return int(proc.stdout.split()[0])
    except (IndexError, ValueError):
        return 0


def _extract_tar(stream: Union[IO[bytes], Iterable[bytes]], tree: Path) -> None:
    argv = ["tar", "-x", "-C", str(tree), "--anchored", "--exclude=dev/*", "--exclude=./dev/*"]
    argv += ["--numeric-owner"] if os.geteuid() == 0 else ["--no-same-owner", "--no-same-permissions"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        if hasattr(stream, "read"):
            shutil.copyfileobj(stream, proc.stdin, 1 << 20)  # type: ignore[arg-type]
        else:
            for chunk in stream:
                proc.stdin.write(chunk)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
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


def _module_name(path: str) -> str:
    name = os.path.basename(path)
    for suffix in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.replace("-", "_")


def _builtin_modules(kernel: KernelInfo) -> set:
    if kernel.modules_dir is None:
        return set()
    try:
        text = (kernel.modules_dir / "modules.builtin").read_text()
    except OSError:
        return set()
    return {_module_name(line.strip()) for line in text.splitlines() if line.strip()}


def _install_modules(kernel: KernelInfo, tree: Path) -> tuple:
    """Copy the wanted modules (+ dependencies) into the rootfs; return (base, network) lists
    of guest paths in load order."""
    if kernel.modules_dir is None:
        return [], []
    try:
        dep_text = (kernel.modules_dir / "modules.dep").read_text()
    except OSError:
        return [], []
    deps: dict = {}
    by_name: dict = {}
    for line in dep_text.splitlines():
        if ":" not in line:
            continue
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[_module_name(path)] = path
    order: list = []

    def visit(path: str) -> None:
        if path in order:
            return
        # modules.dep lists a module's dependencies, the deepest last: load those first.
        for dep in reversed(deps.get(path, [])):
            visit(dep)
        order.append(path)

    lists = []
    for names in (WANTED_MODULES, NETWORK_MODULES):
        order.clear()
        for name in names:
            if name in by_name:
                visit(by_name[name])
        lists.append(list(order))
    guest_modules = Path("lib/modules") / kernel.version
    for rel in lists[0] + lists[1]:
        target = tree / guest_modules / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(kernel.modules_dir / rel, target)
    base, network = (["/" + str(guest_modules / rel) for rel in part] for part in lists)
    return base, [m for m in network if m not in base]


def _install_guest_files(tree: Path, python: str, modules: list, network_modules: list) -> None:
    guest = tree / GUEST_DIR.lstrip("/")
    guest.mkdir(parents=True, exist_ok=True)
    init = guest / "init"
    # A shell init when the image has one (clear errors even if python is broken), else
    # the python bootstrap itself as PID 1.
    if os.path.lexists(tree / "bin/sh"):
        init.write_text(_INIT_SCRIPT.replace("@PYTHON@", python))
        (guest / "boot.py").write_text(_BOOT_PY)
    else:
        init.write_text(f"#!{python}\n" + _BOOT_PY)
    init.chmod(0o755)
    (guest / "modules.list").write_text("".join(m + "\n" for m in modules))
    (guest / "modules-network.list").write_text("".join(m + "\n" for m in network_modules))
    for mountpoint in ("proc", "sys", "dev", "run", "tmp", "hostperf/project", "hostperf/pkg",
                       "hostperf/share", "hostperf/tmpfs", "hostperf/extra", "var/tmp/hostperf-guest"):
        (tree / mountpoint).mkdir(parents=True, exist_ok=True)


# The guest's PID 1 when the image has /bin/sh: basic mounts, then the python bootstrap.
# If the bootstrap fails, power off so qemu ends instead of hanging.
_INIT_SCRIPT = """#!/bin/sh
# pytest-hostperf guest init (PID 1): no systemd, no udev; see pytest_hostperf/vmimage.py
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t tmpfs tmpfs /dev/shm 2>/dev/null
mount -t tmpfs tmpfs /run 2>/dev/null
mount -t tmpfs tmpfs /tmp 2>/dev/null
@PYTHON@ -I -S /opt/hostperf/boot.py
echo "hostperf-init: bootstrap exited with status $?, powering off" > /dev/console
sync
echo o > /proc/sysrq-trigger
sleep 5
"""

# The bootstrap (stdlib only, no site): load modules, open the agent port, say hello,
# read the launch message, mount what it names, run the agent, power off.
_BOOT_PY = r'''
import ctypes, json, os, subprocess, sys, threading, time

def log(msg):
    try:
        with open("/dev/console", "w") as c:
            c.write("hostperf-boot: %s\n" % msg)
    except OSError:
        pass

libc = ctypes.CDLL(None, use_errno=True)

def load_modules(listing="/opt/hostperf/modules.list"):
    try:
        paths = open(listing).read().split()
    except OSError:
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            log("cannot open module %s: %s" % (path, e))
            continue
        if libc.syscall(313, fd, b"", 0) != 0:   # finit_module
            err = ctypes.get_errno()
            if err != 17:   # EEXIST: already loaded or built in
                log("loading %s failed: %s" % (path, os.strerror(err)))
        os.close(fd)

def mount(source, target, fstype, options=""):
    os.makedirs(target, exist_ok=True)
    flags = 0
    opts = []
    for o in options.split(","):
        if o == "ro":
            flags |= 1      # MS_RDONLY
        elif o:
            opts.append(o)
    data = ",".join(opts).encode() or None
    if libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "mount -t %s %s %s (%s): %s" % (fstype, source, target, options, os.strerror(err)))

def find_port(name, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for entry in os.listdir("/sys/class/virtio-ports"):
                try:
                    with open("/sys/class/virtio-ports/%s/name" % entry) as f:
                        if f.read().strip() == name:
                            return "/dev/" + entry
                except OSError:
                    pass
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError("virtio port %r did not appear (is virtio_console loaded?)" % name)

def lo_up():
    import fcntl, socket, struct
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ifr = struct.pack("16sH14x", b"lo", 0x1 | 0x40)   # IFF_UP | IFF_RUNNING
        fcntl.ioctl(s.fileno(), 0x8914, ifr)               # SIOCSIFFLAGS
        s.close()
    except OSError as e:
        log("bringing lo up failed: %s" % e)

def sockaddr(ip):
    import socket, struct
    return struct.pack("=H2x4s8x", socket.AF_INET, socket.inet_aton(ip))

def network_up(net):
    """eth0 with qemu user networking's fixed addresses, a default route and DNS."""
    import fcntl, socket, struct
    load_modules("/opt/hostperf/modules-network.list")
    deadline = time.monotonic() + 10
    ifname = None
    while ifname is None and time.monotonic() < deadline:
        names = [n for n in os.listdir("/sys/class/net") if n != "lo"]
        ifname = names[0] if names else None
        if ifname is None:
            time.sleep(0.05)
    if ifname is None:
        raise RuntimeError("network requested but no network interface appeared")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    name = ifname.encode()
    fcntl.ioctl(s.fileno(), 0x8916, struct.pack("16s16s", name, sockaddr(net["address"])))   # SIOCSIFADDR
    fcntl.ioctl(s.fileno(), 0x891C, struct.pack("16s16s", name, sockaddr(net["netmask"])))   # SIOCSIFNETMASK
    fcntl.ioctl(s.fileno(), 0x8914, struct.pack("16sH14x", name, 0x1 | 0x40))                # SIOCSIFFLAGS up
    # struct rtentry, native layout: pad, dst, gateway, genmask, flags, ..., dev
    route = struct.pack("@L16s16s16sHhLPhPLH", 0, sockaddr("0.0.0.0"), sockaddr(net["gateway"]),
                        sockaddr("0.0.0.0"), 0x1 | 0x2, 0, 0, 0, 0, 0, 0, 0)                 # RTF_UP|RTF_GATEWAY
    fcntl.ioctl(s.fileno(), 0x890B, route)                                                   # SIOCADDRT
    s.close()
    try:
        with open("/etc/resolv.conf", "w") as f:
            f.write("nameserver %s\n" % net["dns"])
    except OSError as e:
        log("writing /etc/resolv.conf failed: %s" % e)
    log("network: %s %s/%s via %s" % (ifname, net["address"], net["netmask"], net["gateway"]))

def readline(fd):
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            break
        buf += chunk
    return buf

def copy_out(src, dst):
    while True:
        try:
            data = os.read(src, 65536)
        except OSError:
            return
        if not data:
            return
        while data:
            try:
                data = data[os.write(dst, data):]
            except InterruptedError:
                continue
            except OSError as e:
                log("writing to the agent port failed: %s" % e)
                return

def main():
    t0 = time.monotonic()
    load_modules()
    lo_up()
    port = find_port("hostperf.agent", 60)
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    uptime = open("/proc/uptime").read().split()[0]
    os.write(fd, b"@@hostperf-boot@@ " + json.dumps({"uptime": float(uptime), "boot_s": time.monotonic() - t0}).encode() + b"\n")
    while True:
        line = readline(fd)
        if not line:
            raise RuntimeError("agent port closed before the launch message arrived")
        if line.startswith(b"@@hostperf-launch@@ "):
            launch = json.loads(line[len(b"@@hostperf-launch@@ "):])
            break
    if launch.get("network"):
        try:
            network_up(launch["network"])
        except Exception as e:
            log("network setup failed: %s" % e)
            os.write(fd, b"@@hostperf@@ " + json.dumps({"event": "fatal", "message": "guest: network setup failed: %s" % e}).encode() + b"\n")
            return 5
    for m in launch.get("mounts", []):
        try:
            mount(m["source"], m["target"], m["fstype"], m.get("options", ""))
        except OSError as e:
            log(str(e))
            os.write(fd, b"@@hostperf@@ " + json.dumps({"event": "fatal", "message": "guest: " + str(e)}).encode() + b"\n")
            return 3
    env = dict(launch.get("environ", {}))
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("HOME", "/root")
    env.setdefault("LANG", "C.UTF-8")
    console = os.open("/dev/console", os.O_WRONLY | os.O_NOCTTY)
    log("starting agent: %s" % " ".join(launch["argv"]))
    # The agent's stdout goes through a pipe that we copy to the port: the virtio port
    # accepts at most 32 KiB per write(2), and a writer that does not retry partial
    # writes would otherwise lose the rest of a large message.
    out_r, out_w = os.pipe()
    try:
        proc = subprocess.Popen(launch["argv"], stdin=fd, stdout=out_w, stderr=console, env=env,
                                cwd=launch.get("cwd") or "/")
    except OSError as e:
        os.write(fd, b"@@hostperf@@ " + json.dumps({"event": "fatal", "message": "guest: cannot start the agent: %s" % e}).encode() + b"\n")
        return 4
    os.close(out_w)
    relay = threading.Thread(target=copy_out, args=(out_r, fd), daemon=True)
    relay.start()
    code = proc.wait()
    relay.join(5)
    log("agent exited with status %d" % code)
    return 0

try:
    status = main()
except Exception as e:
    import traceback
    log("bootstrap failed: %s" % traceback.format_exc())
    status = 1
os.sync()
if os.getpid() == 1:
    libc.reboot(0x4321FEDC)   # LINUX_REBOOT_CMD_POWER_OFF
sys.exit(status)
'''
