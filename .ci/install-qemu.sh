#!/usr/bin/env bash
# Install what the qemu environment needs: qemu, qemu-img, mke2fs/debugfs, a guest kernel.
#
# Idempotent: asks apt-get only for packages that are missing. The guest kernel is the
# Debian cloud kernel (linux-image-cloud-amd64): its NVMe driver is built in, so the VM
# boots without an initrd, and it has virtiofs (shared via qemu-system-common's
# virtiofsd) and virtio-serial as modules, which pytest_hostperf/vm/disk.py copies into
# the VM disk. debootstrap is for building a root filesystem when no Docker engine runs.
# nfs-ganesha (+ its VFS backend) serves the qemu-share-nfs mount: a user-space NFSv4
# server each session starts for itself (the host kernel may have no nfsd); kmod's depmod
# orders the modules of the generic guest kernel (pytest_hostperf/vm/guest_kernel.py); cpio
# reads its initramfs back in tests/test_vm_initramfs.py.
set -euo pipefail

log() { echo "install-qemu: $*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

main() {
    if ! command -v apt-get >/dev/null 2>&1; then
        log "no apt-get here; install qemu-system-x86_64, qemu-img, e2fsprogs and a Linux kernel yourself"
        return 1
    fi
    local wanted=(qemu-system-x86 qemu-utils e2fsprogs debootstrap linux-image-cloud-amd64
                  nfs-ganesha nfs-ganesha-vfs kmod cpio)
    local missing=()
    for pkg in "${wanted[@]}"; do
        have_pkg "$pkg" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]} with apt-get"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    else
        log "qemu, qemu-img, e2fsprogs, debootstrap and the cloud kernel are installed"
    fi
    # Debian installs kernels 0600 on some setups; the VM builder reads it as this user.
    for kernel in /boot/vmlinuz-*; do
        [ -r "$kernel" ] || as_root chmod a+r "$kernel"
    done
    qemu-system-x86_64 --version | head -n 1 >&2
    if [ -e /dev/kvm ] && [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
        log "/dev/kvm is usable by this user (the qemu environment still falls back to TCG if KVM fails to boot)"
    else
        log "/dev/kvm is missing or not accessible: VMs run under TCG (~10x slower CPU)"
    fi
}

main "$@"
