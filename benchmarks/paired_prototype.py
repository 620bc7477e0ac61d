"""Paired comparisons on this machine's real noise, without the plugin (issue #10).

Two worker processes (benchmarks/paired_worker.py, stdlib subprocess + pipes) hold code A
and code B of a few CPU-bound workloads whose cost is a constant in the code. Each
comparison times ``--pairs`` pairs of ~``--round-ms`` rounds, A and B in random order
within each pair (:class:`pytest_hostperf.pairing.PairSchedule`), and judges them with
:mod:`pytest_hostperf.pairing`. Experiments (``--experiments``):

* ``detect``: per session fresh workers; A/A (two processes of identical code) and B = A
  with the constant raised by 3/5/10/20%; verdicts at 5% and 2% tolerance; the
  Wilcoxon interval beside a moving-block bootstrap of the same pairs (is the interval
  too narrow when the pairs drift together?) and the lag-1 autocorrelation of the pairs.
* ``sweep``: the round length at a fixed time budget (rounds of 1 to 50 ms).
* ``pinning``: A/A, 10% and docker vs native with the workers free to move between CPUs,
  and with all confined to the same CPU (do identical processes differ because of where
  they run?).
* ``overhead``: the ratio to "native" measured today's way (3 blocks, bootstrap of the
  pooled rounds' medians, stats.ratio_of_medians) and paired, on the same workers:
  native vs native and, with ``--docker-image``, native vs the same code in a container.

The machine is shared: ``uptime`` is logged around each experiment. Example:

    python3 benchmarks/paired_prototype.py --sessions 20 --docker-image hostperf-project:TAG
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from pytest_hostperf import pairing, stats  # noqa: E402

WORKLOADS = ("arith", "strings", "dicts")
BASE_SIZE = 2000
SLOWDOWNS = (0.0, 0.03, 0.05, 0.10, 0.20)
ALPHA = 0.01  # family-wise, over the workloads of one session (Bonferroni), as the plugin does
BOOT_BLOCK = 10  # pairs per bootstrap block: ~0.1 s, the length of the machine's longer phases


class Worker:
    """One worker process; ``time(n)`` asks it to time n calls of its workload."""

    def __init__(self, argv: list[str], name: str | None = None) -> None:
        self.name = name  # the container's name, to remove it if the worker dies
        self.last_cpu = 0.0
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def time(self, iterations: int, command: str = "run") -> float:
        """Wall-clock seconds of ``iterations`` calls (of the probe with ``command="probe"``);
        their CPU seconds go to ``last_cpu``."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{command} {iterations}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.process.args!r} exited with {self.process.wait()}")
        wall, self.last_cpu = (float(field) for field in line.split())
        return wall

    def close(self) -> None:
        try:
            assert self.process.stdin is not None
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
            self.process.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        if self.name:
            subprocess.run(["docker", "rm", "-f", self.name], capture_output=True, check=False)


def native(workload: str, size: int, cpu: int | None = None) -> Worker:
    """A worker process here; with ``cpu``, confined to that CPU (both sides on one core)."""
    worker = Worker([sys.executable, str(HERE / "paired_worker.py"), workload, str(size)])
    if cpu is not None:
        os.sched_setaffinity(worker.process.pid, {cpu})
    return worker


def in_docker(image: str, cpu: int | None = None) -> Callable[[str, int], Worker]:
    """Workers in containers of ``image``; with ``cpu``, confined to that CPU (--cpuset-cpus)."""
    def start(workload: str, size: int) -> Worker:
        name = f"paired-prototype-{os.getpid()}-{time.monotonic_ns()}"
        pinned = ["--cpuset-cpus", str(cpu)] if cpu is not None else []
        return Worker(["docker", "run", "--rm", "-i", "--name", name, "--network", "none", *pinned,
                       "--label", f"paired-prototype={os.getpid()}", "-v", f"{HERE}:/bench:ro",
                       image, "python3", "/bench/paired_worker.py", workload, str(size)], name)
    return start


