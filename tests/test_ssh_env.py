"""The ssh backend against a real OpenSSH server on loopback (no mocks).

A throwaway ``sshd`` (own host key, own authorized_keys, own pid file) listens on
127.0.0.1 on a free port for the whole session; a client config in the same temporary
directory names it ``hostperf-test``. The "remote" machine is this machine, so the
tests can look at the remote work directory and the remote processes directly.

When sshd cannot be started the tests skip, unless HOSTPERF_REQUIRE_SSH or CI is set:
then they fail, so CI never passes by silently skipping.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, NoReturn

import psutil
import pytest

from pytest_hostperf.environments.base import AgentClient, AgentDied, AgentLaunch, EnvironmentFailure
from pytest_hostperf.environments.ssh import TOKEN_VAR, SshEnvironment, interpreter_word
from pytest_hostperf.progress import Reporter

pytest_plugins = ["pytester"]

TINY = Path(__file__).parent / "projects" / "tiny"
HOST = "hostperf-test"
PYTHON = sys.executable  # the "remote" python: sshd's sessions may not have pyenv on PATH

#: A stdlib stand-in for the agent: reports the argv and environment it got, verbatim.
STANDIN = r"""
import json, os, sys
P = b"@@hostperf@@ "
out = sys.stdout.buffer
def send(m):
    out.write(P + json.dumps(m).encode() + b"\n"); out.flush()
send({"event": "ready", "protocol": 1, "fingerprint": {}, "collected": [], "collect_errors": [],
      "argv": sys.argv[1:], "cwd": os.getcwd(), "environ": dict(os.environ)})
for line in sys.stdin.buffer:
    if b'"shutdown"' in line:
        send({"event": "bye"}); break
