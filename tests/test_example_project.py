"""The README's example: example_project against the baselines committed for this machine.

Checks the whole pipeline on the real project and that the committed baselines really
are this machine's (a verdict other than ``no-baseline`` for every item of an environment
that has a committed baseline). It does not demand ``pass``: a real drift of this shared
machine may be flagged, and that is the tool doing its job; any other failure is not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example_project"


def envs() -> list[str]:
    chosen = ["native"]
    if os.environ.get("HOSTPERF_REQUIRE_DOCKER"):
        chosen.append("docker")
    if os.environ.get("HOSTPERF_REQUIRE_QEMU"):
        chosen.append("qemu")
    return chosen


@pytest.mark.slow
def test_example_project_runs_against_its_committed_baselines(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    chosen = ",".join(envs())
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--hostperf", f"--hostperf-envs={chosen}",
         f"--hostperf-require={chosen}", f"--hostperf-json={report}", f"--hostperf-markdown={tmp_path}/r.md"],
        cwd=EXAMPLE, capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode in (0, 1), done.stdout[-4000:] + done.stderr[-2000:]
    data = json.loads(report.read_text())
    committed = {p.name.split("-")[0] for p in (ROOT / "baselines").glob("*.json")}
    for record in data["results"]:
        assert record["outcome"] == "passed", (record["item"], record["reason"])
        assert record["verdict"] in ("pass", "regression", "improvement", "overhead", "inconclusive", "unstable")
        if record["env"] in committed:
            assert record["baseline_sessions"] >= 1, f"{record['item']}: {record['reason']}"
    failing = [r for r in data["results"] if r["verdict"] in ("regression", "overhead")]
    if done.returncode == 1:
        assert failing, "pytest failed, but not because of a hostperf verdict:\n" + done.stdout[-4000:]
    assert (tmp_path / "r.md").read_text().startswith("## pytest-hostperf")
