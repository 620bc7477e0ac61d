"""How long the docker backend takes to get a warm agent, and what a request costs.

Measures, on an already-built project image (built first if missing, not timed):

* startup: from a new DockerEnvironment (connect + check) until the agent's ``ready``
  (container create/start, keep-alive ready, one exec, agent imports pytest, collects);
* round trip: ``ping`` -> ``pong`` over the warm agent's exec socket.

Usage: python benchmarks/docker_startup.py [--runs 5] [--pings 200] [--project DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_hostperf import images  # noqa: E402
from pytest_hostperf.environments.base import AgentClient  # noqa: E402
from pytest_hostperf.environments.docker import DockerEnvironment, connect  # noqa: E402
from pytest_hostperf.progress import Reporter  # noqa: E402


def startup_once(project: Path, work: Path, pings: int) -> tuple[float, list[float]]:
    started = time.perf_counter()
    env = DockerEnvironment(f"bench-{uuid.uuid4().hex[:8]}", project, work)
    try:
        env.check()
        client = AgentClient("docker", env.start_agent(env.launch(sorted(p.name for p in project.glob("test_*.py")))))
        client.wait_ready(env.agent_start_timeout())
        startup = time.perf_counter() - started
        round_trips = []
        for _ in range(pings):
            sent = time.perf_counter()
            client.request({"op": "ping"}, "pong", 10, "pinging")
            round_trips.append(time.perf_counter() - sent)
        client.shutdown()
        return startup, round_trips
    finally:
        env.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pings", type=int, default=200)
    parser.add_argument("--project", type=Path, default=ROOT / "tests" / "projects" / "tiny")
    args = parser.parse_args()

    project = args.project.resolve()
    ref = images.ensure_image(connect(), project, reporter=Reporter(lambda line: print(line, file=sys.stderr)))
    startups: list[float] = []
    round_trips: list[float] = []
    with tempfile.TemporaryDirectory(prefix="hostperf-bench-") as tmp:
        for run in range(args.runs):
            startup, pings = startup_once(project, Path(tmp), args.pings if run == 0 else 0)
            startups.append(startup)
            round_trips += pings
    result = {
        "image": ref.tag,
        "startup_s": [round(s, 3) for s in startups],
        "startup_median_s": round(statistics.median(startups), 3),
        "ping_round_trip_median_ms": round(statistics.median(round_trips) * 1000, 3) if round_trips else None,
        "ping_round_trip_p95_ms": round(sorted(round_trips)[int(len(round_trips) * 0.95)] * 1000, 3)
        if round_trips else None,
        "pings": len(round_trips),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