"""


@dataclasses.dataclass(frozen=True)
class StandInLaunch(AgentLaunch):
    def argv(self) -> list[str]:
        return [self.python, "-c", STANDIN, *self.pytest_args]


@dataclasses.dataclass(frozen=True)
class SshServer:
    port: int
    client_config: Path
    directory: Path
    log: Path


# --------------------------------------------------------------------------- the server

def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("HOSTPERF_REQUIRE_SSH") or os.environ.get("CI"):
        pytest.fail(f"HOSTPERF_REQUIRE_SSH/CI is set but sshd cannot be started: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hostperf-test", "-f", str(path)],
                   check=True, capture_output=True, timeout=30)


def _client_config(directory: Path, port: int, identity: Path, name: str = "ssh_config",
                   host: str = HOST) -> Path:
    config = directory / name
    config.write_text(
        f"Host {host}\n"
        f"  HostName 127.0.0.1\n"
        f"  Port {port}\n"
        f"  User {getpass.getuser()}\n"
        f"  IdentityFile {identity}\n"
        f"  IdentitiesOnly yes\n"
        f"  IdentityAgent none\n"
        f"  PasswordAuthentication no\n"
        f"  StrictHostKeyChecking no\n"
        f"  UserKnownHostsFile {directory / 'known_hosts'}\n"
        f"  LogLevel ERROR\n")
    return config


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"sshd exited with code {process.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return None
        except OSError:
            time.sleep(0.05)
    return f"sshd did not listen on 127.0.0.1:{port} within {timeout:.0f} s"


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    binary = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
    if binary is None:
        _unavailable("no sshd (apt-get install openssh-server)")
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        _unavailable("no ssh client (apt-get install openssh-client)")
    # sshd insists on its privilege separation directory, even with a private config.
    privsep = Path("/run/sshd")
    if not privsep.is_dir():
        try:
            privsep.mkdir(mode=0o755, parents=True)
        except OSError as exc:
            _unavailable(f"sshd needs {privsep} and it cannot be created: {exc}")
    directory = tmp_path_factory.mktemp("sshd")
    _keygen(directory / "host_key")
    _keygen(directory / "client_key")
    shutil.copy(directory / "client_key.pub", directory / "authorized_keys")
    port = _free_port()
    config = directory / "sshd_config"
    config.write_text(
        f"Port {port}\n"
        f"ListenAddress 127.0.0.1\n"
        f"HostKey {directory / 'host_key'}\n"
        f"AuthorizedKeysFile {directory / 'authorized_keys'}\n"
        f"PidFile {directory / 'sshd.pid'}\n"
        "StrictModes no\n"
        "UsePAM no\n"
        "PermitRootLogin yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PrintMotd no\n"
        "MaxStartups 50\n")
    test = subprocess.run([binary, "-t", "-f", str(config)], capture_output=True, text=True, timeout=30)
    if test.returncode != 0:
        _unavailable(f"sshd rejects the test config: {test.stderr.strip()}")
    log = directory / "sshd.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen([binary, "-D", "-e", "-f", str(config)], stdout=handle, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        problem = _wait_listening(port, process, timeout=15)
        if problem:
            _unavailable(f"{problem}; log: {log.read_text(errors='replace')[-2000:]}")
        yield SshServer(port, _client_config(directory, port, directory / "client_key"), directory, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# --------------------------------------------------------------------------- helpers

def _env(sshd: SshServer, tmp_path: Path, project: Path = TINY, **kwargs: Any) -> SshEnvironment:
    kwargs.setdefault("python", PYTHON)
    kwargs.setdefault("ssh_config", sshd.client_config)
    return SshEnvironment(host=kwargs.pop("host", HOST), session_id=f"test-{uuid.uuid4().hex[:12]}",
                          project_dir=project, work_dir=tmp_path / "work", **kwargs)


@pytest.fixture
def env(sshd: SshServer, tmp_path: Path) -> Iterator[SshEnvironment]:
    environment = _env(sshd, tmp_path)
    try:
        yield environment
    finally:
        environment.stop()


def _started(env: SshEnvironment, launch: AgentLaunch | None = None) -> AgentClient:
    env.check()
    launch = launch or env.launch_for(env.project_dir, ("test_tiny.py",), ("-c", "pytest.ini"))
    client = AgentClient(env.name, env.start_agent(launch))
    client.wait_ready(env.agent_start_timeout())
    return client


def _processes_mentioning(*needles: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if process.pid == os.getpid():
            continue
        cmdline = " ".join(process.info.get("cmdline") or [])
        if any(needle in cmdline for needle in needles):
            found.append(process)
    return found


def _remote_agents(env: SshEnvironment) -> list[psutil.Process]:
    """The agent processes sshd started for ``env`` (not the local ssh client)."""
    agents = []
    for process in _processes_mentioning(env.remote_work_dir()):
        try:
            cmdline = process.cmdline()
        except psutil.Error:
            continue
        if cmdline[1:3] == ["-m", "pytest_hostperf.agent"]:
            agents.append(process)
    return agents


def _gone(env: SshEnvironment, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = [f"{p.pid}: {' '.join(p.info.get('cmdline') or [])}"
                for p in _processes_mentioning(env.remote_work_dir(), env._token)]  # noqa: SLF001
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


# --------------------------------------------------------------------------- check()

def test_check_succeeds_and_learns_the_target(env: SshEnvironment) -> None:
    env.check()
    assert env.remote_home() == os.path.expanduser("~")
    assert env.remote_work_dir() == f"{os.path.expanduser('~')}/.cache/pytest-hostperf/{env.session_id}"
    (mount,) = env.mounts()
    assert (mount.name, mount.path) == ("remote", f"{env.remote_work_dir()}/hostperf-dir")
    assert env.describe()["host"] == HOST and env.describe()["ssh_config"] == str(env.ssh_config)
    assert env.match_facts() == {"ssh.host": HOST}
    assert env.name == f"ssh:{HOST}"


def test_unreachable_host_fails_with_the_ssh_config_hint(sshd: SshServer, tmp_path: Path) -> None:
    config = _client_config(tmp_path, _free_port(), sshd.directory / "client_key", "dead_config")
    env = _env(sshd, tmp_path, ssh_config=config)
    started = time.monotonic()
    with pytest.raises(EnvironmentFailure) as info:
        env.check()
    message = str(info.value)
    assert time.monotonic() - started < 15
    assert f"environment 'ssh:{HOST}'" in message and "cannot reach" in message
    assert "Connection refused" in message  # ssh's own words, from its stderr
    assert "ssh HOST true" in message and "limactl show-ssh --format=config" in message
    assert "colima ssh-config" in message and "vagrant ssh-config" in message
    env.stop()  # nothing was created: a no-op that must not raise


def test_authentication_failure_says_so(sshd: SshServer, tmp_path: Path) -> None:
    _keygen(tmp_path / "stranger_key")
    config = _client_config(tmp_path, sshd.port, tmp_path / "stranger_key", "stranger_config")
    with pytest.raises(EnvironmentFailure) as info:
        _env(sshd, tmp_path, ssh_config=config).check()
    assert "authentication failed" in str(info.value) and "Permission denied" in str(info.value)


def test_missing_python_on_the_target(sshd: SshServer, tmp_path: Path) -> None:
    with pytest.raises(EnvironmentFailure) as info:
        _env(sshd, tmp_path, python="/nonexistent/python3").check()
    assert "there is no '/nonexistent/python3'" in str(info.value)
    assert "apt-get install python3" in str(info.value)


def test_python_without_pytest_on_the_target(sshd: SshServer, tmp_path: Path) -> None:
    venv = tmp_path / "bare-venv"
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    with pytest.raises(EnvironmentFailure) as info:
        _env(sshd, tmp_path, python=str(venv / "bin" / "python")).check()
    message = str(info.value)
    assert "cannot import pytest and pytest-benchmark" in message
    assert "pip install pytest pytest-benchmark" in message


def test_missing_ssh_client(sshd: SshServer, tmp_path: Path) -> None:
    with pytest.raises(EnvironmentFailure) as info:
        _env(sshd, tmp_path, ssh_binary="/nonexistent/ssh").check()
    assert "no ssh client" in str(info.value) and "apt-get install openssh-client" in str(info.value)


def test_missing_ssh_config_file(sshd: SshServer, tmp_path: Path) -> None:
    with pytest.raises(EnvironmentFailure, match="does not exist"):
        _env(sshd, tmp_path, ssh_config=tmp_path / "nope").check()


# --------------------------------------------------------------------------- the agent

def test_agent_ready_and_ping_round_trip(env: SshEnvironment, capsys: pytest.CaptureFixture[str]) -> None:
    client = _started(env)
    assert client.hello["env"] == f"ssh:{HOST}"
    assert "test_tiny.py::test_sum_squares" in client.hello["collected"]
    timings = []
    for _ in range(200):
        started = time.perf_counter()
        assert client.request({"op": "ping"}, "pong", 10, "pinging")["event"] == "pong"
        timings.append(time.perf_counter() - started)
    median_ms = statistics.median(timings) * 1000
    with capsys.disabled():
        print(f"\nssh agent ping round trip over loopback sshd: median {median_ms:.3f} ms, "
              f"p90 {sorted(timings)[179] * 1000:.3f} ms, max {max(timings) * 1000:.3f} ms (200 pings)")
    # One warm connection: a request must not cost an ssh login (~100+ ms) or a Nagle stall (40 ms).
    assert median_ms < 20
    client.shutdown()


def test_full_benchmark_run_returns_samples(env: SshEnvironment) -> None:
    client = _started(env)
    (mount,) = env.mounts()
    answer = client.request({"op": "run", "nodeid": "test_tiny.py::test_sum_squares", "mount": mount.name,
                             "mount_path": mount.path,
                             "benchmark_options": {"max_time": 0.05, "min_rounds": 5, "warmup": False}},
                            "result", 120, "running test_sum_squares")
    assert answer["outcome"] == "passed", answer
    assert len(answer["samples"]) >= 5 and all(s > 0 for s in answer["samples"])
    assert answer["iterations"] >= 1
    assert Path(mount.path).is_dir()
    client.shutdown()


def test_project_and_package_are_shipped_without_junk(sshd: SshServer, tmp_path: Path) -> None:
    project = tmp_path / "proj ect's $dir"
    shutil.copytree(TINY, project)
    for junk in (".git/objects", "__pycache__", ".venv/lib", "data/.pytest_cache", "pkg.egg-info", "oddenv"):
        (project / junk).mkdir(parents=True)
    (project / "oddenv" / "pyvenv.cfg").write_text("home = /usr\n")
    (project / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (project / "stale.pyc").write_bytes(b"\0")
    (project / "data" / "keep.txt").write_text("kept")
    (project / "link").symlink_to("data")
    lines: list[str] = []
    env = _env(sshd, tmp_path, project=project, reporter=Reporter(lines.append).child(f"ssh:{HOST}"))
    try:
        env.check()
        env.ship()
        remote = Path(env.remote_project_dir())
        assert (remote / "test_tiny.py").read_text() == (TINY / "test_tiny.py").read_text()
        assert (remote / "data" / "keep.txt").read_text() == "kept"
        assert (remote / "link").is_symlink()
        for junk in (".git", "__pycache__", ".venv", "data/.pytest_cache", "pkg.egg-info", "oddenv", "stale.pyc"):
            assert not (remote / junk).exists(), junk
        assert (Path(env.remote_agent_dir()) / "pytest_hostperf" / "agent" / "__main__.py").is_file()
        assert not list(Path(env.remote_agent_dir()).rglob("__pycache__"))
        assert Path(env.mounts()[0].path).is_dir()
        (line,) = lines
        assert line.startswith(f"hostperf: ssh:{HOST}: shipped ") and f"{HOST}:{env.remote_work_dir()}" in line
    finally:
        env.stop()
    assert not Path(env.remote_work_dir()).exists()


def test_every_word_reaches_the_remote_process_verbatim(env: SshEnvironment, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    nasty = ("a b", "'", '"', "\\", "$HOME", f"$(touch {marker})", f"`touch {marker}`", f"; touch {marker}",
             "*", "~", "x\ny", "&&", "|", "")
    env.check()
    launch = env.launch_for(env.project_dir, (), nasty)
    client = _started(env, StandInLaunch(**dataclasses.asdict(launch)))
    assert client.hello["argv"][-len(nasty):] == list(nasty)
    assert client.hello["cwd"] == env.remote_agent_dir()
    assert client.hello["environ"]["PYTHONPATH"] == env.remote_agent_dir()
    assert client.hello["environ"][TOKEN_VAR]
    assert not marker.exists()
    assert interpreter_word("~/py thon") == "\"$HOME\"/'py thon'"
    client.shutdown()


def test_ssh_command_line(sshd: SshServer, tmp_path: Path) -> None:
    with_config = _env(sshd, tmp_path).ssh_argv("true")
    for option in ("BatchMode=yes", "ConnectTimeout=10"):
        assert with_config[with_config.index(option) - 1] == "-o"
    assert "-T" in with_config and with_config[with_config.index("-F") + 1] == str(sshd.client_config)
    assert with_config[-3:] == ["--", HOST, "true"]
    assert "-F" not in _env(sshd, tmp_path, ssh_config=None).ssh_argv("true")


def test_absolute_paths_into_the_project_point_at_the_copy(env: SshEnvironment) -> None:
    env.check()
    launch = env.launch_for(TINY, (str(TINY / "test_tiny.py"),), ("-c", str(TINY / "pytest.ini"), "-q"))
    assert launch.test_files == ("test_tiny.py",)
    assert launch.pytest_args == ("-c", f"{env.remote_project_dir()}/pytest.ini", "-q")
    assert (launch.python, launch.pythonpath, launch.project_dir) == (
        PYTHON, env.remote_agent_dir(), env.remote_project_dir())


# --------------------------------------------------------------------------- stop and death

def test_stop_removes_the_work_dir_and_every_agent_process(env: SshEnvironment) -> None:
    client = _started(env)
    assert client.request({"op": "ping"}, "pong", 10, "pinging")
    agents = _remote_agents(env)
    assert len(agents) == 1
    work = Path(env.remote_work_dir())
    assert work.is_dir()
    env.stop()  # no shutdown request first: stop() alone must leave nothing behind
    assert not work.exists()
    assert _gone(env) == []
    env.stop()  # idempotent


def test_stop_kills_a_busy_remote_agent(env: SshEnvironment) -> None:
    client = _started(env, None)
    transport = client.transport
    transport.send(b'@@hostperf@@ {"op":"run","nodeid":"test_tiny.py::test_sum_squares","mount":"",'
                   b'"mount_path":null,"benchmark_options":{"max_time":60,"min_rounds":100000}}\n')
    time.sleep(1.0)  # the agent is now deep in a long benchmark and reads no input
    started = time.monotonic()
    env.stop()
    assert time.monotonic() - started < 15
    assert _gone(env) == []
    assert not Path(env.remote_work_dir()).exists()


def test_closing_the_transport_kills_a_busy_remote_agent(env: SshEnvironment) -> None:
    """What the session does after a test timeout: close the transport, start afresh."""
    client = _started(env)
    client.transport.send(b'@@hostperf@@ {"op":"run","nodeid":"test_tiny.py::test_sum_squares","mount":"",'
                          b'"mount_path":null,"benchmark_options":{"max_time":60,"min_rounds":100000}}\n')
    time.sleep(1.0)
    (agent,) = _remote_agents(env)
    client.transport.close()
    agent.wait(timeout=10)
    assert _remote_agents(env) == []
    assert Path(env.remote_work_dir()).is_dir()  # the session goes on: only stop() removes it
    again = _started(env)
    assert again.request({"op": "ping"}, "pong", 10, "pinging")


def test_killed_remote_agent_is_agent_died(env: SshEnvironment) -> None:
    client = _started(env)
    (agent,) = _remote_agents(env)
    agent.send_signal(signal.SIGKILL)
    with pytest.raises(AgentDied) as info:
        client.request({"op": "ping"}, "pong", 10, "pinging")
    assert HOST in str(info.value)
    env.stop()
    assert _gone(env) == []


def _connection_of(agent: psutil.Process) -> psutil.Process:
    """The sshd process serving the connection ``agent`` runs under (its nearest sshd)."""
    for parent in agent.parents():
        if parent.name() == "sshd":
            return parent
    pytest.fail(f"agent {agent.pid} does not run under an sshd")


@pytest.mark.faults
def test_a_dropped_connection_fails_the_request_and_the_next_agent_starts_afresh(env: SshEnvironment) -> None:
    """The fault suite's 'drop the ssh connection': the server end of the connection dies."""
    client = _started(env)
    (agent,) = _remote_agents(env)
    _connection_of(agent).send_signal(signal.SIGKILL)
    with pytest.raises(AgentDied) as info:
        client.request({"op": "ping"}, "pong", 30, "pinging")
    assert HOST in str(info.value)
    client.transport.close()
    agent.wait(timeout=15)   # its connection is gone: the orphaned agent must not linger
    again = _started(env)    # what the pool does for the next item
    assert again.request({"op": "ping"}, "pong", 10, "pinging")["event"] == "pong"
    env.stop()
    assert _gone(env) == []
    assert not Path(env.remote_work_dir()).exists()


