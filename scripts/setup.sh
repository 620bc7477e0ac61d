#!/usr/bin/env bash
# Everything pytest-hostperf needs on a fresh Debian 12 machine, idempotent:
# Debian packages (Docker engine, debootstrap, QEMU, a guest kernel, OpenSSH, Chromium
# for the HTML report's browser test),
# a running dockerd, this package with its Python dependencies, and the guest kernel
# that 9p shares and docker@qemu boot with.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

PACKAGES=(docker.io debootstrap qemu-system-x86 qemu-utils e2fsprogs linux-image-cloud-amd64 valgrind
          openssh-client openssh-server ca-certificates chromium)
missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

bash .ci/install-docker.sh
if [ -f .ci/install-qemu.sh ]; then bash .ci/install-qemu.sh; fi

python3 -m pip install -q --disable-pip-version-check -e '.[test,lint,html]'

# The generic guest kernel + initramfs that the qemu share-9p mount and docker@qemu boot
# with (Debian's linux-image-amd64, downloaded once and cached): fetched here so that the
# first session (and CI's) does not pay for it.
# (apt-get download needs the package lists: refresh them once if they are missing.)
python3 -m pytest_hostperf.cli image kernel || { as_root apt-get update -qq && python3 -m pytest_hostperf.cli image kernel; }
