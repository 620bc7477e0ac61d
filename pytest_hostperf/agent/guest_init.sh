#!/bin/sh
# pytest-hostperf guest init (PID 1 of a hostperf VM): no systemd, no udev.
# Basic mounts, then the Python bootstrap (pytest_hostperf/agent/boot.py), which the
# VM disk builder copied into /opt/hostperf with the interpreter's path beside it.
# When the bootstrap fails the VM powers off, so qemu ends instead of hanging.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t tmpfs tmpfs /dev/shm 2>/dev/null
mount -t tmpfs tmpfs /run 2>/dev/null
mount -t tmpfs tmpfs /tmp 2>/dev/null
read -r PYTHON < /opt/hostperf/python
cd /opt/hostperf || exit 1
"$PYTHON" -E -s -S -m pytest_hostperf.agent.boot
echo "hostperf-init: bootstrap exited with status $?, powering off" > /dev/console
sync
echo o > /proc/sysrq-trigger
sleep 5
