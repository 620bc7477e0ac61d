"""Faults of the baselines directory: damaged files, a full disk, a read-only directory.

Real sessions (native agent) against a baseline a real session saved on this machine.
An unreadable file fails every item of its environment, names the file, the key and the
fix, and is never rewritten; a save that cannot be written is an error after the
reports, and no baseline file changes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from faultkit import BaselineSnapshot, FaultProject, expect, leftovers

pytestmark = pytest.mark.faults

SLEEPY = """
import time

def test_sleepy(benchmark):
    benchmark(time.sleep, 0.002)

def test_steady(benchmark):
    benchmark(time.sleep, 0.002)
"""
ITEMS = ("test_sleepy[native]", "test_steady[native]")


@pytest.fixture(scope="module")
def saved_baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(file name, text) of the baseline one real ``--hostperf-save`` session wrote here."""
    made = FaultProject(tmp_path_factory.mktemp("saved") / "project")
    try:
        made.write("test_sleepy.py", SLEEPY)
        result = made.run("--hostperf-save")
        assert result.ret == 0, result.output
        (path,) = made.baselines.glob("native-*.json")
        return path.name, path.read_text()
    finally:
        made.cleanup()


def _first_session(data: dict[str, Any]) -> dict[str, Any]:
    return data["benchmarks"]["test_sleepy.py::test_sleepy"]["-"][0]


def _edit(change: Callable[[dict[str, Any]], None]) -> Callable[[str], str]:
    """A hand edit of the parsed file, written back as an editor would (indented JSON)."""
    def damage(text: str) -> str:
        data = json.loads(text)
        change(data)
        return json.dumps(data, indent=2)
    return damage


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda data: _first_session(data).__setitem__(key, value)


#: damage -> (how the file is damaged, what the item's text must say about it, the fix it names).
#: One session each (about 15 s here). NaN stands for every impossible hand-edited value:
#: zero, negative, infinite, text for a number, another tool's file, containers of the
#: wrong kind take the same path (read error -> the gate is off -> the items fail, the
#: file is kept) and are read by read_baseline directly in tests/test_baselines.py.
DAMAGES: dict[str, tuple[Callable[[str], str], str, str]] = {
    "merge-conflicted": (lambda t: f"<<<<<<< HEAD\n{t}=======\n{t}>>>>>>> main\n",
                         "has unresolved git merge-conflict markers (line 1)", "git checkout --theirs"),
    "truncated": (lambda t: t[: len(t) // 2], "is not valid JSON (line", "git checkout --"),
    "newer-schema": (lambda t: t.replace('"schema_version": 1', '"schema_version": 2'),
                     "has schema_version 2; this pytest-hostperf reads 1", "use the pytest-hostperf version"),
    "nan": (_edit(_set("median_s", float("nan"))), "[0].median_s is nan; expected a positive finite number",
            "correct the hand edit"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_baseline_fails_the_run_names_it_and_is_never_rewritten(
        project: FaultProject, saved_baseline: tuple[str, str], damage: str) -> None:
    name, text = saved_baseline
    how, problem, fix = DAMAGES[damage]
    project.write("test_sleepy.py", SLEEPY)
    project.baselines.mkdir()
    path = project.baselines / name
    path.write_text(how(text))
    before = BaselineSnapshot.take(project.baselines)

    result = project.run("--hostperf-save")

    assert result.ret == 1, result.output
    expect(result, dict.fromkeys(ITEMS, "FAILED"))
    for item in ITEMS:
        section = result.failure_text(item)
        assert f"the gate is off for this item: baseline file {path}: " in section, section
        assert problem in section and fix in section, section
    result.lines.fnmatch_lines(["*2 failing item(s) not saved*"])
    assert before.changed() == [], "a file hostperf cannot read was rewritten"
    assert leftovers(project) == []


# -- a save that cannot be written ----------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs for the baselines (root only), outside the project."""
    mount = tmp_path / "baselines"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def _fill(directory: Path) -> None:
    """Write a filler file until the filesystem has no block left."""
    with open(directory / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"x" * 1024)
        except OSError:
            pass


@pytest.mark.parametrize("fault", ["full-disk", "read-only"])
def test_a_save_that_cannot_be_written_is_an_error_after_the_reports_and_changes_nothing(
        project: FaultProject, small_tmpfs: Path, fault: str) -> None:
    project.write("test_sleepy.py", SLEEPY)
    where = f"--hostperf-baselines={small_tmpfs}"
    assert project.run("--hostperf-save", where).ret == 0
    if fault == "full-disk":
        _fill(small_tmpfs)
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    before = BaselineSnapshot.take(small_tmpfs)
    report = project.path / "report.json"

    result = project.run("--hostperf-save", where, f"--hostperf-json={report}")

    assert result.ret == 1, result.output
    expect(result, dict.fromkeys(ITEMS, "PASSED"))   # the tests are fine; the save is the error
    errno_text = "No space left on device" if fault == "full-disk" else "Read-only file system"
    result.lines.fnmatch_lines([f"hostperf: ERROR: baselines NOT saved to {small_tmpfs}: *{errno_text}*"
                                "No baseline file was changed*"])
    assert len(json.loads(report.read_text())["results"]) == 2   # the reports were written first
    assert before.changed() == []
    assert not [p for p in small_tmpfs.iterdir() if p.name not in before.files], "a temporary file was left"
    assert leftovers(project) == []
