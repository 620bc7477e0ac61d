#!/bin/busybox sh
# PID 1 of hostperf's initramfs (pytest_hostperf/vm/initramfs.py): load the modules, mount
# root= and switch_root into init=. Failures go to the console and power the VM off, so
# the controller sees "qemu exited" with the reason in the console log, never a hang.
/bin/busybox --install -s /bin
export PATH=/bin
fail() { echo "hostperf-initramfs: $*" > /dev/console; sleep 1; poweroff -f; }
mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t devtmpfs devtmpfs /dev || fail "basic mounts"
for module in $(cat /modules.list); do
    insmod "/$module" 2>/dev/null || grep -q "^$(basename "$module" .ko) " /proc/modules \
        || echo "hostperf-initramfs: insmod $module failed" > /dev/console
done
root=/dev/vda init=/sbin/init fstype=ext4 mode=rw
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) root="${arg#root=}" ;;
        init=*) init="${arg#init=}" ;;
        rootfstype=*) fstype="${arg#rootfstype=}" ;;
        ro) mode=ro ;;
    esac
done
tries=0
while [ ! -b "$root" ]; do
    tries=$((tries + 1)); [ "$tries" -gt 600 ] && fail "root device $root did not appear"
    sleep 0.05
done
mkdir -p /newroot
mount -t "$fstype" -o "$mode" "$root" /newroot || fail "mount -t $fstype $root failed"
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
umount /sys /proc
exec switch_root /newroot "$init"
