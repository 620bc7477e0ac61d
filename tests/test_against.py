"""``--hostperf-against=REV`` end to end: a throwaway git repository, real native agents.

REV's code is a constant in the code (a loop count), so a change is known exactly; the
assertions are the mechanism (which side is slower, by roughly how much, the verdicts
and reasons), never a host speed.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pytest_hostperf import revision

FAST = ["-p", "no:cacheprovider", "--benchmark-max-time=0.05", "--benchmark-min-rounds=5"]

WORK = """
def spin(count):
    total = 0
    for i in range(count):
        total += i % 7
    return total

COST = {cost}

def changed():
    return spin(COST)

def same():
    return spin(3000)
"""

TESTS = """
from {package}.work import changed, same

def test_changed(benchmark):
    benchmark(changed)

def test_same(benchmark):
    benchmark(same)

def test_broken(benchmark):
    assert {broken_ok}, "broken at this revision"
    benchmark(same)
"""

NEW_TEST = """

def test_new(benchmark):
    benchmark(same)
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.strip()


def make_repo(root: Path, src_layout: bool, rev_cost: int, tree_cost: int) -> Path:
    """A project committed with ``rev_cost``, then changed in the working tree to ``tree_cost``."""
    package = (root / "src" / "pkg") if src_layout else (root / "pkg")
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (root / "tests").mkdir()
    (package / "work.py").write_text(WORK.format(cost=rev_cost))
    (root / "tests" / "test_w.py").write_text(TESTS.format(package="pkg", broken_ok="False"))
    git(root, "init", "-q", ".")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "REV")
    (package / "work.py").write_text(WORK.format(cost=tree_cost))  # uncommitted: the point
    (root / "tests" / "test_w.py").write_text(TESTS.format(package="pkg", broken_ok="True") + NEW_TEST)
    return package


def run(pytester: pytest.Pytester, *args: str, env: dict[str, str] | None = None) -> tuple[Any, dict[str, Any]]:
    report = pytester.path / "r.json"
    if env:
        for key, value in env.items():
            pytester._monkeypatch.setenv(key, value)
    result = pytester.runpytest_subprocess(*FAST, "--hostperf", "--hostperf-against=HEAD",
                                           "--hostperf-pair-budget=1.5", f"--hostperf-json={report}", *args,
                                           timeout=600)
    rows = {r["item"].split("::")[-1]: r for r in json.loads(report.read_text())["results"]} if report.exists() else {}
    return result, rows


def checkouts() -> set[Path]:
    root = revision.checkouts_root()
    return set(root.iterdir()) if root.is_dir() else set()


def test_an_improvement_since_rev_is_proven_and_unchanged_code_passes(pytester: pytest.Pytester) -> None:
    # REV 3x slower: a margin for this shared machine, where under load a batch of pairs
    # can read near 1 and the drift guard then widens the interval (measured: 2x read
    # `unstable` once, batches 0.31-0.91).
    make_repo(pytester.path, src_layout=False, rev_cost=9000, tree_cost=3000)
    before = checkouts()
    result, rows = run(pytester, "-v")
    assert result.ret == 0, result.stdout.str()
    sha = git(pytester.path, "rev-parse", "HEAD")
    changed = rows["test_changed[native]"]
    assert changed["against"]["rev"] == sha and changed["verdict"] == "improvement", changed["against"]
    assert 0.15 < changed["against"]["ratio"] < 0.7 and changed["against"]["ci"][1] < 1 / 1.05
    assert changed["against"]["pairs"] >= 40 and "gates, --hostperf-against" in changed["reason"]
    same = rows["test_same[native]"]
    assert same["against"]["verdict"] not in ("regression", "improvement"), same["against"]
    assert same["against"]["ci"][0] < 1.05 and same["against"]["ci"][1] > 1 / 1.05
    new = rows["test_new[native]"]
    assert new["verdict"] == "no-baseline" and new["against"]["error"] == "absent"
    assert f"not at REV {sha[:12]}: added since" in new["reason"]
    broken = rows["test_broken[native]"]
    assert broken["outcome"] == "passed" and broken["verdict"] == "no-baseline"
    assert f"fails at REV {sha[:12]}" in broken["reason"] and "broken at this revision" in broken["against"]["error"]
    result.stdout.fnmatch_lines(["*vs REV*"])
    # REV's tree is removed at the end (other sessions on the machine may have theirs).
    assert not [path for path in checkouts() - before if path.name.startswith(sha[:12])]


def test_a_regression_since_rev_fails_and_rev_imports_its_own_src_layout(pytester: pytest.Pytester) -> None:
    # The working tree's src/ is on PYTHONPATH, as an installed (pip install -e) project
    # would be: REV's agent must still import REV's code (its own roots come first).
    package = make_repo(pytester.path, src_layout=True, rev_cost=3000, tree_cost=9000)
    # With ASLR kept, a proven change is measured again by fresh agents (as in docker and
    # over ssh); without it (the native default) fresh agents would land where these did.
    result, rows = run(pytester, "--hostperf-keep-aslr", env={"PYTHONPATH": os.pathsep.join(
        [str(package.parent), os.environ.get("PYTHONPATH", "")])})
    assert result.ret == 1, result.stdout.str()
    changed = rows["test_changed[native]"]
    assert changed["verdict"] == "regression" and 1.5 < changed["against"]["ratio"] < 6, changed["against"]
    assert "repeated by fresh agents: " in changed["reason"]   # a proven change is measured again
    result.stdout.fnmatch_lines(["*hostperf regression*vs * (gates, --hostperf-against)*"])


def test_a_revision_that_does_not_resolve_is_a_usage_error_with_the_fix(pytester: pytest.Pytester) -> None:
    make_repo(pytester.path, src_layout=False, rev_cost=3000, tree_cost=3000)
    result = pytester.runpytest_subprocess(*FAST, "--hostperf", "--hostperf-against=no-such-branch", timeout=120)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--hostperf-against: 'no-such-branch' does not name a commit*", "*fix: *"])


def test_no_git_repository_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x(benchmark):\n    benchmark(sum, [1])\n")
    result = pytester.runpytest_subprocess(*FAST, "--hostperf", "--hostperf-against=HEAD", timeout=120)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*is not a git repository*", "*fix: *git init*"])


def test_a_change_that_fresh_agents_do_not_repeat_is_inconclusive() -> None:
    from pytest_hostperf import pairing
    from pytest_hostperf.run.against import _repeated

    def estimate(ratio: float, low: float, high: float) -> pairing.PairedEstimate:
        return pairing.PairedEstimate(ratio, low, high, 0.99, 0.99, 1e-9, 1.0, 180, 0.03, "test")

    first = pairing.judge(estimate(0.908, 0.899, 0.919), 0.05, against="abc")
    assert first.verdict == "improvement"
    gone = _repeated(first, estimate(1.002, 0.99, 1.01), 0.05, "abc")
    assert gone.verdict == "inconclusive" and "0.908x abc" in gone.reason and "1.002x" in gone.reason
    assert "came with the processes" in gone.reason
    kept = _repeated(first, estimate(0.95, 0.94, 0.96), 0.05, "abc")   # beyond half the tolerance: it repeats
    assert kept.verdict == "improvement" and "repeated by fresh agents: 0.950x" in kept.reason
    slower = pairing.judge(estimate(1.10, 1.08, 1.12), 0.05, against="abc")
    assert _repeated(slower, estimate(1.02, 1.0, 1.04), 0.05, "abc").verdict == "inconclusive"
    assert _repeated(slower, estimate(1.09, 1.07, 1.11), 0.05, "abc").verdict == "regression"