def calibrate(worker: Worker, round_seconds: float, command: str = "run") -> int:
    """Calls per round so that a round lasts about ``round_seconds`` (median of 5 tries)."""
    iterations = 1
    while (took := worker.time(iterations, command)) < round_seconds / 10:
        iterations *= 2
    iterations = max(1, round(iterations * round_seconds / took))
    tries = sorted(worker.time(iterations, command) for _ in range(5))
    return max(1, round(iterations * round_seconds / tries[2]))


def paired_rounds(reference: Worker, candidate: Worker, iterations: int, pairs: int,
                  seed: str) -> dict[str, list[float]]:
    """Wall and CPU seconds of each side's rounds, pair by pair (keys side and side_cpu)."""
    times: dict[str, list[float]] = {"reference": [], "candidate": [], "reference_cpu": [], "candidate_cpu": []}
    workers = {"reference": reference, "candidate": candidate}
    for order in pairing.PairSchedule(pairs, seed):
        for side in order:
            times[side].append(workers[side].time(iterations))
            times[side + "_cpu"].append(workers[side].last_cpu)
    return times


def block_rounds(reference: Worker, candidate: Worker, iterations: int, blocks: int,
                 rounds: int) -> tuple[list[float], list[float]]:
    """Today's interleaving: per block all rounds of one side, then the other, alternating."""
    ref: list[float] = []
    cand: list[float] = []
    for block in range(blocks):
        order = [(reference, ref), (candidate, cand)]
        for worker, into in order[:: 1 if block % 2 == 0 else -1]:
            into.extend(worker.time(iterations) for _ in range(rounds))
    return ref, cand


