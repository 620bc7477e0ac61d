"""The docker backend against a real engine (no mocks).

Docker tests skip only when no engine answers AND HOSTPERF_REQUIRE_DOCKER is unset; CI
sets it, so there a missing engine fails instead of silently skipping.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from pytest_hostperf import images
from pytest_hostperf.agent import protocol
from pytest_hostperf.environments import docker as docker_env
from pytest_hostperf.environments import labels as owner_labels
from pytest_hostperf.environments.base import (
    AgentClient,
    AgentDied,
    AgentLaunch,
    AgentTimeout,
    EnvironmentFailure,
    package_parent,
)
from pytest_hostperf.environments.docker import DockerEnvironment, docker_endpoint, sweep_stale

TINY = Path(__file__).parent / "projects" / "tiny"

#: A stdlib stand-in for the agent, to test the transport independently of the real one.
STANDIN = r"""
import json, sys
P = b"@@hostperf@@ "
out = sys.stdout.buffer
def send(m):
    out.write(P + json.dumps(m).encode() + b"\n"); out.flush()
sys.stderr.write("stand-in agent starting\n"); sys.stderr.flush()
out.write(b"noise on stdout\n"); out.flush()
send({"event": "ready", "protocol": 1, "fingerprint": {}, "collected": [], "collect_errors": []})
for line in sys.stdin.buffer:
    m = json.loads(line[line.index(P) + len(P):])
    op = m.get("op")
    if op == "ping":
        send({"event": "pong"})
    elif op == "big":
        sys.stderr.write("e" * 100000 + "\n"); sys.stderr.flush()
        send({"event": "big", "data": "x" * m["size"]})
    elif op == "crash":
        sys.stderr.write("stand-in crashing on purpose\n"); sys.stderr.flush()
        sys.exit(3)
    elif op == "shutdown":
        send({"event": "bye"}); break
