"""The qemu environment's share axis in a real VM: ``share`` (virtiofs), ``share-9p``, ``share-nfs``.

One VM boots with all three (so with Debian's generic kernel and hostperf's initramfs:
the disk's own cloud kernel has no 9p) and the agent runs guest-side checks on request,
as in ``test_qemu_env.py``. From the host: what guest root could do to the host's files
through each share, that the NFS forward is the guest's only way out, what the
fingerprint says, and that nothing (VM, NFS server, state dirs) is left after stop().
Needs root and nfs-ganesha (scripts/setup.sh); a boot takes 20-60 s under TCG here.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
import textwrap
import threading
from typing import Any, Iterator

import psutil
import pytest

from pytest_hostperf.environments import nfs
from pytest_hostperf.environments import qemu as qemu_mod
from pytest_hostperf.environments.base import AgentClient, AgentLaunch, package_parent
from pytest_hostperf.environments.qemu import QemuEnvironment
from pytest_hostperf.progress import Reporter

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

if qemu_mod.find_qemu() is None and not os.environ.get("HOSTPERF_REQUIRE_QEMU"):
    pytest.skip("qemu-system-x86_64 is not installed", allow_module_level=True)
if nfs.unavailable_reason() and not os.environ.get("HOSTPERF_REQUIRE_QEMU"):
    pytest.skip(f"{nfs.unavailable_reason()} (scripts/setup.sh installs it; run as root)", allow_module_level=True)

GUEST_TESTS = textwrap.dedent('''
    import os
    import pathlib
    import shutil
    import socket

    def _mount(path):
        for line in open("/proc/mounts"):
            source, mnt, kind, options = line.split()[:4]
            if mnt == path:
                return kind, options
        return None, None

    def test_share_axis_file_systems():
        assert _mount("/hostperf/share")[0] == "virtiofs", open("/proc/mounts").read()
        kind, options = _mount("/hostperf/share-9p")
        assert kind == "9p" and "msize=512000" in options and "trans=virtio" in options, options
        kind, options = _mount("/hostperf/share-nfs")
        assert kind == "nfs4" and "vers=4.2" in options and "addr=10.0.2.100" in options, options
        for share in ("share", "share-9p", "share-nfs"):
            probe = pathlib.Path("/hostperf", share, "from-guest")
            probe.write_text(share)
            assert probe.read_text() == share

    def test_plant_setuid_root_files():
        # What a hostile test body running as root in the guest would try (issue 8.12).
        for share in ("share-9p", "share-nfs"):
            target = pathlib.Path("/hostperf", share, "planted-id")
            shutil.copy("/usr/bin/id", target)
            os.chmod(target, 0o4755)

    def test_only_the_nfs_forward_leads_out():
        assert sorted(os.listdir("/sys/class/net")) == ["eth0", "lo"]
        port = int((pathlib.Path(__file__).parent / "port.txt").read_text())
        reached = {}
        for host, target in (("10.0.2.2", port), ("10.0.2.100", port), ("10.0.2.100", 2049)):
            try:
                socket.create_connection((host, target), timeout=10).close()
                reached[(host, target)] = True
            except OSError:
                reached[(host, target)] = False
        # The control: the forward to the NFS server connects, so the probe can tell.
        assert reached == {("10.0.2.2", port): False, ("10.0.2.100", port): False,
                           ("10.0.2.100", 2049): True}, reached
''')


@pytest.fixture(scope="module")
def listener() -> Iterator[tuple[int, list[int]]]:
    """A listener on the host's loopback: what the guest must not reach."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    hits: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            hits.append(1)
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], hits
    server.close()


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory, listener: tuple[int, list[int]]) -> Iterator[Any]:
    project = tmp_path_factory.mktemp("shares-project")
    (project / "test_guest.py").write_text(GUEST_TESTS)
    (project / "port.txt").write_text(str(listener[0]))
    progress: list[str] = []
    env = QemuEnvironment(project, reporter=Reporter(progress.append, "qemu"), session_id=f"shares{os.getpid()}")
    env.use_mounts(["guest", "share", "share-9p", "share-nfs", "tmpfs"])
    launch = AgentLaunch(sys.executable, str(package_parent()), str(project), ("test_guest.py",), (), "qemu")
    try:
        client = AgentClient("qemu", env.start_agent(env.launch_for(project, launch.test_files, ())))
        client.wait_ready(env.agent_start_timeout())
        yield env, client, progress
        client.shutdown()
    finally:
        env.stop()


