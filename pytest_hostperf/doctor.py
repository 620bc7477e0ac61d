"""``hostperf doctor``: which environments work on this machine, and why not.

Each check is cheap and answers (usable, one line); ``hostperf doctor --instructions``
probes counting for real. Imports of the backends happen inside the checks, so a
missing optional piece is a line of the report, never an import error.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Callable


def check_native() -> tuple[bool, str]:
    missing = []
    for module in ("pytest", "pytest_benchmark", "scipy", "psutil"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        return False, f"missing Python packages: {', '.join(missing)} (pip install pytest-hostperf)"
    from pytest_hostperf import fingerprint

    return True, fingerprint.summary(fingerprint.collect_host())


def check_docker() -> tuple[bool, str]:
    import importlib.util

    if importlib.util.find_spec("docker") is None:
        return False, "the docker Python package is missing (pip install docker)"
    try:
        from pytest_hostperf.environments.docker import docker_client

        client = docker_client()
        info = client.info()
    except Exception as exc:  # noqa: BLE001 - doctor reports every failure as text
        return False, str(exc).splitlines()[0] + " (start the engine: dockerd &, or set DOCKER_HOST)"
    from pytest_hostperf.fingerprint import classify_engine

    engine = classify_engine(info, client.version())
    images = client.images.list(filters={"label": "io.hostperf.kind"})
    tags = sorted(t for image in images for t in image.tags)
    return True, (f"{engine.get('kind')} {engine.get('version')} ({engine.get('storage_driver')}, "
                  f"{engine.get('cpus')} CPUs); hostperf images: "
                  f"{', '.join(tags) or 'none yet (hostperf image build)'}")


def check_qemu() -> tuple[bool, str]:
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        return False, "qemu-system-x86_64 not found (apt-get install qemu-system-x86 qemu-utils)"
    kvm = _kvm_text(binary)
    try:
        from pytest_hostperf.vm import find_host_kernel

        kernel = find_host_kernel()
        kernel_text = f"kernel {kernel.version}"
    except Exception as exc:  # noqa: BLE001
        return False, f"{binary}; {kvm}; no usable guest kernel: {exc}"
    return True, f"{binary}; {kvm}; {kernel_text}; shares: {_share_axis()}"


def _kvm_text(binary: str) -> str:
    """What accelerator a VM will get: what KVM did since this machine booted, else what /dev/kvm says."""
    from pytest_hostperf.environments.qemu import kvm_memo

    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm: software emulation (TCG), CPU work ~10x slower"
    known = kvm_memo.recall(binary)
    if known is None:
        return "/dev/kvm present, not yet tried since this machine booted (a VM tries KVM first, TCG if it fails)"
    if known.works:
        return f"KVM works (a VM booted with it at {known.at})"
    return (f"KVM failed at {known.at} ({known.reason}): VMs use software emulation (TCG), CPU work ~10x slower, "
            "until this machine reboots")


def _kvm_works() -> bool:
    from pytest_hostperf.environments.qemu import boot, kvm_memo

    binary = boot.find_qemu()
    known = kvm_memo.recall(binary) if binary else None
    return os.path.exists("/dev/kvm") and (known is None or known.works)


def _share_axis() -> str:
    """What the qemu mounts share-9p and share-nfs (and virtiofs for share) need, and whether it is here."""
    from pytest_hostperf.environments import nfs
    from pytest_hostperf.environments.qemu.shares import find_virtiofsd
    from pytest_hostperf.vm.guest_kernel import cached_guest_kernel

    euid = os.geteuid() if hasattr(os, "geteuid") else -1
    virtiofs = "virtiofs ok" if find_virtiofsd() and euid == 0 else "virtiofs needs virtiofsd and root"
    kernel = cached_guest_kernel()
    ninep = (f"9p ok (generic kernel {kernel.version} cached)" if kernel else
             "9p: the generic guest kernel is fetched on first use (hostperf image kernel)")
    problem = nfs.unavailable_reason()
    return f"{virtiofs}; {ninep}; " + (f"nfs: {problem}" if problem else f"nfs ok ({nfs.ganesha_version()})")


def check_docker_qemu() -> tuple[bool, str]:
    if shutil.which("qemu-system-x86_64") is None:
        return False, "qemu-system-x86_64 not found (apt-get install qemu-system-x86 qemu-utils)"
    ok, text = check_docker()
    if not ok:
        return False, f"the project image comes from the host's Docker engine: {text}"
    from pytest_hostperf.vm import engine_data

    euid = os.geteuid() if hasattr(os, "geteuid") else -1
    notes = ["the engine VM disk is built as root once (hostperf image build --vm-docker)" if euid != 0
             else "engine VM disk built on first use (hostperf image build --vm-docker)"]
    host = engine_data.host_dockerd_version()
    notes.append(f"host dockerd {host}: fills the VM's /var/lib/docker in seconds when it is the VM's version"
                 if host else "no dockerd on the host: images are loaded through the VM's engine (minutes)")
    return True, "; ".join(notes)


def check_ssh() -> tuple[bool, str]:
    binary = shutil.which("ssh")
    if binary is None:
        return False, "no ssh client (apt-get install openssh-client)"
    return True, f"{binary}; use --hostperf-envs=ssh:HOST with a host from your ssh config"


def instructions_line(probe: bool) -> tuple[bool, str]:
    """Where --hostperf-measure=time,instructions counts: cheap checks, or real probes (``probe``)."""
    from pytest_hostperf import counting, images

    kvm = _kvm_works()
    if probe:
        client = None
        try:
            from pytest_hostperf.environments.docker import docker_client

            client = docker_client()
            client.images.get(images.COUNTING_BASE_TAG)
        except Exception:  # noqa: BLE001 - no engine or no valgrind base: docker is left out of the probes
            client = None
        supports = counting.where_counting_works(docker_client=client, docker_image=images.COUNTING_BASE_TAG,
                                                 docker_python="python3", qemu_accelerator="kvm" if kvm else "tcg")
        return supports[0].works, "; ".join(support.describe() for support in supports)
    parts = []
    native_ok = shutil.which("valgrind") is not None
    problem = counting.interpreter_problem(sys.executable) if native_ok else None
    parts.append("native: " + ("valgrind " + (problem or "found") if native_ok else
                               "valgrind missing (apt-get install valgrind)"))
    parts.append(f"docker: in {images.COUNTING_BASE_TAG} (built on first use, Debian's valgrind)")
    parts.append("qemu: " + ("KVM: not yet (no probe through the VM agent)" if kvm else
                             "refused under TCG (counted code would run ~840x slower)"))
    return native_ok and problem is None, "; ".join(parts) + " (hostperf doctor --instructions probes for real)"


CHECKS: dict[str, Callable[[], tuple[bool, str]]] = {
    "native": check_native, "docker": check_docker, "qemu": check_qemu, "docker@qemu": check_docker_qemu,
    "ssh": check_ssh,
}
