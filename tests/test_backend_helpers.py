"""The backends' shared helpers: labels (who owns what), processes, shipping, the line cap.

Real processes and files, no engine: these are the pieces every sweep and transport
stands on.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import socket
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from pytest_hostperf.agent import protocol
from pytest_hostperf.environments import labels, ship
from pytest_hostperf.environments.base import LineBuffer, LineTooLong
from pytest_hostperf.environments.labels import Liveness, Owner
from pytest_hostperf.environments.pipe import PipeTransport
from pytest_hostperf.environments.process import (
    process_alive,
    process_start,
    spawn,
    spawn_piped,
    stop_process,
    tail_file,
    tail_lines,
)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------- labels

def test_owner_labels_round_trip_and_reject_malformed_values() -> None:
    here = Owner.current()
    assert here.pid == os.getpid() and here.host == socket.gethostname()
    assert Owner.from_labels(here.labels()) == here
    assert labels.owner_labels("abc123")[labels.SESSION] == "abc123"
    for bad in ({}, {labels.PID: "12x", labels.HOST: "h"}, {labels.PID: "0", labels.HOST: "h"},
                {labels.PID: "12", labels.HOST: ""}, {labels.PID: ["12"], labels.HOST: "h"}):
        assert Owner.from_labels(bad) is None, bad
        assert labels.gone(bad) is False   # what cannot be read is never removed


def test_liveness_tells_the_cases_apart() -> None:
    here = Owner.current()
    assert here.liveness(here) is Liveness.ALIVE
    assert dataclasses.replace(here, pid=_dead_pid(), started=None).liveness(here) is Liveness.DEAD
    # The pid runs, but it is a younger process than the one that made the resource.
    assert dataclasses.replace(here, started="t1").liveness(here) is Liveness.DEAD
    assert dataclasses.replace(here, host=here.host + "-other").liveness(here) is Liveness.UNKNOWN
    assert dataclasses.replace(here, boot_id="another-boot").liveness(here) is Liveness.OTHER_BOOT


def test_a_controller_in_another_pid_namespace_is_never_judged_dead() -> None:
    # Issue 8.14: two controllers with one host name in different pid namespaces. The
    # other one's pid does not exist here, which used to read as "dead".
    here = Owner.current()
    elsewhere = dataclasses.replace(here, pid=_dead_pid(), pid_ns="pid:[1]", started=None)
    assert elsewhere.liveness(here) is Liveness.UNKNOWN
    assert labels.gone(elsewhere.labels(), here) is False


def test_session_ids_from_disk_must_be_well_formed() -> None:
    for good in ("e", "0a1b2c3d4e5f", "test-abc_1.2"):
        assert labels.valid_session_id(good)
    for bad in ("", "-e", ".e", "a b", "a,b", "a/b", "x" * 65, 7, None):
        assert not labels.valid_session_id(bad), bad


def test_temp_dirs_of_gone_sessions_are_swept_and_nothing_else(tmp_path: Path) -> None:
    here = Owner.current()

    def claimed(name: str, owner: Owner | None) -> Path:
        directory = tmp_path / name
        directory.mkdir()
        (directory / "payload").write_text("x")
        if owner is not None:
            (directory / labels.OWNER_FILE).write_text(json.dumps({labels.SESSION: "s1", **owner.labels()}))
        return directory

    dead = claimed("hostperf-dead", dataclasses.replace(here, pid=_dead_pid(), started=None))
    live = claimed("hostperf-live", here)
    unowned = claimed("hostperf-unowned", None)
    other_name = claimed("other-dead", dataclasses.replace(here, pid=_dead_pid(), started=None))
    assert labels.sweep_temp_dirs(tmp_path) == [dead]
    assert live.is_dir() and unowned.is_dir() and other_name.is_dir() and not dead.exists()


def test_owned_temp_dir_is_private_and_removed(tmp_path: Path) -> None:
    with labels.owned_temp_dir("unit") as directory:
        assert directory.name.startswith("hostperf-unit-")
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert labels.read_owner_file(directory / labels.OWNER_FILE)[1] == Owner.current()  # type: ignore[index]
    assert not directory.exists()


# --------------------------------------------------------------------------- processes

GRANDCHILD = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


def test_stop_process_ends_the_whole_group() -> None:
    proc = spawn([sys.executable, "-c", GRANDCHILD], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    grandchild = int(proc.stdout.readline())
    assert process_alive(grandchild)
    stop_process(proc, grace=0.5)
    deadline = time.monotonic() + 5
    while process_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.returncode is not None and not process_alive(grandchild)
    stop_process(proc)  # idempotent


def test_stop_process_gives_sigterm_a_chance() -> None:
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
            "print('ready', flush=True)\ntime.sleep(60)\n")
    proc = spawn([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    stop_process(proc, grace=5)
    assert proc.returncode == 7


def test_zombies_are_dead_and_start_times_tell_processes_apart() -> None:
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)
    assert not process_alive(zombie.pid)
    zombie.wait()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert process_start(sleeper.pid) not in (None, process_start(os.getpid()))
        assert process_start(sleeper.pid) == process_start(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_tails(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("".join(f"line {i}\r\n" for i in range(100)))
    assert tail_file(log, 2) == "line 98\nline 99"
    assert tail_file(tmp_path / "missing") == ""
    assert tail_lines("a\n\nb\n  \nc", 2) == "b\nc"


# --------------------------------------------------------------------------- line cap

def test_line_buffer_joins_chunks_and_caps_a_line() -> None:
    buffer = LineBuffer(limit=64)
    buffer.feed(protocol.PREFIX + b'{"a"')
    buffer.feed(b":1}\nnoise\n" + protocol.PREFIX)
    assert buffer.pop() == protocol.PREFIX + b'{"a":1}\n' and buffer.pop() is None
    assert buffer.tail_text() == "noise"
    with pytest.raises(LineTooLong, match="longer than 64 bytes"):
        for _ in range(10):
            buffer.feed(b"x" * 10)   # no newline: the pending line must not grow without bound
    buffer.feed(b"ok\n")             # the channel is dropped by the caller; the buffer stays usable


FLOOD = r"""
import sys
sys.stdout.buffer.write(b"@@hostperf@@ " + b"x" * (3 << 20) + b"\n")
sys.stdout.flush()
"""


def test_an_agent_flooding_one_line_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "MAX_LINE_BYTES", 1 << 20)
    transport = PipeTransport(spawn_piped([sys.executable, "-c", FLOOD], env=dict(os.environ)))
    try:
        with pytest.raises(LineTooLong, match="longer than 1 MiB"):
            transport.read_line(time.monotonic() + 30)
    finally:
        transport.close()


# --------------------------------------------------------------------------- shipping

def _project(root: Path) -> Path:
    for rel, content in (("test_a.py", "x"), ("pkg/mod.py", "y"), ("data/keep.txt", "kept"),
                         (".git/HEAD", "ref"), ("pkg/__pycache__/m.pyc", ""), ("stale.pyc", ""),
                         ("venv2/pyvenv.cfg", "home = /usr"), ("node_modules/x.js", "")):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    (root / "link").symlink_to("data")
    return root


def test_shipment_leaves_junk_home_and_is_the_same_as_tar_and_copy(tmp_path: Path) -> None:
    project = _project(tmp_path / "proj")
    names = [name for _, name in ship.members(project, skip=[project / "data"])]
    assert "project/test_a.py" in names and "project/pkg/mod.py" in names
    assert "project/link" in [name for _, name in ship.members(project)]
    assert "agent/pytest_hostperf/agent/boot.py" in names
    for junk in (".git", "__pycache__", "stale.pyc", "venv2", "node_modules", "data/keep.txt"):
        assert not any(junk in name for name in names), junk
    stream = io.BytesIO()
    written, files = ship.write_tar(stream, ship.members(project), empty_dirs=["hostperf-dir"],
                                    extra_files={"owner.json": b"{}"})
    assert written == len(stream.getvalue()) and files > 3
    stream.seek(0)
    with tarfile.open(fileobj=stream) as archive:
        tarred = {m.name: m for m in archive.getmembers()}
    assert tarred["project/link"].issym() and tarred["hostperf-dir"].isdir()
    assert tarred["owner.json"].size == 2 and tarred["project/test_a.py"].uid == 0
    copied = tmp_path / "copy"
    ship.copy_to(copied, ship.members(project))
    assert (copied / "project" / "data" / "keep.txt").read_text() == "kept"
    assert (copied / "project" / "link").is_symlink()
    copied_files = {str(p.relative_to(copied)) for p in copied.rglob("*") if p.is_symlink() or p.is_file()}
    assert copied_files == {name for name, m in tarred.items() if not m.isdir() and name != "owner.json"}


def test_human_size() -> None:
    assert ship.human_size(512) == "512 B"
    assert ship.human_size(1536) == "1.5 KB"
    assert ship.human_size(3 * 1024 ** 3) == "3.0 GB"


def test_signals_are_ours_to_send() -> None:
    # spawn() puts the child in its own session: a Ctrl-C in the terminal is not its.
    proc = spawn([sys.executable, "-c", "import os; print(os.getsid(0))"], stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert int(out) == proc.pid != os.getsid(0)
