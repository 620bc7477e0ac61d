"""Building blocks of the qemu environment's guest: kernels, initramfs, disks.

Pure host-side tools (no pytest import): they build files that QEMU boots.
"""
