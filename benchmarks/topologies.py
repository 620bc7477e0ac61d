"""The topologies of issue #14 side by side: what small files and sqlite cost on each.

    python3 benchmarks/topologies.py [--rounds 5] [--name topologies]

Runs example_project's two file-heavy tests (``test_sqlite_load_and_query``: 2000 rows
into a sqlite file and a query; ``test_small_file_cache``: 100 files of 512 bytes
written and read back) in ONE pytest session natively, in a container (bind mount,
volume), in a QEMU VM (its own disk, the virtiofs, 9p and NFS shares) and in a container
on a Docker engine inside a QEMU VM (bind mounts over virtiofs, 9p and NFS, a volume on
the VM's disk). Writes the JSON report to ``benchmarks/results/<name>.json`` and a log
with the tables to ``benchmarks/results/<name>.log``:

* each item's median and its ratio to native (what the topology costs this workload);
* for the VM rows, the ratio to the same VM's own disk (``qemu-guest``, and for
  docker@qemu its ``volume`` on the VM's disk): software emulation (TCG) inflates every
  ratio to native, but a VM's shares and its own disk run under the same emulation, so
  these ratios are the shares' own cost;
* start-up: the qemu boot and the docker@qemu engine (cached disks), and the first
  container's agent.

The overhead gate is opened (this measures, it does not judge); baselines go to a temp dir.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example_project"
RESULTS = ROOT / "benchmarks" / "results"
ENVS = "native,docker,qemu,docker@qemu"
MOUNTS = "host,bind,volume,guest,share,share-9p,share-nfs,bind-virtiofs,bind-9p,bind-nfs"
TESTS = {"test_small_file_cache": "100 small files", "test_sqlite_load_and_query": "sqlite 2000 rows"}
#: The same VM's own disk, for each VM kind: what its shares are compared with.
VM_DISK = {"qemu": "qemu-guest", "docker@qemu": "docker@qemu-volume"}
WHAT = {
    "native": "host directory (the host's disk)",
    "docker-bind": "bind mount (host directory)", "docker-volume": "named volume",
    "qemu-guest": "the VM's own disk (ext4 on qcow2)", "qemu-share": "host dir over virtiofs",
    "qemu-share-9p": "host dir over 9p (mapped-xattr, cache=none, msize 512K)",
    "qemu-share-nfs": "host dir over NFSv4.2 (nfs-ganesha via QEMU user net)",
    "docker@qemu-bind-virtiofs": "bind mount of a virtiofs share (Docker Desktop VirtioFS)",
    "docker@qemu-bind-9p": "bind mount of a 9p share (Lima/colima 9p)",
    "docker@qemu-bind-nfs": "bind mount of an NFS share (the seed's QEMU+NFS)",
    "docker@qemu-volume": "named volume on the VM's disk",
}


def run_session(rounds: int, report: Path, log: Path) -> float:
    with tempfile.TemporaryDirectory(prefix="hostperf-topologies-") as tmp:
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--hostperf",
                   f"--hostperf-envs={ENVS}", f"--hostperf-require={ENVS}", f"--hostperf-mounts={MOUNTS}",
                   "-k", " or ".join(TESTS), f"--hostperf-json={report}", f"--hostperf-baselines={tmp}",
                   "--hostperf-max-overhead=qemu:tcg=1e9,docker@qemu:tcg=1e9,qemu:kvm=1e9,docker@qemu:kvm=1e9,"
                   "docker=1e9", "--hostperf-confirm=0", f"--benchmark-min-rounds={rounds}",
                   "--benchmark-max-time=0.5", "--benchmark-warmup=on", "--benchmark-warmup-iterations=1"]
        print("$ " + " ".join(command), flush=True)
        started = time.monotonic()
        with open(log, "w") as out:
            done = subprocess.run(command, cwd=EXAMPLE, stdout=out, stderr=subprocess.STDOUT, check=False)
        took = time.monotonic() - started
    # Exit 1 is also the example's own marker budget (small files on qemu-share at 100x
    # native), which loaded TCG can exceed: the report is still complete; main() checks it.
    if done.returncode not in (0, 1) or not report.is_file():
        raise SystemExit(f"the session failed (exit {done.returncode}); see {log}")
    return took


def tables(data: dict[str, Any]) -> list[str]:
    rows = {(r["test"].split("::")[-1], r["target"]): r for r in data["results"]}
    targets = list(dict.fromkeys(r["target"] for r in data["results"]))
    lines = ["| topology (what the test writes to) | fs inside | " +
             " | ".join(f"{label}: median | vs native | vs VM disk" for label in TESTS.values()) + " |",
             "|---|---|" + "---:|---:|---:|" * len(TESTS)]
    for target in targets:
        cells = []
        fstype = ""
        for test in TESTS:
            row = rows.get((test, target))
            native = rows.get((test, "native"))
            if row is None or not row.get("median_s"):
                cells += ["-", "-", "-"]
                continue
            fstype = next(iter(row["mount_info"].values()), {}).get("fstype") or fstype
            ratio = row["median_s"] / native["median_s"] if native and native.get("median_s") else None
            disk = VM_DISK.get(target.split("-")[0] if not target.startswith("docker@") else "docker@qemu")
            base = rows.get((test, disk)) if disk and disk != target else None
            cells += [_seconds(row["median_s"]), f"{ratio:.1f}x" if ratio else "-",
                      f"{row['median_s'] / base['median_s']:.1f}x" if base and base.get("median_s") else "-"]
        lines.append(f"| {target}: {WHAT.get(target, '')} | {fstype} | " + " | ".join(cells) + " |")
    return lines


def startup(data: dict[str, Any]) -> list[str]:
    found = []
    for record in data["results"]:
        outside = record.get("fingerprint", {}).get("outside", {})
        if record["env"] == "qemu" and "qemu boot" not in " ".join(found):
            found.append(f"qemu boot {outside.get('boot_s')} s, agent ready {outside.get('agent_ready_s')} s "
                         f"(kernel {outside.get('kernel')}, {outside.get('accelerator')})")
        if record["env"] == "docker@qemu" and "engine" not in " ".join(found):
            vm = outside.get("engine_in_vm", {})
            found.append(f"docker@qemu engine answering {vm.get('startup_s')} s after the VM started "
                         f"(boot {vm.get('boot_s')} s, data disk {vm.get('data_disk_s')} s, all of it from "
                         f"the first request {vm.get('engine_ready_s')} s)")
    for env in data.get("environments", {}).items():
        found.append(f"{env[0]}: ready in {env[1].get('startup_s'):.1f} s (image, VM, engine, container, agent)")
    return found


def _seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="pytest-benchmark rounds at least (default 5)")
    parser.add_argument("--name", default="topologies", help="file name of the report and log in benchmarks/results")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    report, log = RESULTS / f"{args.name}.json", RESULTS / f"{args.name}.log"
    took = run_session(args.rounds, report, log)
    data = json.loads(report.read_text())
    broken = [r["item"] for r in data["results"] if r["outcome"] != "passed" or r["verdict"] == "error"]
    if broken:
        raise SystemExit(f"items did not run: {', '.join(broken)}; see {log}")
    summary = [f"\n# {time.strftime('%Y-%m-%d %H:%M')} UTC, load average {os.getloadavg()[0]:.1f}, "
               f"one session over every topology in {took:.0f} s", *tables(data), "", *startup(data)]
    with open(log, "a") as out:
        out.write("\n".join(summary) + "\n")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
