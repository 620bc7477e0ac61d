"""The qemu backend against a real QEMU VM (no mocks).

One VM is booted per module and reused; guest-side checks (read-only project share,
no network, mount types) are ordinary tests inside the project that the real agent runs
in the guest on request. Boots are ~6-15 s each under TCG.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from pytest_hostperf import vm as vmimage
from pytest_hostperf.environments import labels as owner_labels
from pytest_hostperf.environments import qemu as qemu_mod
from pytest_hostperf.environments.base import (
    AgentClient,
    AgentDied,
    AgentLaunch,
    AgentTimeout,
    EnvironmentFailure,
    package_parent,
)
from pytest_hostperf.environments.process import process_alive
from pytest_hostperf.environments.qemu import QemuEnvironment, kvm_memo, session_root, sweep_stale
from pytest_hostperf.progress import Reporter

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

if qemu_mod.find_qemu() is None and not os.environ.get("HOSTPERF_REQUIRE_QEMU"):
    pytest.skip("qemu-system-x86_64 is not installed (set HOSTPERF_REQUIRE_QEMU=1 to fail instead)",
                allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent

GUEST_TESTS = textwrap.dedent('''
    import errno
    import os
    import pathlib

    def _fstype(path):
        best, fstype = "", None
        for line in open("/proc/mounts"):
            _dev, mnt, kind = line.split()[:3]
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, fstype = mnt, kind
        return fstype

    def test_project_is_read_only():
        target = pathlib.Path(__file__).parent / "written-by-guest"
        try:
            target.write_text("x")
        except OSError as exc:
            assert exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM), exc
        else:
            raise AssertionError("the guest could write into the project share")

    def test_no_network_but_lo():
        assert sorted(os.listdir("/sys/class/net")) == ["lo"]

    def test_mounts():
        expected = {"/var/tmp/hostperf-guest": {"ext4"}, "/hostperf/tmpfs": {"tmpfs"}}
        if os.path.isdir("/hostperf/share") and _fstype("/hostperf/share") != "ext4":
            expected["/hostperf/share"] = {"9p", "virtiofs"}
        for path, kinds in expected.items():
            os.makedirs(path, exist_ok=True)
            assert _fstype(path) in kinds, (path, _fstype(path), open("/proc/mounts").read())
            probe = pathlib.Path(path) / "probe.txt"
            probe.write_text("written in the guest")
            assert probe.read_text() == "written in the guest"

    def test_network_reaches_the_host():
        import socket
        port = int((pathlib.Path(__file__).parent / "port.txt").read_text())
        assert len(os.listdir("/sys/class/net")) == 2, os.listdir("/sys/class/net")
        with socket.create_connection(("10.0.2.2", port), timeout=20) as conn:
            assert conn.recv(5) == b"hello"

    def test_bench(benchmark):
        benchmark(sum, range(1000))

    def test_plant_setuid_root_file():
        # What a hostile test body running as root in the guest would try (issue 8.12).
        import shutil
        target = pathlib.Path("/hostperf/share/planted-id")
        shutil.copy("/usr/bin/id", target)
        os.chown(target, 0, 0)
        os.chmod(target, 0o4755)
        assert os.stat(target).st_mode & 0o4000   # the guest sees what it asked for
''')


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(scope="session")
def qemu_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("qemu-project")
    (project / "test_guest.py").write_text(GUEST_TESTS)
    return project


@pytest.fixture(scope="session")
def vm_disk(qemu_project: Path) -> vmimage.VmDisk:
    """The VM disk, built once and cached on disk across sessions.

    From the docker backend's project image when an engine answers (the production
    path), else from a debootstrap root filesystem.
    """
    if _docker_answers():
        return QemuEnvironment(qemu_project, reporter=Reporter(print)).prepare()
    rootfs = vmimage.build_debootstrap_rootfs(vmimage.default_cache_dir() / "debootstrap-rootfs", reporter=Reporter(print))
    done = json.loads((rootfs / "opt/hostperf/rootfs.done").read_text())
    return vmimage.build_vm_disk(rootfs, key="debootstrap:" + ",".join(done), reporter=Reporter(print))


def _launch(project: Path) -> AgentLaunch:
    return AgentLaunch(python=sys.executable, pythonpath=str(package_parent()), project_dir=str(project),
                       test_files=("test_guest.py",), pytest_args=(), env="qemu")


@pytest.fixture(scope="module")
def vm(qemu_project: Path, vm_disk: vmimage.VmDisk):
    progress: list[str] = []
    env = QemuEnvironment(qemu_project, disk=vm_disk, reporter=Reporter(progress.append, "qemu"))
    try:
        transport = env.start_agent(_launch(qemu_project))
        client = AgentClient("qemu", transport)
        client.wait_ready(env.agent_start_timeout())
        yield env, client, progress
        client.shutdown()
    finally:
        env.stop()


def _run_in_guest(client: AgentClient, nodeid: str, **extra: object) -> dict:
    result = client.request({"op": "run", "nodeid": nodeid, **extra}, "result", 300, f"running {nodeid}")
    if result["outcome"] != "passed":
        text = "\n".join(str(r.get("longrepr")) for r in result.get("reports", []))
        pytest.fail(f"{nodeid} {result['outcome']} in the guest:\n{text}\n{result.get('message', '')}")
    return result


def test_boot_agent_ready_and_ping(vm) -> None:
    env, client, progress = vm
    assert client.hello["protocol"] == 1
    assert "test_guest.py::test_mounts" in client.hello["collected"]
    assert any(line.startswith("qemu: booting") for line in progress), progress
    assert any(line.startswith("qemu: agent ready in") for line in progress), progress
    for _ in range(3):
        assert client.request({"op": "ping"}, "pong", 10, "ping")["event"] == "pong"


def test_accelerator_is_recorded(vm) -> None:
    env, client, progress = vm
    info = env.describe()
    assert info["accelerator"] in ("kvm", "tcg", "hvf")
    assert info["vcpus"] == (1 if info["accelerator"] == "tcg" else 2) and info["memory_mb"] == 1024
    assert info["qemu"] and info["kernel"]
    signature = client.hello["fingerprint"].get("hypervisor", {}).get("signature")
    if info["accelerator"] == "tcg":
        assert signature == "TCGTCGTCGTCG"
        if os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK):
            # KVM was tried first and failed (nested KVM does not work on our machines).
            assert "kvm" in (info["fallback_reason"] or "").lower(), info
            assert any("falling back to TCG" in line for line in progress), progress
            # Remembered until the machine reboots: later VMs skip the probe, the doctor says so.
            known = kvm_memo.recall(qemu_mod.find_qemu() or "")
            assert known is not None and not known.works and known.reason, known
    else:
        assert info["fallback_reason"] is None
        assert signature == "KVMKVMKVM"


def test_project_share_is_read_only(vm, qemu_project: Path) -> None:
    env, client, _ = vm
    _run_in_guest(client, "test_guest.py::test_project_is_read_only")
    assert not (qemu_project / "written-by-guest").exists()


def test_guest_has_no_network(vm) -> None:
    _run_in_guest(vm[1], "test_guest.py::test_no_network_but_lo")


def test_mounts_and_their_filesystems(vm) -> None:
    env, client, _ = vm
    names = [m.name for m in env.mounts()]
    assert names[0] == "guest" and "tmpfs" in names
    if env.describe().get("share_fs") in ("9p", "virtiofs"):
        assert "share" in names
    _run_in_guest(client, "test_guest.py::test_mounts")
    if "share" in names:
        # The writable share is a host directory: the guest's file shows up here.
        assert (env._workdir / "share" / "probe.txt").read_text() == "written in the guest"


def test_benchmark_samples_come_back(vm) -> None:
    result = _run_in_guest(vm[1], "test_guest.py::test_bench", mount="tmpfs", mount_path="/hostperf/tmpfs")
    assert result["samples"] and all(s > 0 for s in result["samples"])


def test_guest_root_cannot_plant_a_setuid_root_file_on_the_host(vm) -> None:
    env, client, _ = vm
    if "share" not in [m.name for m in env.mounts()]:
        pytest.skip("no writable share in copy mode")
    _run_in_guest(client, "test_guest.py::test_plant_setuid_root_file")
    planted = env._workdir / "share" / "planted-id"
    info = planted.stat()
    # Either the bits never reached the host (9p mapped ownership), or they land on a
    # nosuid mount (virtiofs): executing the file as nobody must not give root.
    assert not (info.st_mode & stat.S_ISUID and info.st_uid == 0) or os.statvfs(planted).f_flag & os.ST_NOSUID
    fd = os.open(planted, os.O_RDONLY)
    try:
        def become_nobody() -> None:
            os.setgid(65534)
            os.setuid(65534)

        out = subprocess.run([f"/proc/self/fd/{fd}"], pass_fds=(fd,), preexec_fn=become_nobody,
                             capture_output=True, text=True, timeout=30)
    finally:
        os.close(fd)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("uid=65534") and "euid=0" not in out.stdout, out.stdout


def test_stop_leaves_nothing_behind(vm) -> None:
    # Runs last in this module: it stops the shared VM (the fixture's stop() is then a no-op).
    env, client, _ = vm
    workdir = env._workdir
    name = env.describe()["name"]
    assert workdir is not None and workdir.is_dir()
    client.shutdown()
    env.stop()
    env.stop()  # idempotent
    assert not workdir.exists()
    assert _processes_named(name) == []


def _processes_named(marker: str) -> list:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and any(marker in a for a in proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


CHILD = textwrap.dedent('''
    import sys
    from pathlib import Path
    from pytest_hostperf import vm as vmimage
    from pytest_hostperf.environments.base import AgentLaunch
    from pytest_hostperf.environments.qemu import QemuEnvironment
    disk = vmimage.VmDisk.from_json(Path(sys.argv[1]), __import__("json").loads(Path(sys.argv[1], "disk.json").read_text()))
    env = QemuEnvironment(Path(sys.argv[2]), disk=disk, session_id=sys.argv[3], accel="tcg",
                          die_with_controller=sys.argv[4] == "1")
    env.start_agent(AgentLaunch("python3", "", sys.argv[2], ("test_guest.py",), (), "qemu"))
    print("started", flush=True)
    import time
    time.sleep(600)
''')


def test_copy_mode_without_a_share(vm_disk: vmimage.VmDisk, qemu_project: Path) -> None:
    """Without 9p/virtiofs the project travels on a read-only second disk."""
    env = QemuEnvironment(qemu_project, disk=vm_disk, accel="tcg", share="copy")
    assert [m.name for m in env.mounts()] == ["guest", "tmpfs"]
    try:
        client = AgentClient("qemu", env.start_agent(_launch(qemu_project)))
        client.wait_ready(env.agent_start_timeout())
        _run_in_guest(client, "test_guest.py::test_project_is_read_only")
        _run_in_guest(client, "test_guest.py::test_mounts")
        client.shutdown()
    finally:
        env.stop()


@pytest.mark.parametrize("die_with_controller", [True, False], ids=["pdeathsig", "sweep-kills"])
def test_sigkilled_session_is_reaped(vm_disk: vmimage.VmDisk, qemu_project: Path, die_with_controller: bool) -> None:
    session = f"reap{int(die_with_controller)}{os.getpid()}"
    workdir = session_root() / session
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(vm_disk.directory), str(qemu_project), session,
         "1" if die_with_controller else "0"],
        env={**os.environ, "PYTHONPATH": str(package_parent())}, stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (workdir / "qemu.pid").exists():   # qemu is running (booting or booted)
            assert child.poll() is None, "the child controller died on its own"
            assert time.monotonic() < deadline, "qemu never started"
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert workdir.is_dir()     # a SIGKILLed controller cleans up nothing itself
    if not die_with_controller:
        assert _processes_named(f"hostperf-{session}"), "qemu should outlive its controller here"
    removed = sweep_stale()
    assert workdir in removed
    assert not workdir.exists()
    deadline = time.monotonic() + 10
    while _processes_named(f"hostperf-{session}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_named(f"hostperf-{session}") == []


def _owner_file(directory: Path, session: str, owner: owner_labels.Owner) -> None:
    directory.mkdir(mode=0o700)
    (directory / "owner.json").write_text(json.dumps({owner_labels.SESSION: session, **owner.labels()}))


def test_sweep_leaves_live_sessions_alone(tmp_path: Path) -> None:
    here = owner_labels.Owner.current()
    _owner_file(tmp_path / "live", "live", here)
    _owner_file(tmp_path / "dead", "dead", dataclasses.replace(here, pid=2 ** 22 + 7, started=None))
    assert sweep_stale(tmp_path) == [tmp_path / "dead"]
    assert (tmp_path / "live").is_dir() and not (tmp_path / "dead").exists()


def test_missing_kernel_is_a_clear_error(qemu_project: Path, tmp_path: Path) -> None:
    env = QemuEnvironment(qemu_project, rootfs=tmp_path, kernel=tmp_path / "no-such-vmlinuz")
    with pytest.raises(EnvironmentFailure, match="no kernel found at") as info:
        env.check()
    assert info.value.hint


def test_broken_kernel_is_a_clear_error(vm_disk: vmimage.VmDisk, qemu_project: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "vmlinuz-broken"
    garbage.write_bytes(b"this is not a kernel\n" * 1000)
    env = QemuEnvironment(qemu_project, disk=dataclasses.replace(vm_disk, kernel=garbage), accel="tcg")
    try:
        with pytest.raises(EnvironmentFailure, match="did not boot") as info:
            env.start_agent(_launch(qemu_project))
        assert "qemu exited" in str(info.value)
    finally:
        env.stop()


def test_kernel_panic_is_reported_with_console(vm_disk: vmimage.VmDisk, qemu_project: Path) -> None:
    env = QemuEnvironment(qemu_project, disk=vm_disk, accel="tcg", init="/no/such/init")
    started = time.monotonic()
    try:
        with pytest.raises(EnvironmentFailure, match="Kernel panic") as info:
            env.start_agent(_launch(qemu_project))
    finally:
        env.stop()
    assert "panicked" in info.value.hint
    assert "/no/such/init" in info.value.log_tail
    assert time.monotonic() - started < 60   # detected from the console, not by timeout


def test_guest_that_never_reaches_the_agent_times_out(vm_disk: vmimage.VmDisk, qemu_project: Path) -> None:
    # /bin/sh as init sits on the console forever and never opens the agent port.
    env = QemuEnvironment(qemu_project, disk=vm_disk, accel="tcg", init="/bin/sh", boot_timeout=15)
    try:
        with pytest.raises(EnvironmentFailure, match="did not reach the agent port within 15 s") as info:
            env.start_agent(_launch(qemu_project))
    finally:
        env.stop()
    assert info.value.log_tail.strip(), "the error should carry the console tail"
    assert qemu_mod.session_root().exists()


def test_launch_for_uses_guest_paths(vm_disk: vmimage.VmDisk, qemu_project: Path) -> None:
    env = QemuEnvironment(qemu_project, disk=vm_disk)
    launch = env.launch_for(qemu_project, ("test_guest.py",), (f"-c={qemu_project}/pytest.ini", "-q"))
    assert launch.project_dir.startswith("/hostperf/")
    assert launch.python == vm_disk.python
    assert launch.pytest_args == (f"-c={launch.project_dir}/pytest.ini", "-q")
    assert str(qemu_project) not in " ".join(launch.argv())


def test_vm_image_option_accepts_a_built_disk(vm_disk: vmimage.VmDisk, qemu_project: Path, tmp_path: Path) -> None:
    assert QemuEnvironment(qemu_project, vm_image=str(vm_disk.directory)).prepare() == vm_disk
    assert QemuEnvironment(qemu_project, vm_image=str(vm_disk.path)).prepare() == vm_disk
    with pytest.raises(EnvironmentFailure, match="neither a VM disk"):
        QemuEnvironment(qemu_project, vm_image=str(tmp_path)).prepare()


def test_network_when_asked(vm_disk: vmimage.VmDisk, qemu_project: Path) -> None:
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(60)
    (qemu_project / "port.txt").write_text(str(server.getsockname()[1]))

    def serve() -> None:
        try:
            conn, _ = server.accept()
            conn.sendall(b"hello")
            conn.close()
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    env = QemuEnvironment(qemu_project, disk=vm_disk, accel="tcg", network=True)
    try:
        client = AgentClient("qemu", env.start_agent(_launch(qemu_project)))
        client.wait_ready(env.agent_start_timeout())
        _run_in_guest(client, "test_guest.py::test_network_reaches_the_host")
        client.shutdown()
    finally:
        env.stop()
        server.close()


@pytest.mark.faults
def test_paths_with_commas_and_a_reboot_after_the_vm_froze_then_died(vm_disk: vmimage.VmDisk, qemu_project: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 8.15 and 8.7: a comma in the project and temp dirs, a VM frozen, then one killed."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="hp,"))   # short: socket paths must stay < 108 bytes
    project = base / "proj,ect"
    shutil.copytree(qemu_project, project)
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    env = QemuEnvironment(project, disk=vm_disk, accel="tcg")
    try:
        assert "," in str(session_root())
        client = AgentClient("qemu", env.start_agent(_launch(project)))
        client.wait_ready(env.agent_start_timeout())
        _run_in_guest(client, "test_guest.py::test_project_is_read_only")
        # The fault suite's "SIGSTOP the VM": a frozen VM answers nothing; the request
        # times out (budget: 100 pings of this VM, measured now) and the restart throws
        # the frozen VM away (SIGKILL: a SIGTERM would wait for a SIGCONT) and boots afresh.
        started = time.monotonic()
        client.request({"op": "ping"}, "pong", 30, "pinging")
        budget = max(2.0, 100 * (time.monotonic() - started))
        frozen = psutil.Process(env.describe()["pid"])
        frozen.send_signal(signal.SIGSTOP)
        with pytest.raises(AgentTimeout):
            client.request({"op": "ping"}, "pong", budget, "pinging")
        client.transport.close()
        client = AgentClient("qemu", env.start_agent(_launch(project)))   # what the pool does next
        assert not frozen.is_running() or frozen.status() == psutil.STATUS_ZOMBIE
        client.wait_ready(env.agent_start_timeout())
        second = env.describe()["pid"]
        assert second != frozen.pid
        os.kill(second, signal.SIGKILL)   # then the VM dies under the agent
        with pytest.raises(AgentDied):
            client.request({"op": "ping"}, "pong", 30, "pinging")
        client.transport.close()
    finally:
        env.stop()
        shutil.rmtree(base, ignore_errors=True)
    assert _processes_named(f"hostperf-{env.session_id}") == []


def test_kvm_that_runs_nothing_is_given_up_within_seconds(vm_disk: vmimage.VmDisk, qemu_project: Path,
                                                          tmp_path: Path) -> None:
    """Issue 8.9: a KVM that hangs silently used to cost the 30 s probe timeout.

    Nested KVM here runs a guest with ``-cpu qemu64`` without a word and without an
    error (what a fresh machine did); this qemu wrapper makes the probe boot ask for it.
    """
    if not (os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)):
        pytest.skip("no usable /dev/kvm: nothing to probe")
    wrapper = tmp_path / "qemu-system-x86_64"
    wrapper.write_text(f"#!{sys.executable}\nimport os, sys\nargs = sys.argv[1:]\n"
                       "args = ['qemu64' if a == 'host' and args[i - 1] == '-cpu' else a for i, a in enumerate(args)]\n"
                       f"os.execv({qemu_mod.find_qemu()!r}, ['qemu-system-x86_64', *args])\n")
    wrapper.chmod(0o755)
    stamps: list[tuple[float, str]] = []
    env = QemuEnvironment(qemu_project, disk=vm_disk, qemu_binary=str(wrapper),
                          reporter=Reporter(lambda line: stamps.append((time.monotonic(), line)), "qemu"))
    try:
        env.start_agent(_launch(qemu_project))
    finally:
        env.stop()
    info = env.describe()
    if info["accelerator"] == "kvm":
        pytest.skip("KVM runs this guest here: the silent failure cannot be reproduced on this machine")
    (kvm_start,) = [t for t, line in stamps if "booting (kvm" in line]
    (tcg_start,) = [t for t, line in stamps if "booting (tcg" in line]
    assert "wrote nothing to its console within 5 s" in info["fallback_reason"]
    assert tcg_start - kvm_start < env.first_output_timeout + 5, stamps


def test_vm_work_dirs_are_private_and_an_unsafe_root_is_refused(tmp_path: Path) -> None:
    """Issue 8.10: the root is per user, 0700, and refused when anybody else could write it."""
    from pytest_hostperf.environments.qemu import workdir

    root = workdir.session_root(tmp_path)
    assert root.name == f"pytest-hostperf-qemu-{os.getuid()}"
    work = workdir.make_workdir("abc123", root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700 and stat.S_IMODE(work.stat().st_mode) == 0o700
    assert owner_labels.read_owner_file(work / "owner.json")[0] == "abc123"  # type: ignore[index]
    root.chmod(0o777)
    with pytest.raises(EnvironmentFailure, match="writable by others") as info:
        workdir.ensure_private_root(root)
    assert str(root) in str(info.value) and info.value.hint
    assert workdir.sweep_stale(root) == []   # nor is anything in it trusted
    root.chmod(0o700)
    if os.getuid() == 0:
        os.chown(root, 65534, 65534)
        with pytest.raises(EnvironmentFailure, match="owned by uid 65534"):
            workdir.ensure_private_root(root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    linked = workdir.session_root(tmp_path / "linked")
    linked.parent.mkdir()
    linked.symlink_to(elsewhere)
    with pytest.raises(EnvironmentFailure, match="symbolic link"):
        workdir.ensure_private_root(linked)


SLEEP = "import time; time.sleep(120)"


def test_a_planted_owner_file_kills_only_that_sessions_qemu(tmp_path: Path) -> None:
    """Issue 8.11: a planted record for session "e" once killed everything with --hostperf-e... in its args."""
    from pytest_hostperf.environments.qemu import workdir

    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    dead = dataclasses.replace(owner_labels.Owner.current(), pid=2 ** 22 + 7, started=None)
    _owner_file(root / "e", "e", dead)
    _owner_file(root / "f", "e", dead)               # names another session than its directory
    (root / "g").mkdir(mode=0o700)
    (root / "g" / "owner.json").write_text(json.dumps({"session_id": "g", "session_pid": 2 ** 22 + 7}))
    os.utime(root / "g", (0, 0))                    # old-format record of a long gone version
    python = "/usr/bin/python3"   # readable by nobody too, unlike a python under /root
    bystander = subprocess.Popen([python, "-c", SLEEP, "--hostperf-envs=native", "hostperf-e"])
    lookalike = subprocess.Popen([python, "-c", SLEEP, "-name", "hostperf-e,process=hostperf-e"])
    foreign = subprocess.Popen([python, "-c", SLEEP, "-name", "hostperf-e"],
                               preexec_fn=lambda: (os.setgid(65534), os.setuid(65534)))
    try:
        time.sleep(0.3)
        removed = workdir.sweep_stale(root)
        assert root / "e" in removed and root / "f" not in removed and (root / "f").is_dir()
        # Exactly that session's qemu command line went (the sweep reaped our child itself).
        assert not process_alive(lookalike.pid)
        assert bystander.poll() is None and foreign.poll() is None
    finally:
        for proc in (bystander, lookalike, foreign):
            proc.kill()
            proc.wait()
