"""Measure the qemu backend: boot to a ready agent, request round trip, CPU ratio to native.

    python benchmarks/qemu_boot.py [--boots 3] [--vcpus 1,2] [--pings 200] [--accel auto]

Boots the VM disk (built from the docker project image, or from a debootstrap root
filesystem when no Docker engine answers; cached) ``--boots`` times per vCPU count, and
in the last VM of each count measures ping/pong round trips and a CPU-bound
pytest-benchmark test; the same test runs in the native environment for the ratio.
Prints medians and one JSON line (``RESULT {...}``) for tooling.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_hostperf import vm as vmimage  # noqa: E402
from pytest_hostperf.environments.base import AgentClient, AgentLaunch, package_parent  # noqa: E402
from pytest_hostperf.environments.qemu import QemuEnvironment  # noqa: E402
from pytest_hostperf.progress import Reporter  # noqa: E402

CPU_TEST = textwrap.dedent('''
    def fib(n):
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    def test_cpu(benchmark):
        benchmark.pedantic(fib, args=(22,), rounds=20, iterations=1, warmup_rounds=1)
''')


def _disk(project: Path) -> vmimage.VmDisk:
    try:
        import docker

        docker.from_env().ping()
        return QemuEnvironment(project, reporter=Reporter(print)).prepare()
    except Exception as exc:  # noqa: BLE001 - no engine: fall back to debootstrap
        print(f"no docker image ({exc}); using a debootstrap root filesystem")
    rootfs = vmimage.build_debootstrap_rootfs(vmimage.default_cache_dir() / "debootstrap-rootfs",
                                              reporter=Reporter(print))
    done = json.loads((rootfs / "opt/hostperf/rootfs.done").read_text())
    return vmimage.build_vm_disk(rootfs, key="debootstrap:" + ",".join(done), reporter=Reporter(print))


def _launch(project: Path, env: str) -> AgentLaunch:
    return AgentLaunch(python=sys.executable, pythonpath=str(package_parent()), project_dir=str(project),
                       test_files=("test_cpu.py",), pytest_args=(), env=env)


def _cpu_median(client: AgentClient) -> float:
    result = client.request({"op": "run", "nodeid": "test_cpu.py::test_cpu"}, "result", 600, "running test_cpu")
    if result["outcome"] != "passed":
        raise SystemExit(f"test_cpu {result['outcome']}: {result.get('reports')}")
    return statistics.median(result["samples"])


def _native_cpu(project: Path, workdir: Path) -> float:
    from pytest_hostperf.environments.native import NativeEnvironment

    env = NativeEnvironment(workdir)
    try:
        client = AgentClient("native", env.start_agent(_launch(project, "native")))
        client.wait_ready(60)
        value = _cpu_median(client)
        client.shutdown()
        return value
    finally:
        env.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--vcpus", default="auto", help="comma-separated counts or 'auto' (1 under TCG, 2 with KVM)")
    parser.add_argument("--pings", type=int, default=200)
    parser.add_argument("--accel", default="auto")
    parser.add_argument("--memory-mb", type=int, default=1024)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hostperf-qemu-bench-") as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        (project / "test_cpu.py").write_text(CPU_TEST)
        disk = _disk(project)
        native = _native_cpu(project, Path(tmp))
        results = {"native_cpu_s": native, "by_vcpus": {}}
        for vcpus in [None if v == "auto" else int(v) for v in args.vcpus.split(",")]:
            boots, guest_up, rtts, cpu, info = [], [], [], None, {}
            for index in range(args.boots):
                env = QemuEnvironment(project, disk=disk, vcpus=vcpus, memory_mb=args.memory_mb, accel=args.accel,
                                      reporter=Reporter(lambda line: print("   ", line)))
                try:
                    started = time.monotonic()
                    client = AgentClient("qemu", env.start_agent(_launch(project, "qemu")))
                    client.wait_ready(env.agent_start_timeout())
                    boots.append(time.monotonic() - started)
                    info = dict(env.describe())
                    guest_up.append(info.get("boot_s", 0.0))
                    if index == args.boots - 1:
                        for _ in range(args.pings):
                            t0 = time.perf_counter()
                            client.request({"op": "ping"}, "pong", 10, "ping")
                            rtts.append(time.perf_counter() - t0)
                        cpu = _cpu_median(client)
                    client.shutdown()
                finally:
                    env.stop()
            row = {
                "accelerator": info.get("accelerator"),
                "fallback_reason": info.get("fallback_reason"),
                "share_fs": info.get("share_fs"),
                "boot_to_ready_s": boots,
                "boot_to_ready_median_s": statistics.median(boots),
                "guest_up_median_s": statistics.median(guest_up),
                "rtt_median_ms": statistics.median(rtts) * 1000,
                "rtt_p95_ms": sorted(rtts)[int(len(rtts) * 0.95) - 1] * 1000,
                "cpu_s": cpu,
                "cpu_ratio_to_native": cpu / native if cpu else None,
            }
            row["vcpus"] = info.get("vcpus")
            results["by_vcpus"][str(vcpus or "auto")] = row
            print(f"vcpus={vcpus or 'auto'}({info.get('vcpus')}) accel={row['accelerator']} share={row['share_fs']}: "
                  f"boot->ready median {row['boot_to_ready_median_s']:.1f} s "
                  f"(guest up {row['guest_up_median_s']:.1f} s; all {[round(b, 1) for b in boots]}), "
                  f"ping rtt median {row['rtt_median_ms']:.2f} ms (p95 {row['rtt_p95_ms']:.2f}), "
                  f"CPU {row['cpu_ratio_to_native']:.1f}x native ({cpu * 1000:.1f} ms vs {native * 1000:.1f} ms)")
        print("RESULT " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