"""


@dataclasses.dataclass(frozen=True)
class StandInLaunch(AgentLaunch):
    def argv(self) -> list[str]:
        return [self.python, "-c", STANDIN]


# --------------------------------------------------------------------------- fixtures





@pytest.fixture
def env(engine: Any, project_image: images.ImageRef, tmp_path: Path) -> Iterator[DockerEnvironment]:
    environment = DockerEnvironment(f"test-{uuid.uuid4().hex[:12]}", TINY, tmp_path)
    environment.check()
    try:
        yield environment
    finally:
        environment.stop()


def _run_inside(env: DockerEnvironment, code: str) -> tuple[int, str]:
    """Run python code in the session's container as the agent's user."""
    exit_code, output = env.container.exec_run([env.image().python, "-c", code], user=env.agent_user())
    return exit_code, output.decode(errors="replace")


def _started(env: DockerEnvironment, launch: AgentLaunch | None = None) -> AgentClient:
    launch = launch or env.launch(["test_tiny.py"])
    client = AgentClient("docker", env.start_agent(launch))
    client.wait_ready(env.agent_start_timeout())
    return client


def _standin(env: DockerEnvironment) -> AgentClient:
    return _started(env, StandInLaunch(**dataclasses.asdict(env.launch([]))))


def _labelled(engine: Any, session_id: str) -> tuple[list[Any], list[Any]]:
    label = {"label": f"{owner_labels.SESSION}={session_id}"}
    return engine.containers.list(all=True, filters=label), engine.volumes.list(filters=label)


# --------------------------------------------------------------------------- engine access

def test_no_engine_message_names_the_socket_and_the_fix(tmp_path: Path) -> None:
    host = f"unix://{tmp_path}/no-engine.sock"
    with pytest.raises(EnvironmentFailure) as info:
        docker_env.connect({"DOCKER_HOST": host})
    message = str(info.value)
    assert f"no Docker engine answers at {host}" in message
    assert "dockerd &" in message and "DOCKER_HOST" in message


def test_endpoint_follows_the_current_docker_context(tmp_path: Path) -> None:
    config = tmp_path / ".docker"
    meta = config / "contexts" / "meta" / "0123abcd"
    meta.mkdir(parents=True)
    (config / "config.json").write_text(json.dumps({"currentContext": "colima"}))
    (meta / "meta.json").write_text(json.dumps(
        {"Name": "colima", "Endpoints": {"docker": {"Host": "unix:///home/u/.colima/docker.sock"}}}))
    assert docker_endpoint({}, home=tmp_path) == ("unix:///home/u/.colima/docker.sock", "docker context 'colima'")
    assert docker_endpoint({"DOCKER_CONTEXT": "default"}, home=tmp_path)[0] == docker_env.DEFAULT_SOCKET
    assert docker_endpoint({"DOCKER_HOST": "tcp://h:2375"}, home=tmp_path) == ("tcp://h:2375", "DOCKER_HOST")
    assert docker_endpoint({}, home=tmp_path / "nothing")[0] == docker_env.DEFAULT_SOCKET


# --------------------------------------------------------------------------- agent

@pytest.mark.docker
def test_real_agent_round_trip(env: DockerEnvironment) -> None:
    client = _started(env)
    assert "test_tiny.py::test_sum_squares" in client.hello["collected"]
    assert client.request({"op": "ping"}, "pong", 10, "pinging")["event"] == "pong"
    timings = []
    for _ in range(50):
        started = time.perf_counter()
        client.request({"op": "ping"}, "pong", 10, "pinging")
        timings.append(time.perf_counter() - started)
    # One long-lived exec: a request costs well under a docker exec (~45 ms).
    assert statistics.median(timings) < 0.01
    client.shutdown()


@pytest.mark.docker
def test_standin_transport_demultiplexes_stdout_and_stderr(env: DockerEnvironment) -> None:
    client = _standin(env)
    big = client.request({"op": "big", "size": 300_000}, "big", 10, "asking for a big line")
    assert big["data"] == "x" * 300_000  # spans many 8-byte-header frames
    assert client.request({"op": "ping"}, "pong", 10, "pinging") == {"event": "pong"}
    tail = client.transport.log_tail()
    assert "stand-in agent starting" in tail and "noise on stdout" in tail
    assert protocol.PREFIX.decode() not in tail
    client.shutdown()


@pytest.mark.docker
def test_agent_exit_becomes_agent_died_with_code_and_log(env: DockerEnvironment) -> None:
    client = _standin(env)
    client.transport.send(protocol.encode({"op": "crash"}))
    with pytest.raises(AgentDied) as info:
        client.transport.read_line(time.monotonic() + 10)
    message = str(info.value)
    assert env.container.name in message
    assert "exit code 3" in message
    assert "stand-in crashing on purpose" in message
    assert "hint:" in message


@pytest.mark.docker
def test_agent_killed_inside_the_container(env: DockerEnvironment) -> None:
    client = _started(env)
    code, out = _run_inside(env, (
        "import os, signal\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try: cmd = open(f'/proc/{pid}/cmdline', 'rb').read()\n"
        "    except OSError: continue\n"
        "    if b'-m\\0pytest_hostperf.agent\\0' in cmd and int(pid) != os.getpid():\n"
        "        os.kill(int(pid), signal.SIGKILL); print('killed', pid)\n"))
    assert code == 0 and "killed" in out, out
    with pytest.raises(AgentDied) as info:
        client.request({"op": "ping"}, "pong", 10, "pinging")
    message = str(info.value)
    assert env.container.name in message and "exit code 137" in message and "signal 9" in message


@pytest.mark.docker
def test_read_line_times_out(env: DockerEnvironment) -> None:
    client = _standin(env)
    started = time.monotonic()
    with pytest.raises(AgentTimeout):
        client.transport.read_line(time.monotonic() + 0.2)
    assert time.monotonic() - started < 1.0
    client.shutdown()


@pytest.mark.docker
def test_agent_restarts_in_the_same_warm_container(env: DockerEnvironment) -> None:
    first = _standin(env)
    container_id = env.container.id
    first.shutdown()
    second = _standin(env)
    assert env.container.id == container_id
    assert second.request({"op": "ping"}, "pong", 10, "pinging")["event"] == "pong"
    second.shutdown()


@pytest.mark.docker
def test_close_kills_an_agent_that_ignores_stdin_eof(env: DockerEnvironment) -> None:
    stubborn = StandInLaunch(**dataclasses.asdict(env.launch([])))
    # Swap the stand-in for one that never reads stdin and never leaves.
    stubborn_argv = [env.image().python, "-c",
                     "import sys, time; sys.stdout.write('@@hostperf@@ {\"event\":\"ready\",\"protocol\":1}\\n');"
                     "sys.stdout.flush(); time.sleep(3600)"]
    launch = type("Stubborn", (StandInLaunch,), {"argv": lambda self: stubborn_argv})(
        **dataclasses.asdict(stubborn))
    client = _started(env, launch)
    transport = client.transport
    transport.close()
    deadline = time.monotonic() + 5
    while transport.exec_info().get("Running") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not transport.exec_info().get("Running")
    transport.close()  # idempotent


# --------------------------------------------------------------------------- isolation

@pytest.mark.docker
def test_project_is_read_only_and_mounts_are_writable(env: DockerEnvironment) -> None:
    _started(env).shutdown()
    code, out = _run_inside(env, "open('/project/written-by-test', 'w')")
    assert code != 0 and "Read-only file system" in out
    assert not (TINY / "written-by-test").exists()
    for mount in env.mounts():
        code, out = _run_inside(env, f"open({mount.path!r} + '/probe', 'w').write('x')")
        assert code == 0, f"{mount.name}: {out}"
    # The agent runs as the controller's uid: its files in the bind mount are removable.
    assert (env.bind_dir / "probe").stat().st_uid == os.getuid()


@pytest.mark.docker
def test_no_network_but_loopback(env: DockerEnvironment) -> None:
    _started(env).shutdown()
    code, out = _run_inside(env, "import socket; print(sorted(n for _, n in socket.if_nameindex()))")
    assert code == 0 and out.strip() == "['lo']", out


@pytest.mark.docker
def test_no_privileges(env: DockerEnvironment) -> None:
    _started(env).shutdown()
    code, out = _run_inside(env, "print(open('/proc/1/status').read() + open('/proc/self/status').read())")
    assert code == 0
    status = [line.split() for line in out.splitlines() if line.startswith(("CapEff", "CapBnd", "NoNewPrivs"))]
    assert status and all(value in ("0000000000000000", "1") for _, value in status), status
    attrs = env.container.attrs["HostConfig"]
    assert attrs["Privileged"] is False and attrs["CapDrop"] == ["ALL"]


@pytest.mark.docker
def test_mount_filesystem_types(env: DockerEnvironment, tmp_path: Path) -> None:
    _started(env).shutdown()
    code, out = _run_inside(env, "print(open('/proc/mounts').read())")
    assert code == 0
    mounts = [line.split()[1:3] for line in out.splitlines() if line.strip()]

    def fstype(path: str) -> str:
        best = max((m for m in mounts if path == m[0] or path.startswith(m[0].rstrip("/") + "/")),
                   key=lambda m: len(m[0]))
        return best[1]

    assert fstype("/hostperf/bind") == _host_fstype(tmp_path)
    docker_root = env.client().info()["DockerRootDir"]
    assert fstype("/hostperf/volume") == _host_fstype(Path(docker_root))
    assert fstype("/hostperf/tmpfs") == "tmpfs"
    assert fstype("/var/tmp/hostperf-layer") == "overlay"
    assert fstype("/project") == _host_fstype(TINY)


def _host_fstype(path: Path) -> str:
    path = path.resolve()
    best = ("", "")
    for line in Path("/proc/mounts").read_text().splitlines():
        point, kind = line.split()[1:3]
        if (str(path) == point or str(path).startswith(point.rstrip("/") + "/")) and len(point) >= len(best[0]):
            best = (point, kind)
    return best[1]


# --------------------------------------------------------------------------- cleanup

@pytest.mark.docker
def test_stop_leaves_nothing_labelled(engine: Any, env: DockerEnvironment) -> None:
    _started(env)  # not shut down: stop() must cope with a live agent
    bind_dir = env.bind_dir
    assert bind_dir is not None and bind_dir.exists()
    containers, volumes = _labelled(engine, env.session_id)
    assert len(containers) == 1 and len(volumes) == 1
    env.stop()
    assert _labelled(engine, env.session_id) == ([], [])
    assert not bind_dir.exists()
    env.stop()  # idempotent


@pytest.mark.docker
def test_sweep_stale_removes_resources_of_a_dead_session(engine: Any, project_image: images.ImageRef,
                                                         tmp_path: Path) -> None:
    # Not reaped: a SIGKILLed controller is a zombie until its parent waits for it.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    while Path(f"/proc/{dead.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)
    session = f"test-dead-{uuid.uuid4().hex[:8]}"
    bind_dir = tmp_path / (docker_env.BIND_PREFIX + "left")
    bind_dir.mkdir()
    labels = {owner_labels.SESSION: session, owner_labels.PID: str(dead.pid),
              owner_labels.HOST: socket.gethostname(), owner_labels.BIND_DIR: str(bind_dir)}
    alive_labels = {**labels, owner_labels.SESSION: session + "-alive", owner_labels.PID: str(os.getpid())}
    engine.volumes.create(f"hostperf-{session}-volume", labels=labels)
    engine.containers.create(project_image.tag, ["true"], labels=labels, name=f"hostperf-{session}")
    alive = engine.containers.create(project_image.tag, ["true"], labels=alive_labels)
    try:
        removed = sweep_stale(engine)
        assert f"container hostperf-{session}" in removed
        assert f"volume hostperf-{session}-volume" in removed
        assert _labelled(engine, session) == ([], [])
        assert not bind_dir.exists()
        alive.reload()  # a live session's container is left alone
    finally:
        alive.remove(force=True)
        dead.wait()


@pytest.mark.docker
def test_describe_reports_engine_and_image(env: DockerEnvironment) -> None:
    _started(env).shutdown()
    facts = env.describe()
    assert facts["image_id"] == env.image().id
    assert facts["engine"]
    assert facts["network"] is False


@pytest.mark.docker
def test_launch_and_match_facts_for_the_session(env: DockerEnvironment) -> None:
    launch = env.launch_for(TINY, ("test_tiny.py",), ("-x",))
    assert launch.project_dir == "/project" and launch.python == env.image().python
    assert launch.argv()[-2:] == ["-x", "test_tiny.py"]
    facts = env.match_facts()["docker"]
    assert set(facts) == {"kind", "rootless", "storage_driver"} and facts["kind"]


def test_too_old_engine_is_refused() -> None:
    with pytest.raises(EnvironmentFailure, match="too old.*need API 1.30"):
        docker_env.check_api_version("unix:///x.sock", {"ApiVersion": "1.24", "Version": "1.12.6"})
    docker_env.check_api_version("unix:///x.sock", {"ApiVersion": "1.41"})


@pytest.mark.docker
def test_cpu_limit_and_opt_in_network(engine: Any, project_image: images.ImageRef, tmp_path: Path) -> None:
    with DockerEnvironment(f"test-{uuid.uuid4().hex[:12]}", TINY, tmp_path, network=True, cpus=0.5) as env:
        _standin(env).shutdown()
        assert env.container.attrs["HostConfig"]["NanoCpus"] == 500_000_000
        assert env.describe()["nano_cpus"] == 500_000_000
        code, out = _run_inside(env, "import socket; print(sorted(n for _, n in socket.if_nameindex()))")
        assert code == 0 and "eth0" in out, out


# --------------------------------------------------------------------------- issue 8: lifecycle and limits

@pytest.mark.docker
def test_a_killed_container_is_replaced_for_the_next_agent(engine: Any, env: DockerEnvironment) -> None:
    """Issue 8.7: `docker kill` mid-session; the next start_agent used to reuse the dead container."""
    client = _started(env)
    first = env.container
    engine.api.kill(first.id)
    with pytest.raises(AgentDied) as info:
        client.request({"op": "ping"}, "pong", 30, "pinging")
    assert "exit code 137" in str(info.value)
    client.transport.close()
    second = _started(env)   # what the pool does for the next item
    assert env.container.id != first.id and env.container.status == "running"
    assert second.request({"op": "ping"}, "pong", 30, "pinging") == {"event": "pong"}
    assert not engine.containers.list(all=True, filters={"id": first.id})
    containers, volumes = _labelled(engine, env.session_id)
    assert [c.id for c in containers] == [env.container.id] and len(volumes) == 1
    second.shutdown()


@pytest.mark.docker
def test_default_limits_bound_processes_memory_and_the_tmpfs(engine: Any, env: DockerEnvironment) -> None:
    _started(env).shutdown()
    host_config = env.container.attrs["HostConfig"]
    total = int(engine.info()["MemTotal"])
    assert host_config["PidsLimit"] == 512
    assert host_config["Memory"] == total // 2 and host_config["MemorySwap"] == total // 2
    (tmpfs,) = [m for m in host_config["Mounts"] if m["Type"] == "tmpfs"]
    assert tmpfs["TmpfsOptions"]["SizeBytes"] == total // 4
    assert env.describe()["limits"] == {"pids": 512, "memory_bytes": total // 2, "tmpfs_bytes": total // 4}


HOSTILE = r"""
import errno, threading, time
started = 0
try:
    while started < 2000:
        threading.Thread(target=time.sleep, args=(20,), daemon=True).start()
        started += 1
