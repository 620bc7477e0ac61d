"""How ``--hostperf-against=HEAD`` does on this machine: A/A false alarms and injected slowdowns.

Makes a throwaway git repository with CPU-bound and file-I/O workloads whose cost is a
constant in the code (each scales linearly with it; sorting a reversed range, used
before 2026-12-01 11:10, did not: timsort finds the run, so +10% input cost ~6%),
commits it, then runs whole pytest sessions with ``--hostperf-against=HEAD``: A/A (the
working tree equals REV) and the constant raised by each slowdown in the working tree.
A condition ``0.05@0.02`` is a 5% slowdown judged with ``--hostperf-tolerance=2%``.
Counts the paired verdicts per condition, the intervals' widths and the pairs; the
ratio to native of docker items comes from the same sessions when ``--envs`` includes
docker. Appends its summary to ``benchmarks/results/paired-study.log``.

With ``--gates``, each round also runs, on the same tree in the same minutes, the two
gates people use without a paired comparison: the stored-baseline gate (a session
without ``--hostperf-against`` against baselines saved from three sessions of REV
before the rounds; its wall time is the cost reference) and pytest-benchmark's
``--benchmark-compare-fail=median:5%`` against a run of REV saved the same way.

    python3 benchmarks/paired_study.py --sessions 20 --slowdowns 0,0.03,0.05,0.05@0.02,0.1,0.2 --gates
    python3 benchmarks/paired_study.py --sessions 5 --slowdowns 0,0.1 --envs native,docker
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import studylog

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

WORK = """
import os
import tempfile

CPU = {cpu}
FILES = {files}

def spin(count):
    total = 0
    for i in range(count):
        total += i % 7
    return total

def cpu_loop():
    return spin(CPU)

