"""The qemu environment: the agent inside a QEMU virtual machine.

* :mod:`.cmdline`: the qemu command line from plain data (pure, tested without booting);
* :mod:`.shares`: how the project and the writable share reach the guest (9p,
  virtiofs, a copy disk; a new share type joins here);
* :mod:`.boot`: accelerator choice and fallback, qemu's start, the agent transport;
* :mod:`.workdir`: the VM's private work dir and the sweep of killed sessions;
* :mod:`.disks`: where the VM disk comes from;
* :mod:`.environment`: :class:`QemuEnvironment`, which puts them together.
"""

from __future__ import annotations

from pytest_hostperf.environments.qemu.boot import QemuTransport, find_qemu
from pytest_hostperf.environments.qemu.disks import prepare_vm_disk
from pytest_hostperf.environments.qemu.environment import QemuEnvironment
from pytest_hostperf.environments.qemu.workdir import session_root, sweep_stale

__all__ = ["QemuEnvironment", "QemuTransport", "find_qemu", "prepare_vm_disk", "session_root", "sweep_stale"]