except RuntimeError:
    pass
try:
    with open("/hostperf/tmpfs/flood", "wb") as f:
        for _ in range(128):
            f.write(b"\0" * (1 << 20))
    flood = "wrote 128 MiB"
except OSError as exc:
    flood = errno.errorcode[exc.errno]
print(started, flood)
"""


@pytest.mark.docker
def test_a_fork_loop_and_a_tmpfs_flood_hit_the_limits(engine: Any, project_image: images.ImageRef,
                                                      tmp_path: Path) -> None:
    """Issue 8.13: what a hostile test body would do stops at the container's limits."""
    env = DockerEnvironment(f"test-{uuid.uuid4().hex[:12]}", TINY, tmp_path, pids=64, memory="512m",
                            tmpfs_size="32m")
    try:
        env.check()
        _started(env).shutdown()
        code, out = _run_inside(env, HOSTILE)
        assert code == 0, out
        threads, flood = out.split()
        assert 16 < int(threads) < 64, out   # the keep-alive and python itself hold a few
        assert flood == "ENOSPC", out
    finally:
        env.stop()


@pytest.mark.docker
def test_sweep_leaves_sessions_of_other_pid_namespaces_alone(engine: Any, project_image: images.ImageRef) -> None:
    """Issue 8.14: one host name, two pid namespaces: the other's pid is not a dead pid."""
    here = owner_labels.Owner.current()
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
    session = f"test-ns-{uuid.uuid4().hex[:8]}"

    def owned(owner: owner_labels.Owner, suffix: str, run: bool = False) -> Any:
        labels = {owner_labels.SESSION: f"{session}-{suffix}", **owner.labels()}
        container = engine.containers.create(project_image.tag, [project_image.python, "-c", "import time; "
                                             "time.sleep(60)"], labels=labels, network_mode="none")
        if run:
            container.start()
        return container

    dead = dataclasses.replace(here, pid=int(dead_pid), started=None)
    other_ns = owned(dataclasses.replace(dead, pid_ns="pid:[4026530000]"), "ns")
    gone = owned(dead, "dead")
    old_boot_stopped = owned(dataclasses.replace(dead, boot_id="an-earlier-boot"), "boot")
    old_boot_running = owned(dataclasses.replace(dead, boot_id="an-earlier-boot"), "boot-run", run=True)
    try:
        removed = sweep_stale(engine)
        assert f"container {gone.name}" in removed and f"container {old_boot_stopped.name}" in removed
        assert f"container {other_ns.name}" not in removed and f"container {old_boot_running.name}" not in removed
    finally:
        for container in (other_ns, gone, old_boot_stopped, old_boot_running):
            try:
                container.remove(force=True)
            except Exception:  # noqa: BLE001 - already swept
                pass