def test_agent_restart_replaces_the_old_agent(env: SshEnvironment) -> None:
    first = _started(env)
    (old,) = _remote_agents(env)
    second = _started(env)
    assert second.request({"op": "ping"}, "pong", 10, "pinging")
    assert not old.is_running() or old.status() == psutil.STATUS_ZOMBIE
    with pytest.raises(AgentDied):
        first.request({"op": "ping"}, "pong", 5, "pinging")
    assert len(_remote_agents(env)) == 1


# --------------------------------------------------------------------------- end to end

class _Settings(SimpleNamespace):
    def __getattr__(self, name: str) -> Any:  # settings the registry may read but we do not set
        return None


def test_end_to_end_native_and_ssh(sshd: SshServer, pytester: pytest.Pytester,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_hostperf.environments.base import EnvironmentContext
    from pytest_hostperf.environments.registry import create_backend
    from pytest_hostperf.progress import SILENT

    settings = _Settings(project_dir=pytester.path, ssh_config=sshd.client_config)
    context = EnvironmentContext(settings, "probe", pytester.path, SILENT)  # type: ignore[arg-type]
    backend = create_backend(f"ssh:{HOST}", context)
    assert getattr(backend, "ssh_config", None) == sshd.client_config, "the registry must pass --hostperf-ssh-config"
    monkeypatch.setenv("HOSTPERF_SSH_PYTHON", PYTHON)  # sshd sessions may lack pyenv on PATH
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_e2e="""
def _work():
    return sum(i * i for i in range(2000))

def test_work(benchmark, hostperf_dir):
    assert benchmark(_work) == 2664667000
""")
    report = pytester.path / "report.json"
    result = pytester.runpytest_subprocess(
        "--benchmark-max-time=0.05", "--benchmark-min-rounds=5", "--benchmark-warmup=off", "-p", "no:cacheprovider",
        "--hostperf", f"--hostperf-envs=native,ssh:{HOST}", f"--hostperf-ssh-config={sshd.client_config}",
        f"--hostperf-json={report}", "-v", timeout=300)
    result.stdout.fnmatch_lines([f"*test_work?ssh:{HOST}*PASSED*"])
    assert result.ret == 0, result.stdout.str()
    records = {r["env"]: r for r in json.loads(report.read_text())["results"]}
    assert records[f"ssh:{HOST}"]["samples"] and records["native"]["samples"]
    assert not list(Path(os.path.expanduser("~/.cache/pytest-hostperf")).glob("*/project/test_e2e.py"))