def _run(client: AgentClient, test: str) -> None:
    result = client.request({"op": "run", "nodeid": f"test_guest.py::{test}"}, "result", 600, test)
    if result["outcome"] != "passed":
        pytest.fail("\n".join(str(r.get("longrepr")) for r in result.get("reports", [])) or result.get("message"))


def test_every_share_is_mounted_with_its_file_system(vm: Any) -> None:
    env, client, progress = vm
    assert [m.name for m in env.mounts()] == ["guest", "share", "share-9p", "share-nfs", "tmpfs"]
    _run(client, "test_share_axis_file_systems")
    for share in ("share", "share-9p", "share-nfs"):
        assert (env._workdir / share / "from-guest").read_text() == share   # a host directory
    info = env.describe()
    # 9p is why the VM booted the generic kernel (and the describe says so).
    assert info["guest_kernel"]["package"].startswith("linux-image-") and "cloud" not in info["kernel"]
    assert any("booting" in line and info["kernel"] in line for line in progress), progress
    assert info["shares"]["share"] == {"via": "virtiofs", "server": "virtiofsd", "cache": "auto"}
    assert info["shares"]["share-9p"] == {"via": "9p", "server": "qemu", "security_model": "mapped-xattr"}
    assert info["shares"]["share-nfs"]["server"] == nfs.ganesha_version()
    assert env.mount_facts("share-nfs") == info["shares"]["share-nfs"]


def test_guest_root_makes_no_setuid_root_file_on_the_host(vm: Any) -> None:
    env, client, _ = vm
    _run(client, "test_plant_setuid_root_files")
    ninep = env._workdir / "share-9p" / "planted-id"
    # mapped-xattr: the guest's mode lives in an xattr; the host file is a plain 0600 one.
    assert not ninep.stat().st_mode & (stat.S_ISUID | stat.S_ISGID | 0o077), oct(ninep.stat().st_mode)
    assert os.getxattr(ninep, "user.virtfs.mode")
    planted = env._workdir / "share-nfs" / "planted-id"
    assert planted.stat().st_uid == nfs.NOBODY   # every guest user is squashed to nobody


def test_the_nfs_forward_is_the_guests_only_way_out(vm: Any, listener: tuple[int, list[int]]) -> None:
    _run(vm[1], "test_only_the_nfs_forward_leads_out")
    assert listener[1] == []


def test_stop_leaves_no_vm_server_or_state(vm: Any) -> None:
    # Runs last: it stops the module's VM (the fixture's stop() is then a no-op).
    env, client, _ = vm
    workdir, name = env._workdir, env.describe()["name"]
    mine = f"{nfs.state_root()}/{env.session_id[:24]}-"   # not other sessions' servers
    servers = [p for p in psutil.process_iter(["name", "cmdline"]) if "ganesha" in (p.info["name"] or "")
               and mine in " ".join(p.info["cmdline"] or [])]
    assert servers, "the NFS server ran during the session"
    client.shutdown()
    env.stop()
    assert not workdir.exists()
    assert psutil.wait_procs(servers, timeout=10)[1] == []
    assert not [p for p in psutil.process_iter(["cmdline"]) if name in " ".join(p.info["cmdline"] or [])]
    assert not [d for d in nfs.state_root().iterdir() if d.name.startswith(env.session_id)]
