"""Hostile test bodies, natively and in a container, and a ``docker kill``: one session holds them all.

A test body is untrusted code. Whatever it does to its own process or its container, it
fails (or passes) as one item that names its environment, the agent's protocol channel
survives, and the rest of the session goes on: here the last test passes in every
environment after all the others ran. The fork loop runs only in the container (its pids
limit stops it); nothing here runs a fork bomb on the host. While one docker item waits
in its body, the test kills the session's container from outside (``docker kill``): that
item fails at once naming the container, the next gets a fresh one.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Iterator

import pytest
from faultkit import BaselineSnapshot, FaultProject, SessionResult, agent_restarts, expect, leftovers, wait_for_file

from pytest_hostperf.environments import labels as owner_labels

pytestmark = [pytest.mark.faults, pytest.mark.docker]

HOSTILE = '''
import ctypes
import os
import signal
import sys
import time
from pathlib import Path

import pytest

FORGED = ['@@hostperf@@ {"event":"result","outcome":"failed","reports":[],"samples":[1e-09],"duration_s":0}',
          '@@hostperf@@ {"event":"fatal","message":"forged by the test body"}',
          '@@hostperf@@ {not json']
_printed = []


@pytest.mark.hostperf(envs=["docker"])
def test_fork_loop(benchmark):
    children = []
    try:
        for _ in range(5000):   # bounded: the container's pids limit (512) must stop it first
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            children.append(pid)
    except OSError as exc:
        raise RuntimeError(f"fork failed after {len(children)} children: {exc}") from exc
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    benchmark(time.sleep, 0.001)


def test_huge_output(benchmark):
    if not _printed:   # once per agent: 200 MiB on stdout, 100 MiB on stderr
        _printed.append(True)
        line = "x" * 1023 + "\\n"
        for _ in range(200 * 1024):
            sys.stdout.write(line)
        for _ in range(100 * 1024):
            sys.stderr.write(line)
    benchmark(time.sleep, 0.001)


@pytest.mark.hostperf(envs=["docker"])
def test_write_outside(benchmark):
    Path(__file__).with_name("written-by-test").write_text("the project is mounted read-only")
    benchmark(time.sleep, 0.001)


def test_close_stdin_and_stdout(benchmark):
    for fd in (0, 1):
        try:
            os.close(fd)
        except OSError:   # closed by an earlier block in this agent already
            pass
    benchmark(time.sleep, 0.001)


def test_protocol_lines(benchmark, capfd):
    for line in FORGED:
        print(line)
        os.write(1, (line + "\\n").encode())
        os.write(2, (line + "\\n").encode())
    with capfd.disabled():   # and straight to the agent's real stdout
        for line in FORGED:
            os.write(1, (line + "\\n").encode())
            sys.stdout.write(line + "\\n")
        sys.stdout.flush()
    benchmark(time.sleep, 0.001)


def test_os_exit(benchmark):
    os._exit(3)


def test_segfault(benchmark):
    ctypes.string_at(0)


# Words a shell would act on, as test ids: each must reach the agent as a node id, verbatim.
WORDS = ["a,b;touch pwned", "$(touch pwned)`touch pwned`", "new\\nline 'q\\"|&>pwned", "--hostperf-x=1 *"]


@pytest.mark.parametrize("word", WORDS)
def test_hostile_id(benchmark, word):
    assert word in WORDS
    benchmark(time.sleep, 0.001)


@pytest.mark.hostperf(envs=["docker"], mounts=["bind"])
def test_killed_from_outside(benchmark, hostperf_dir):
    (hostperf_dir / "body-started").write_text("waiting to be killed")
    time.sleep(120)
    benchmark(time.sleep, 0.002)


def test_zz_after(benchmark):
    benchmark(time.sleep, 0.002)
'''

BOTH = ("native", "docker")


class Hostile:
    """The shared session and what the three checks found once it was over."""

    def __init__(self, project: FaultProject, result: SessionResult, report: dict[str, Any], lost: list[str],
                 left: list[str], killed: str) -> None:
        self.project = project
        self.killed = killed   # the name of the container killed from outside
        self.result = result
        self.report = report
        self.lost = lost
        self.left = left

    def record(self, test: str, env: str) -> dict[str, Any]:
        (found,) = [r for r in self.report["results"] if r["item"].endswith(f"::{test}[{env}]")]
        return found

    def text(self, item: str) -> str:
        return self.result.failure_text(item)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, engine: Any) -> Iterator[Hostile]:
    # A project path with a comma, a quote, a space and shell words: it is handed to docker,
    # agents and the shipped package, and none of them may read it as more than a path.
    made = FaultProject(tmp_path_factory.mktemp("hostile") / "pro ject,x=1;$(touch pwned)'q")
    try:
        made.write("test_hostile.py", HOSTILE)
        common = ("--hostperf-envs=native,docker", "--hostperf-require=docker", "--hostperf-max-overhead=docker=1000")
        assert made.run(*common, "--hostperf-save", "-k", "zz_after").ret == 0
        before = BaselineSnapshot.take(made.baselines)
        report = made.path / "report.json"
        started = time.monotonic()
        session = made.start(*common, "--hostperf-save", f"--hostperf-json={report}", "--hostperf-timeout=300")
        wait_for_file(made.tmpdir, "body-started")   # the bind mount's host side is in the session's TMPDIR
        (container,) = engine.containers.list(filters={"label": f"{owner_labels.PID}={session.pid}"})
        container.kill()
        result = made.finish(session, started, timeout=600)
        yield Hostile(made, result, json.loads(report.read_text()), before.lost(), leftovers(made, engines=[engine]),
                      container.name)
    finally:
        made.cleanup()


def _contained(hostile: Hostile) -> None:
    """The two checks every hostile body shares: no saved baseline byte lost, nothing left."""
    assert hostile.lost == []
    assert hostile.left == []


def test_a_fork_loop_stops_at_the_containers_pids_limit(hostile: Hostile) -> None:
    expect(hostile.result, {"test_fork_loop[docker]": "FAILED"})
    text = hostile.text("test_fork_loop[docker]")
    found = re.search(r"RuntimeError: fork failed after (\d+) children: \[Errno 11\] Resource temporarily unavailable",
                      text)
    assert found and int(found.group(1)) < 512, text   # the keep-alive and the agent hold a few
    _contained(hostile)


def test_hundreds_of_mb_of_output_do_not_break_the_channel(hostile: Hostile) -> None:
    expect(hostile.result, {f"test_huge_output[{env}]": "PASSED" for env in BOTH})
    for env in BOTH:
        assert hostile.record("test_huge_output", env)["samples"], env
    assert "cut" in hostile.result.output and "characters of captured output" in hostile.result.output
    _contained(hostile)


def test_a_write_outside_its_dir_meets_the_read_only_project(hostile: Hostile) -> None:
    expect(hostile.result, {"test_write_outside[docker]": "FAILED"})
    text = hostile.text("test_write_outside[docker]")
    assert "OSError: [Errno 30] Read-only file system: '/project/written-by-test'" in text, text
    assert not (hostile.project.path / "written-by-test").exists()
    _contained(hostile)


def test_closing_stdin_and_stdout_leaves_the_channel_alone(hostile: Hostile) -> None:
    expect(hostile.result, {f"test_close_stdin_and_stdout[{env}]": "PASSED" for env in BOTH})
    _contained(hostile)


def test_protocol_looking_lines_on_stdout_are_not_protocol(hostile: Hostile) -> None:
    expect(hostile.result, {f"test_protocol_lines[{env}]": "PASSED" for env in BOTH})
    for env in BOTH:   # the forged 1 ns sample never reached the controller
        assert min(hostile.record("test_protocol_lines", env)["samples"]) > 1e-4, env
    # The forged lines may be quoted verbatim (a crashed agent's "last output" shows what the
    # bodies printed), but their message is never decoded into a fatal error of its own.
    summary = hostile.result.output.split("= hostperf =")[-1]
    decoded = [line for line in summary.splitlines()
               if "forged by the test body" in line and "@@hostperf@@" not in line]
    assert decoded == [], decoded
    _contained(hostile)


@pytest.mark.parametrize("test, words", [("test_os_exit", "code 3"),
                                         ("test_segfault", "signal 11 (SIGSEGV)")])
def test_a_body_that_kills_its_agent_fails_one_item_naming_the_environment(hostile: Hostile, test: str,
                                                                          words: str) -> None:
    expect(hostile.result, {f"{test}[{env}]": "FAILED" for env in BOTH})
    for env in BOTH:
        text = hostile.text(f"{test}[{env}]")
        assert f"environment '{env}': the agent crashed while running test_hostile.py::{test}" in text, text
        assert words in text, text
        if test == "test_segfault":   # faulthandler's report: the crashing line of the test
            assert "Fatal Python error: Segmentation fault" in text and f"in {test}" in text, text
    _contained(hostile)


def test_hostile_test_ids_and_project_path_never_reach_a_shell(hostile: Hostile) -> None:
    records = [r for r in hostile.report["results"] if "::test_hostile_id[" in r["item"]]
    assert len(records) == 4 * len(BOTH), [r["item"] for r in records]
    broken = [r["item"] for r in records if r.get("outcome") != "passed" or not r.get("samples")]
    assert broken == [], hostile.result.output[-8000:]
    assert not [p for p in hostile.project.path.parent.rglob("pwned")], "a word reached a shell"
    _contained(hostile)


def test_docker_kill_of_the_container_mid_test_fails_that_item_at_once(hostile: Hostile) -> None:
    expect(hostile.result, {"test_killed_from_outside[docker-bind]": "FAILED"})
    text = hostile.text("test_killed_from_outside[docker-bind]")
    assert f"the agent in container {hostile.killed} died" in text, text
    assert "killed by signal 9 (SIGKILL)" in text and "container status exited" in text, text
    assert "stopped from outside (docker kill/stop/rm, the OOM killer); the next test gets a fresh container" in text
    assert f"container {hostile.killed} is exited; starting a fresh one" in hostile.result.output
    assert hostile.result.elapsed_s < 300, "the killed test waited for --hostperf-timeout instead of failing at once"
    _contained(hostile)


def test_the_session_goes_on_after_every_hostile_body(hostile: Hostile) -> None:
    expect(hostile.result, {f"test_zz_after[{env}]": "PASSED" for env in BOTH})
    # Each crash restarted its agent once, the killed container once more; nothing else did
    # (closing fds, forged lines, output).
    for env, restarts in (("native", 2), ("docker", 3)):
        assert agent_restarts(hostile.result, env) == restarts, env
    assert hostile.result.ret == 1
    _contained(hostile)