EXPORT_CHILD = """
import sys
from pathlib import Path
from pytest_hostperf.images import ImageRef
from pytest_hostperf.environments.qemu import prepare_vm_disk
ref = ImageRef(tag=sys.argv[1], id=sys.argv[2] + "-killed-export", python=sys.argv[3])
prepare_vm_disk(ref, cache_dir=Path(sys.argv[4]))
"""


@pytest.mark.docker
@pytest.mark.qemu
def test_a_killed_vm_disk_build_leaves_nothing_the_sweeps_miss(engine: Any, project_image: images.ImageRef,
                                                               tmp_path: Path) -> None:
    """Issue 8.8: the export container had no pid label, and killed builds left GBs in .build-*."""
    from pytest_hostperf.vm import sweep_build_dirs

    cache = tmp_path / "cache"
    child = subprocess.Popen([sys.executable, "-c", EXPORT_CHILD, project_image.tag, project_image.id,
                              project_image.python, str(cache)],
                             env={**os.environ, "PYTHONPATH": str(package_parent())})
    try:
        deadline = time.monotonic() + 120
        while True:
            exporting = engine.containers.list(all=True, filters={"label": f"{owner_labels.PID}={child.pid}"})
            if exporting and list(cache.glob(".build-*/rootfs/*")):
                break
            assert child.poll() is None, "the build ended before it could be killed"
            assert time.monotonic() < deadline, "the export never started"
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    assert exporting[0].labels[owner_labels.SESSION] == "image-build"
    removed = sweep_stale(engine)
    assert f"container {exporting[0].name}" in removed
    staging = list(cache.glob(".build-*"))
    assert staging and sweep_build_dirs(cache) == staging
    assert not list(cache.glob(".build-*"))