def test_copies_left_by_killed_sessions_are_removed_at_the_next_ship(sshd: SshServer, tmp_path: Path) -> None:
    """Issue 8.8: a killed session left its copy (and maybe its agent) on the target for good."""
    from pytest_hostperf.agent.protocol import TOKEN_VAR as AGENT_TOKEN
    from pytest_hostperf.environments import labels as owner_labels

    cache = Path(os.path.expanduser("~/.cache/pytest-hostperf"))
    here = owner_labels.Owner.current()
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()

    def planted(kind: str, owner: owner_labels.Owner) -> Path:
        name = f"test-{kind}-{uuid.uuid4().hex[:8]}"
        (cache / name / "project").mkdir(parents=True)
        (cache / name / "owner.json").write_text(json.dumps(
            {owner_labels.SESSION: name, "token": f"tok-{name}", **owner.labels()}))
        return cache / name

    dead = planted("dead", dataclasses.replace(here, pid=int(dead_pid), started=None))
    live = planted("live", here)
    foreign = planted("foreign", dataclasses.replace(here, host=here.host + "-elsewhere"))
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                              env={**os.environ, AGENT_TOKEN: f"tok-{dead.name}"})
    lines: list[str] = []
    env = _env(sshd, tmp_path, reporter=Reporter(lines.append))
    try:
        env.check()
        env.ship()
        assert not dead.exists() and live.is_dir() and foreign.is_dir()
        assert orphan.wait(20) == -signal.SIGKILL   # the dead session's agent went with its copy
        assert any("removed 1 work dir(s) of killed sessions" in line for line in lines), lines
        assert Path(env.remote_work_dir(), "owner.json").is_file()   # ours, for the next session
    finally:
        env.stop()
        orphan.kill()
        orphan.wait()
        shutil.rmtree(live, ignore_errors=True)
        shutil.rmtree(foreign, ignore_errors=True)