def cpu_text():
    return len("".join(str(i % 1000) for i in range(CPU // 4)))

def file_io(directory):
    for i in range(FILES):
        with open(os.path.join(directory, f"f{{i}}"), "wb") as handle:
            handle.write(b"x" * 512)
    return sum(os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory))
"""

TESTS = """
from work import cpu_loop, cpu_text, file_io

def test_cpu_loop(benchmark):
    benchmark(cpu_loop)

def test_cpu_text(benchmark):
    benchmark(cpu_text)

def test_file_io(benchmark, tmp_path):
    benchmark(file_io, str(tmp_path))
"""

CPU, FILES = 20_000, 20
PYTHON = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=s@example.com", "-c", "user.name=study", *args], cwd=repo, check=True,
                   capture_output=True)


def write_work(repo: Path, slowdown: float) -> None:
    (repo / "work.py").write_text(WORK.format(cpu=round(CPU * (1 + slowdown)), files=round(FILES * (1 + slowdown))))


def run(repo: Path, args: list[str]) -> float:
    started = time.monotonic()
    subprocess.run([*PYTHON, *args], cwd=repo, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                   text=True, timeout=1800, check=False)
    return time.monotonic() - started


def hostperf_session(repo: Path, envs: str, extra: list[str]) -> tuple[list[dict], float]:
    report = repo / "report.json"
    report.unlink(missing_ok=True)
    wall = run(repo, ["--hostperf", f"--hostperf-envs={envs}", f"--hostperf-json={report}", *extra])
    return (json.loads(report.read_text())["results"] if report.exists() else []), wall


def benchmark_session(repo: Path) -> dict[str, bool]:
    """pytest-benchmark alone: which tests fail ``--benchmark-compare-fail=median:5%`` against REV's run."""
    report = repo / "benchmark.json"
    report.unlink(missing_ok=True)
    run(repo, ["--benchmark-storage=file://.benchmarks", "--benchmark-compare=0001",
               "--benchmark-compare-fail=median:5%", f"--benchmark-json={report}", "-rA"])
    if not report.exists():
        return {}
    # A failed comparison fails the session (exit 1) but not the test; the report has both
    # medians, so the rule is applied to them here exactly as pytest-benchmark does.
    saved = {b["fullname"]: b["stats"]["median"] for b in _saved_run(repo)["benchmarks"]}
    now = {b["fullname"]: b["stats"]["median"] for b in json.loads(report.read_text())["benchmarks"]}
    return {name: now[name] > saved[name] * 1.05 for name in now if name in saved}


def _saved_run(repo: Path) -> dict:
    [path] = (repo / ".benchmarks").rglob("0001_*.json")
    return json.loads(path.read_text())


def _slim(record: dict) -> dict:
    """A record without its samples (a session's are ~1 MB): what the summary counts."""
    return {key: record.get(key) for key in ("test", "env", "mount", "verdict", "reason", "median_s",
                                              "ratio_to_baseline", "ratio_to_native", "against")}


def condition(text: str) -> tuple[float, float | None]:
    """``0.05`` or ``0.05@0.02`` (slowdown, tolerance)."""
    slowdown, _, tolerance = text.partition("@")
    return float(slowdown), float(tolerance) if tolerance else None


def label(text: str) -> str:
    slowdown, tolerance = condition(text)
    return f"{slowdown:.0%}" + (f"@{tolerance:.0%}" if tolerance is not None else "")


def summarize(name: str, rows: list[dict], walls: list[float], plain: list[dict], plain_walls: list[float],
              benchmark: list[dict[str, bool]]) -> list[str]:
    lines = []
    for env in sorted({r["env"] for r in rows}):
        for kind in ("cpu", "file"):
            group = [r for r in rows if r["env"] == env and kind in r["test"] and r.get("against")
                     and r["against"].get("ratio")]
            if not group:
                continue
            verdicts = [r["against"]["verdict"] for r in group]
            widths = [r["against"]["ci"][1] / r["against"]["ci"][0] - 1 for r in group]
            ratios = [r["against"]["ratio"] for r in group]
            pairs = statistics.median(r["against"]["pairs"] for r in group)
            counts = " ".join(f"{v}={verdicts.count(v)}" for v in ("regression", "improvement", "pass",
                                                                   "inconclusive", "unstable") if v in verdicts)
            lines.append(f"{name:>7} {env:<7} {kind:<5} n={len(group):<3} {counts:<48} ratio median "
                         f"{statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}] CI width median "
                         f"{statistics.median(widths):.1%} pairs median {pairs:.0f}")
            stored = [r["verdict"] for r in plain if r["env"] == env and kind in r["test"]]
            if stored:
                lines.append(f"{'':>7} {env:<7} {kind:<5} stored-baseline gate: " + " ".join(
                    f"{v}={stored.count(v)}" for v in sorted(set(stored))))
            failed = [fails for verdicts in benchmark for test, fails in verdicts.items() if kind in test]
            if failed and env == "native":
                lines.append(f"{'':>7} {env:<7} {kind:<5} pytest-benchmark compare-fail=median:5%: "
                             f"{sum(failed)}/{len(failed)} failed")
        natives = [r["ratio_to_native"] for r in rows if r["env"] == env and r.get("ratio_to_native")]
        if natives and name == "0%":
            inside = sum(0.95 <= n["ratio"] <= 1.05 for n in natives)
            median = statistics.median(n["ratio"] for n in natives)
            lines.append(f"        {env:<7} ratio to native (paired): {inside}/{len(natives)} within 1.00+-0.05, "
                         f"median {median:.3f}")
    cost = (f", without --hostperf-against {statistics.median(plain_walls):.1f} s "
            f"({statistics.median(walls) / statistics.median(plain_walls):.2f}x)") if plain_walls else ""
    lines.append(f"        session wall time median {statistics.median(walls):.1f} s over {len(walls)} sessions{cost}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--slowdowns", default="0,0.05,0.1,0.2", help="conditions: 0.1, or 0.05@0.02 (tolerance)")
    parser.add_argument("--envs", default="native")
    parser.add_argument("--gates", action="store_true",
                        help="also the stored-baseline gate and pytest-benchmark's compare-fail, each round")
    parser.add_argument("--log", type=Path, default=HERE / "results" / "paired-study.log")
    parser.add_argument("--json", type=Path, help="also write every session's records here (raw, per condition)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest options, e.g. --hostperf-pair-budget=1")
    args = parser.parse_args()
    conditions = args.slowdowns.split(",")
    header = studylog.header("paired study", __file__)
    out = list(header)
    with tempfile.TemporaryDirectory(prefix="hostperf-study-") as temp:
        repo = Path(temp)
        (repo / "tests").mkdir()
        (repo / "tests" / "test_work.py").write_text(TESTS)
        (repo / "conftest.py").write_text("")
        (repo / ".gitignore").write_text("baselines/\n.benchmarks/\n*.json\n")
        write_work(repo, 0.0)
        git(repo, "init", "-q", ".")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "REV")
        if args.gates:  # what the other gates compare with: REV, saved before the rounds
            for _ in range(3):
                hostperf_session(repo, args.envs, ["--hostperf-save", *args.pytest_args])
            run(repo, ["--benchmark-storage=file://.benchmarks", "--benchmark-save=rev"])
        results = {c: ([], [], [], [], []) for c in conditions}
        for number in range(args.sessions):
            for text in conditions:  # conditions interleaved: the machine's hour hits all alike
                slowdown, tolerance = condition(text)
                extra = [f"--hostperf-tolerance={tolerance:.0%}"] if tolerance is not None else []
                write_work(repo, slowdown)
                rows, wall = hostperf_session(repo, args.envs, ["--hostperf-against=HEAD", *extra, *args.pytest_args])
                rows_of, walls, plain, plain_walls, benchmark = results[text]
                rows_of.extend(rows)
                walls.append(wall)
                note = ""
                if args.gates:
                    stored, plain_wall = hostperf_session(repo, args.envs, [*extra, *args.pytest_args])
                    plain.extend(stored)
                    plain_walls.append(plain_wall)
                    benchmark.append(benchmark_session(repo))
                    note = f", without against {plain_wall:.1f} s"
                print(f"session {number + 1} {label(text)}: {len(rows)} records in {wall:.1f} s{note}", flush=True)
        for text in conditions:
            out.extend(summarize(label(text), *results[text]))
        if args.json:
            args.json.write_text(json.dumps({
                "command": header[1] if len(header) > 1 else "", "conditions": {
                    label(text): {"against": [_slim(r) for r in rows], "walls": walls,
                                  "stored": [_slim(r) for r in plain], "plain_walls": plain_walls,
                                  "pytest_benchmark_failed": benchmark}
                    for text, (rows, walls, plain, plain_walls, benchmark) in results.items()}}, indent=1))
    studylog.finish(out, len(header), args.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
