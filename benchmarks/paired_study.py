"""How ``--hostperf-against=HEAD`` does on this machine: A/A false alarms and injected slowdowns.

Makes a throwaway git repository with CPU-bound and file-I/O workloads whose cost is a
constant in the code, commits it, then runs whole pytest sessions with
``--hostperf-against=HEAD``: A/A (the working tree equals REV) and the constant raised
by each slowdown in the working tree. Counts the paired verdicts per condition, the
intervals' widths and the pairs; the ratio to native of docker items comes from the same
sessions when ``--envs`` includes docker. Appends its summary to
``benchmarks/results/paired-study.log``.

    python3 benchmarks/paired_study.py --sessions 5 --slowdowns 0,0.05,0.1,0.2
    python3 benchmarks/paired_study.py --sessions 3 --slowdowns 0,0.1 --envs native,docker
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

def cpu_sort():
    return sorted(range(CPU // 4, 0, -1))[0]

def file_io(directory):
    for i in range(FILES):
        with open(os.path.join(directory, f"f{{i}}"), "wb") as handle:
            handle.write(b"x" * 512)
    return sum(os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory))
"""

TESTS = """
from work import cpu_loop, cpu_sort, file_io

def test_cpu_loop(benchmark):
    benchmark(cpu_loop)

def test_cpu_sort(benchmark):
    benchmark(cpu_sort)

def test_file_io(benchmark, tmp_path):
    benchmark(file_io, str(tmp_path))
"""

CPU, FILES = 20_000, 20


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=s@example.com", "-c", "user.name=study", *args], cwd=repo, check=True,
                   capture_output=True)


def write_work(repo: Path, slowdown: float) -> None:
    (repo / "work.py").write_text(WORK.format(cpu=round(CPU * (1 + slowdown)), files=round(FILES * (1 + slowdown))))


def session(repo: Path, envs: str, extra: list[str]) -> tuple[list[dict], float]:
    report = repo / "report.json"
    report.unlink(missing_ok=True)
    started = time.monotonic()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--hostperf",
                    f"--hostperf-envs={envs}", "--hostperf-against=HEAD", f"--hostperf-json={report}", *extra],
                   cwd=repo, env=env, capture_output=True, text=True, timeout=1800, check=False)
    wall = time.monotonic() - started
    return (json.loads(report.read_text())["results"] if report.exists() else []), wall


def summarize(slowdown: float, rows: list[dict], walls: list[float]) -> list[str]:
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
            lines.append(f"{slowdown:>5.0%} {env:<7} {kind:<5} n={len(group):<3} {counts:<48} ratio median "
                         f"{statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}] CI width median "
                         f"{statistics.median(widths):.1%} pairs median {pairs:.0f}")
        natives = [r["ratio_to_native"] for r in rows if r["env"] == env and r.get("ratio_to_native")]
        if natives and slowdown == 0:
            inside = sum(0.95 <= n["ratio"] <= 1.05 for n in natives)
            lines.append(f"      {env:<7} ratio to native (paired): {inside}/{len(natives)} within 1.00+-0.05, median "
                         f"{statistics.median(n['ratio'] for n in natives):.3f}")
    lines.append(f"      session wall time median {statistics.median(walls):.1f} s over {len(walls)} sessions")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--slowdowns", default="0,0.05,0.1,0.2")
    parser.add_argument("--envs", default="native")
    parser.add_argument("--log", type=Path, default=HERE / "results" / "paired-study.log")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest options, e.g. --hostperf-pair-budget=1")
    args = parser.parse_args()
    slowdowns = [float(s) for s in args.slowdowns.split(",")]
    header = [f"# paired study, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
              f"# command: python3 benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}",
              f"# load before: {os.getloadavg()[0]:.1f}"]
    print("\n".join(header), flush=True)
    out = list(header)
    with tempfile.TemporaryDirectory(prefix="hostperf-study-") as temp:
        repo = Path(temp)
        (repo / "tests").mkdir()
        (repo / "tests" / "test_work.py").write_text(TESTS)
        (repo / "conftest.py").write_text("")
        write_work(repo, 0.0)
        git(repo, "init", "-q", ".")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "REV")
        results: dict[float, tuple[list[dict], list[float]]] = {s: ([], []) for s in slowdowns}
        for number in range(args.sessions):
            for slowdown in slowdowns:  # conditions interleaved: the machine's hour hits all alike
                write_work(repo, slowdown)
                rows, wall = session(repo, args.envs, args.pytest_args)
                results[slowdown][0].extend(rows)
                results[slowdown][1].append(wall)
                print(f"session {number + 1} slowdown {slowdown:.0%}: {len(rows)} records in {wall:.1f} s", flush=True)
        for slowdown in slowdowns:
            out.extend(summarize(slowdown, *results[slowdown]))
    out.append(f"# load after: {os.getloadavg()[0]:.1f}")
    print("\n".join(out[len(header):]))
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with args.log.open("a") as log:
        log.write("\n".join(out) + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