def test_a_session_against_a_revision_pairs_two_remote_agents(sshd: SshServer, pytester: pytest.Pytester) -> None:
    # ``--hostperf-against`` on an existing machine: REV's tree is shipped beside the
    # working tree's, each gets its own remote agent, and the working tree's 3x faster code
    # reads as an improvement there; both copies and agents are gone at the end.
    from test_against import git, make_repo

    make_repo(pytester.path, src_layout=False, rev_cost=9000, tree_cost=3000)
    report = pytester.path / "r.json"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--benchmark-max-time=0.05", "--benchmark-min-rounds=5", "--hostperf",
        f"--hostperf-envs=ssh:{HOST}", f"--hostperf-ssh-config={sshd.client_config}",
        f"--hostperf-ssh-python={PYTHON}", "--hostperf-against=HEAD", "-k", "changed or new",
        f"--hostperf-json={report}", timeout=600)
    assert result.ret == 0, result.stdout.str()
    rows = {r["item"].split("::")[-1]: r for r in json.loads(report.read_text())["results"]}
    changed = rows[f"test_changed[ssh:{HOST}]"]
    assert changed["verdict"] == "improvement", changed["against"]
    assert changed["against"]["rev"] == git(pytester.path, "rev-parse", "HEAD") and changed["against"]["pairs"] >= 40
    assert 0.15 < changed["against"]["ratio"] < 0.7
    assert rows[f"test_new[ssh:{HOST}]"]["against"]["error"] == "absent"
    session = json.loads(report.read_text())["session_id"]
    assert not _processes_mentioning(session), "a remote agent outlived the session"
