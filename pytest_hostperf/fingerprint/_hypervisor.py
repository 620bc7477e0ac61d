"""Whether we run in a VM, and which hypervisor: the CPUID signature first, then files.

KVM and QEMU's TCG emulator look alike from inside (same DMI "QEMU", same virtio
devices) but differ ~10x in CPU speed, so telling them apart is the point. The CPUID
signature says it directly; without it, KVM's paravirtual clock is the tell: only a
KVM host offers ``kvm-clock`` (it may not be the *current* clocksource on newer guest
kernels, which prefer a stable TSC, so the available list is checked too).
"""

from __future__ import annotations

from typing import Any, Callable, Final, Mapping, Optional

from pytest_hostperf.fingerprint import _cpu, _files

# CPUID leaf 0x40000000 signatures (ebx, ecx, edx) -> human name.
_SIGNATURE_VENDORS: Final[Mapping[str, str]] = {
    "KVMKVMKVM": "KVM",  # also Firecracker, Cloud Hypervisor, crosvm: all KVM
    "TCGTCGTCGTCG": "QEMU TCG",
    "Microsoft Hv": "Hyper-V",
    "VMwareVMware": "VMware",
    "XenVMMXenVMM": "Xen",
    "VBoxVBoxVBox": "VirtualBox",
    "prl hyperv": "Parallels",
    "lrpepyh vr": "Parallels",
    "bhyve bhyve": "bhyve",
    "ACRNACRNACRN": "ACRN",
    "QNXQVMBSQG": "QNX",
    "HAXMHAXMHAXM": "HAXM",
    "Apple VZ": "Apple Virtualization",
    "VirtualApple": "Apple Virtualization",
}

# DMI sys_vendor prefix -> hypervisor, for when CPUID cannot be read. "QEMU" is not
# here: it needs the kvm-clock check to say KVM or TCG.
_DMI_VENDORS: Final[tuple[tuple[str, str], ...]] = (
    ("VMware", "VMware"),
    ("innotek", "VirtualBox"),
    ("Xen", "Xen"),
    ("Parallels", "Parallels"),
    ("BHYVE", "bhyve"),
)


def vendor_from_signature(signature: str | None) -> str | None:
    """The hypervisor's name for a CPUID signature; unknown signatures are returned as is."""
    if not signature:
        return None
    signature = signature.strip()
    return _SIGNATURE_VENDORS.get(signature, signature)


def _clocksources(root: str) -> tuple[str | None, list[str]]:
    base = "/sys/devices/system/clocksource/clocksource0"
    current = _files.read_line(root, f"{base}/current_clocksource")
    available = (_files.read_line(root, f"{base}/available_clocksource") or "").split()
    return current, available


def _vendor_from_files(
    dmi_vendor: str | None, dmi_product: str | None, clocks: list[str], kernel: str | None, xen: str | None,
) -> str | None:
    # Order: the most direct evidence first.
    if "kvm-clock" in clocks:
        return "KVM"
    if "hyperv_clocksource_tsc_page" in clocks or "hyperv_clocksource_msr" in clocks:
        return "Hyper-V"
    if xen or "xen" in clocks:
        return "Xen"
    if kernel and ("microsoft-standard" in kernel.lower() or "wsl2" in kernel.lower()):
        return "Hyper-V"  # WSL2 is a Hyper-V utility VM (WSL1, "-Microsoft", is no VM)
    vendor = dmi_vendor or ""
    product = dmi_product or ""
    if vendor.startswith("QEMU"):
        # A QEMU machine that does not offer kvm-clock is not KVM-accelerated.
        return "QEMU TCG"
    if vendor.startswith("Microsoft") and "Virtual" in product:
        return "Hyper-V"
    if vendor.startswith("Apple") and "Virtual" in product:
        return "Apple Virtualization"
    if product.startswith("KVM") or product.startswith("OpenStack"):
        return "KVM"
    for prefix, name in _DMI_VENDORS:
        if vendor.startswith(prefix) or product.startswith(prefix):
            return name
    return None


def collect_hypervisor(
    root: str,
    flags: frozenset[str],
    kernel: str | None,
    signature_probe: Optional[Callable[[], Optional[str]]] = None,
) -> dict[str, Any]:
    """``{present, signature, vendor, clocksource, dmi_sys_vendor, dmi_product_name}``.

    ``signature_probe`` reads the CPUID signature; by default the real one, and only
    for the live root (a fake tree must not be mixed with this machine's CPU).
    """
    dmi_vendor = _files.read_line(root, "/sys/class/dmi/id/sys_vendor")
    dmi_product = _files.read_line(root, "/sys/class/dmi/id/product_name")
    current, available = _clocksources(root)
    xen = _files.read_line(root, "/sys/hypervisor/type")
    flagged = "hypervisor" in flags

    signature: str | None = None
    if signature_probe is None and flagged and _files.is_live(root):
        signature_probe = _cpu.cpuid_hypervisor_signature
    if signature_probe is not None:
        try:
            signature = signature_probe()
        except Exception:  # noqa: BLE001 - a probe must never cost the run; fall back to files
            signature = None

    clocks = ([current] if current else []) + available
    vendor = vendor_from_signature(signature) or _vendor_from_files(dmi_vendor, dmi_product, clocks, kernel, xen)
    # The x86 hypervisor flag is the primary signal; arm64 has none, so a hypervisor
    # named by DMI, a paravirtual clock, a WSL or a Docker-Desktop-style kernel counts.
    release = (kernel or "").lower()
    present = flagged or vendor is not None or any(k in release for k in ("linuxkit", "orbstack"))
    return {
        "present": bool(present),
        "signature": signature,
        "vendor": vendor if present else None,
        "clocksource": current,
        "dmi_sys_vendor": dmi_vendor,
        "dmi_product_name": dmi_product,
    }