def block_bootstrap(ratios: np.ndarray, confidence: float, block: int = BOOT_BLOCK,
                    resamples: int = 4000, seed: int = 0) -> tuple[float, float]:
    """Moving-block bootstrap percentile interval of the Hodges-Lehmann ratio (time order kept)."""
    rng = np.random.default_rng(seed)
    n = ratios.size
    starts = rng.integers(0, n - block + 1, size=(resamples, math.ceil(n / block)))
    index = (starts[:, :, None] + np.arange(block)).reshape(resamples, -1)[:, :n]
    rows, cols = np.triu_indices(n)
    centres = np.empty(resamples)
    for chunk in range(0, resamples, 250):
        sample = ratios[index[chunk:chunk + 250]]
        centres[chunk:chunk + 250] = np.median((sample[:, rows] + sample[:, cols]) / 2, axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(centres, [tail, 1 - tail])
    return math.exp(float(low)), math.exp(float(high))


def lag1(values: np.ndarray) -> float:
    centred = values - values.mean()
    denominator = float(np.dot(centred, centred))
    return float(np.dot(centred[:-1], centred[1:]) / denominator) if denominator else 0.0


def confidence(comparisons: int) -> float:
    return 1 - 2 * ALPHA / comparisons


def record(times: dict[str, list[float]], conf: float, **extra: object) -> dict:
    """One comparison's figures, from wall-clock times (and, prefixed cpu_, from CPU times)."""
    row = dict(extra)
    for prefix in ("", "cpu_"):
        suffix = "_cpu" if prefix else ""
        d = pairing.log_ratios(times["reference" + suffix], times["candidate" + suffix])
        e = pairing.estimate_log_ratios(d, conf)
        row.update({prefix + "ratio": e.ratio, prefix + "ci": [e.ci_low, e.ci_high], prefix + "spread": e.spread,
                    prefix + "verdict_5": pairing.judge(e, 0.05).verdict,
                    prefix + "verdict_2": pairing.judge(e, 0.02).verdict})
        if not prefix:
            row.update(p_slower=e.p_slower, p_faster=e.p_faster, pairs=e.pairs, lag1=lag1(d))
            if extra.get("bootstrap"):
                row["boot_ci"] = list(block_bootstrap(d, conf, seed=len(d)))
        if extra.get("keep_pairs"):  # the pairs themselves, in time order, for later questions
            row[prefix + "log_ratios"] = [round(float(v), 5) for v in d]
    return row


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def experiment(doc: str | None, title: str, sessions: int, json_name: str) -> tuple[argparse.Namespace, list[str]]:
    """The follow-up experiments' common options and log header (printed)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=sessions)
    parser.add_argument("--pairs", type=int, default=pairing.DEFAULT_PAIRS)
    parser.add_argument("--round-ms", type=float, default=pairing.DEFAULT_ROUND_SECONDS * 1e3)
    parser.add_argument("--log", type=Path, default=HERE / "results" / "paired-prototype.log")
    parser.add_argument("--json", type=Path, default=HERE / "results" / json_name)
    args = parser.parse_args()
    lines = [f"# {title}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"# command: python3 benchmarks/{Path(sys.argv[0]).name} {' '.join(sys.argv[1:])}",
             f"# before: {uptime()}"]
    print("\n".join(lines), flush=True)
    return args, lines


def run_detect(sessions: int, pairs: int, round_ms: float, log: Callable[[str], None],
               bootstrap: bool = True) -> list[dict]:
    rows: list[dict] = []
    conf = confidence(len(WORKLOADS))
    for session in range(sessions):
        started = time.monotonic()
        for workload in WORKLOADS:
            reference = native(workload, BASE_SIZE)
            candidates = {s: native(workload, round(BASE_SIZE * (1 + s))) for s in SLOWDOWNS}
            try:
                iterations = calibrate(reference, round_ms / 1e3)
                order = np.random.default_rng([session, len(workload)]).permutation(len(SLOWDOWNS))
                for slowdown in (SLOWDOWNS[i] for i in order):
                    times = paired_rounds(reference, candidates[slowdown], iterations, pairs,
                                          f"{session}-{workload}-{slowdown}")
                    rows.append(record(times, conf, experiment="detect", session=session,
                                       workload=workload, slowdown=slowdown,
                                       bootstrap=bootstrap and slowdown in (0.0, 0.10),
                                       keep_pairs=slowdown in (0.0, 0.10)))
            finally:
                for worker in (reference, *candidates.values()):
                    worker.close()
        load = os.getloadavg()[0]
        log(f"  session {session + 1}/{sessions}: {time.monotonic() - started:.0f} s, load {load:.2f}")
    return rows


def run_sweep(sessions: int, budget_s: float, log: Callable[[str], None]) -> list[dict]:
    rows: list[dict] = []
    conf = confidence(len(WORKLOADS))
    for session in range(sessions):
        for workload in WORKLOADS:
            reference, same, slower = (native(workload, BASE_SIZE), native(workload, BASE_SIZE),
                                       native(workload, round(BASE_SIZE * 1.10)))
            try:
                for round_ms in (1, 2, 5, 20, 50):
                    iterations = calibrate(reference, round_ms / 1e3)
                    pairs = max(12, round(budget_s / (round_ms / 1e3)))
                    for slowdown, candidate in ((0.0, same), (0.10, slower)):
                        times = paired_rounds(reference, candidate, iterations, pairs,
                                              f"sweep-{session}-{workload}-{round_ms}-{slowdown}")
                        rows.append(record(times, conf, experiment="sweep", session=session,
                                           workload=workload, slowdown=slowdown, round_ms=round_ms))
            finally:
                for worker in (reference, same, slower):
                    worker.close()
        log(f"  sweep session {session + 1}/{sessions}, load {os.getloadavg()[0]:.2f}")
    return rows


def run_pinning(sessions: int, pairs: int, round_ms: float, image: str | None,
                log: Callable[[str], None]) -> list[dict]:
    """A/A, 10% and (with ``image``) docker vs native: all workers free to move between CPUs,
    or all confined to one CPU.

    Asks whether the comparisons whose identical processes read 20% apart (a difference
    that lasts the whole comparison, so the pairs cannot see it) come from the two
    processes sitting on different CPUs.
    """
    rows: list[dict] = []
    conf = confidence(len(WORKLOADS))
    cpus = sorted(os.sched_getaffinity(0))
    for session in range(sessions):
        for workload in WORKLOADS:
            for placement in ("free", "one-cpu") if session % 2 else ("one-cpu", "free"):
                cpu = cpus[session % len(cpus)] if placement == "one-cpu" else None
                reference = native(workload, BASE_SIZE, cpu)
                candidates = {("native", 0.0): native(workload, BASE_SIZE, cpu),
                              ("native", 0.10): native(workload, round(BASE_SIZE * 1.10), cpu)}
                if image:
                    candidates["docker", 0.0] = in_docker(image, cpu)(workload, BASE_SIZE)
                try:
                    iterations = calibrate(reference, round_ms / 1e3)
                    for (env, slowdown), candidate in candidates.items():
                        candidate.time(iterations)  # a first round in no measurement
                        times = paired_rounds(reference, candidate, iterations, pairs,
                                              f"pin-{session}-{workload}-{placement}-{env}-{slowdown}")
                        rows.append(record(times, conf, experiment="pinning", placement=placement, env=env,
                                           session=session, workload=workload, slowdown=slowdown))
                finally:
                    for worker in (reference, *candidates.values()):
                        worker.close()
        log(f"  pinning session {session + 1}/{sessions}, load {os.getloadavg()[0]:.2f}")
    return rows


def run_overhead(sessions: int, pairs: int, round_ms: float, image: str | None,
                 log: Callable[[str], None]) -> list[dict]:
    rows: list[dict] = []
    conf = confidence(len(WORKLOADS))
    sides: dict[str, Callable[[str, int], Worker]] = {"native": native}
    if image:
        sides["docker"] = in_docker(image)
    for session in range(sessions):
        for workload in WORKLOADS:
            for env, start in sides.items():
                reference, candidate = native(workload, BASE_SIZE), start(workload, BASE_SIZE)
                try:
                    iterations = calibrate(reference, round_ms / 1e3)
                    candidate.time(iterations)  # the container's first round, in no measurement
                    ref, cand = block_rounds(reference, candidate, iterations, 3, pairs // 3)
                    old = stats.ratio_of_medians(cand, ref, conf, seed=session)
                    rows.append(dict(experiment="overhead", method="blocks", env=env, session=session,
                                     workload=workload, ratio=old.ratio, ci=[old.ci_low, old.ci_high]))
                    times = paired_rounds(reference, candidate, iterations, pairs, f"o-{session}-{workload}")
                    rows.append(record(times, conf, experiment="overhead", method="pairs", env=env,
                                       session=session, workload=workload))
                finally:
                    reference.close()
                    candidate.close()
        log(f"  overhead session {session + 1}/{sessions}, load {os.getloadavg()[0]:.2f}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--sweep-sessions", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=pairing.DEFAULT_PAIRS)
    parser.add_argument("--round-ms", type=float, default=pairing.DEFAULT_ROUND_SECONDS * 1e3)
    parser.add_argument("--docker-image", help="run the overhead experiment's candidate in this image too")
    parser.add_argument("--experiments", default="detect,sweep,overhead")
    parser.add_argument("--no-bootstrap", action="store_true",
                        help="skip detect's block bootstrap (seconds per comparison at 300 pairs)")
    parser.add_argument("--log", type=Path, default=HERE / "results" / "paired-prototype.log")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "paired-prototype.json")
    args = parser.parse_args()

    from paired_summary import summarize  # noqa: PLC0415 - beside this script

    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    log(f"# paired prototype, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    log(f"# command: python3 benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}")
    rows: list[dict] = []
    experiments = args.experiments.split(",")
    runs: dict[str, Callable[[], list[dict]]] = {
        "detect": lambda: run_detect(args.sessions, args.pairs, args.round_ms, log, not args.no_bootstrap),
        "sweep": lambda: run_sweep(args.sweep_sessions, args.pairs * args.round_ms / 1e3, log),
        "overhead": lambda: run_overhead(args.sessions, args.pairs, args.round_ms, args.docker_image, log),
        "pinning": lambda: run_pinning(args.sessions, args.pairs, args.round_ms, args.docker_image, log),
    }
    for name in experiments:
        if name not in runs:
            parser.error(f"unknown experiment {name!r}: choose among {', '.join(runs)}")
    for name in experiments:
        log(f"# {name}: before, {uptime()}")
        try:
            rows += runs[name]()
        except Exception as error:  # noqa: BLE001 - keep what the other experiments measured
            log(f"# {name} failed: {error!r}")
        log(f"# {name}: after, {uptime()}")
        args.json.write_text(json.dumps(rows, indent=0))
    for line in summarize(rows, args.pairs, args.round_ms, confidence(len(WORKLOADS))):
        log(line)
    with args.log.open("a") as out:
        out.write("\n".join(lines) + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
