"""pluggy 1.6.0's own benchmark suite under ``--hostperf``, as a new user would run it (issue #9).

Downloads pluggy's sdist (src layout, ``testing/benchmark.py``, ``tox.ini`` with
``filterwarnings = error``), installs the checkout editable in a throwaway venv with
pytest, pytest-benchmark and pytest-hostperf from this repository, then runs

    pytest testing/benchmark.py --hostperf --hostperf-envs=native,docker,qemu

in it and writes what it shows to ``benchmarks/results/pluggy-suite.log``: every item
with its median and ratio to native, and the checks of the issue: no skip, no error, a
ratio for every item outside native, no traceback at the end of the session, every
environment imported the checkout's ``src/pluggy`` with no module differing from native
(the report's module origins), and no test body failed (``overhead`` verdicts against
the default budgets are what a user sees, not a failure of the run). Exit status 0 only
when every check holds. Example:

    python3 benchmarks/pluggy_suite.py                       # native,docker,qemu
    python3 benchmarks/pluggy_suite.py --envs native,docker --keep /tmp/pluggy-suite
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PLUGGY = "pluggy==1.6.0"
FAST = ["--benchmark-max-time=0.1", "--benchmark-min-rounds=5", "-p", "no:cacheprovider"]


def sh(argv: list[str], cwd: Path | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited with {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done


def prepare(work: Path) -> tuple[Path, Path]:
    """pluggy's checkout (from its sdist) installed editable in a fresh venv: (python, checkout)."""
    sh([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", PLUGGY,
        "--dest", str(work)])
    [sdist] = work.glob("pluggy-*.tar.gz")
    with tarfile.open(sdist) as archive:
        archive.extractall(work, filter="data")
    checkout = work / sdist.name[: -len(".tar.gz")]
    python = work / "venv" / "bin" / "python"
    sh([sys.executable, "-m", "venv", str(work / "venv")])
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    sh([*pip, "-e", str(checkout), "pytest", "pytest-benchmark"], timeout=1800)
    sh([*pip, "-e", str(ROOT)], timeout=1800)
    return python, checkout


def run_suite(python: Path, checkout: Path, envs: str, report: Path, extra: list[str]) -> tuple[list[str], str, int]:
    require = ",".join(e for e in envs.split(",") if e != "native")
    argv = [str(python), "-m", "pytest", "testing/benchmark.py", *FAST, "--hostperf", f"--hostperf-envs={envs}",
            f"--hostperf-json={report}", *([f"--hostperf-require={require}"] if require else []), *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    done = subprocess.run(argv, cwd=checkout, env=env, capture_output=True, text=True, timeout=7200, check=False)
    return argv, done.stdout + done.stderr, done.returncode


def checks(data: dict[str, Any], output: str, code: int) -> list[tuple[str, bool, str]]:
    """(what, holds, detail) for each requirement of the issue."""
    records = data.get("results", [])
    skipped = [r["item"] for r in records if r["outcome"] == "skipped"]
    errors = [r["item"] for r in records if r["outcome"] not in ("passed", "skipped")]
    outside = [r for r in records if r["env"] != "native"]
    no_ratio = [r["item"] for r in outside if not r.get("ratio_to_native")]
    traceback = "Traceback (most recent call last)" in output
    verified, detail = _same_code(data.get("environments", {}))
    verdicts = sorted({r["verdict"] for r in records if r.get("verdict") not in (None, "pass", "no-baseline")})
    return [
        ("items measured", bool(records), f"{len(records)} records"),
        ("no skip", not skipped, ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")),
        ("no error", not errors, ", ".join(errors[:5]) + (" ..." if len(errors) > 5 else "")),
        ("a ratio to native for every item outside native", bool(outside) and not no_ratio,
         f"{len(outside) - len(no_ratio)} of {len(outside)}"),
        ("no traceback at the end of the session", not traceback, "traceback in the output" if traceback else ""),
        ("every environment imported the checkout's src/pluggy, nothing differs from native", verified, detail),
        ("pytest exit status 0, or 1 from verdicts only", code == 0 or (code == 1 and not errors),
         f"exit status {code}" + (f" (verdicts: {', '.join(verdicts)})" if verdicts else "")),
    ]


def _same_code(environments: dict[str, Any]) -> tuple[bool, str]:
    """From each environment's module report and its mismatches with native (the report's ``code``)."""
    problems = []
    for env, report in environments.items():
        code = report.get("code") or {}
        pluggy = (code.get("modules") or {}).get("pluggy") or {}
        if (pluggy.get("origin"), pluggy.get("path")) != ("project", "src/pluggy/__init__.py"):
            problems.append(f"{env}: pluggy from {pluggy.get('path') or 'nowhere reported'}")
        problems += [f"{env}: module {m['module']} differs ({m['kind']})" for m in code.get("mismatches") or []]
    if not environments:
        problems.append("no environment in the report")
    return not problems, "; ".join(problems) or f"src/pluggy in {', '.join(environments)}; no mismatch"


def table(records: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'test':<58} {'env':<8} {'median':>10} {'vs native [CI]':<22} {'outcome':<8} verdict"]
    for r in sorted(records, key=lambda r: (r["test"], r["env"] != "native", r["env"])):
        ratio = r.get("ratio_to_native") or {}
        shown = f"{ratio['ratio']:.2f}x [{ratio['ci_low']:.2f}, {ratio['ci_high']:.2f}]" if ratio else "-"
        median = f"{r['median_s'] * 1e6:.1f} us" if r.get("median_s") else "-"
        lines.append(f"{r['test'].split('::')[-1]:<58} {r['env']:<8} {median:>10} {shown:<22} "
                     f"{r['outcome']:<8} {r.get('verdict') or '-'}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", default="native,docker,qemu")
    parser.add_argument("--log", type=Path, default=ROOT / "benchmarks" / "results" / "pluggy-suite.log")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temporary one)")
    parser.add_argument("--pytest-args", default="", help="extra arguments for the suite's pytest (split on spaces)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="pluggy-suite-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        python, checkout = prepare(work)
        report = work / "report.json"
        argv, output, code = run_suite(python, checkout, args.envs, report, args.pytest_args.split())
        data = json.loads(report.read_text()) if report.exists() else {}
        records = data.get("results", [])
        results = checks(data, output, code)
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
        lines = [f"# pluggy 1.6.0 benchmark suite under pytest-hostperf ({commit}, "
                 f"{datetime.datetime.now().isoformat(timespec='minutes')})",
                 f"$ {' '.join(['pytest', *argv[3:]])}    (in pluggy's checkout, installed editable in a fresh venv)",
                 "", *table(records), "",
                 *[f"{'PASS' if ok else 'FAIL'}  {what}" + (f": {detail}" if detail else "")
                   for what, ok, detail in results],
                 "", "--- last lines of the session's output ---", *output.splitlines()[-60:]]
        args.log.parent.mkdir(parents=True, exist_ok=True)
        args.log.write_text("\n".join(lines) + "\n")
        print("\n".join(lines[: len(records) + 4 + len(results)]))
        print(f"log: {args.log}")
        return 0 if all(ok for _, ok, _ in results) else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
