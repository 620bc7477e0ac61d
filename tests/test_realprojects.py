"""Real projects run the same code in every environment (issue #9), end to end.

Each project under ``tests/projects/`` is copied to a temporary directory and installed
editable into its own throwaway venv, as its developers work (``project_venv`` in
conftest.py). Then one ``pytest --hostperf`` session runs it natively, in docker and in
qemu (a VM boots once per project), with the image hostperf plans from that venv:

* ``wellkept``: a src layout installed editable, a compiled dependency (msgpack) and
  ``filterwarnings = error`` run under ``-X dev -W error::ResourceWarning``, one case per
  test file (a case is an item per environment, so the cases share one session);
* ``collide``: a checkout of py-cpuinfo, whose released ``cpuinfo`` every image that runs
  pytest-benchmark has in site-packages.

Two checks that the code inside is the project's own: the project's tests assert it in
every environment (the module's file, msgpack's C extension), and the JSON report's
module origins say so, with no mismatch against native. Before the wiring of issue #9
every case failed: src/ was not importable in docker and qemu, the image's py-cpuinfo
shadowed the project's, msgpack was not in the image, and the strict session ended in
ResourceWarnings of the tool's own files and sockets.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest
from sessions import BRIEF

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.qemu]

#: The project's own top-level module, which must come from src/ in every environment.
OWN_MODULE = {"wellkept": "hp_wellkept", "collide": "cpuinfo"}
#: Each case (a test) and the environments its items ran in.
CASES = {"wellkept": ("test_checksum", "test_round_trip", "test_histogram"), "collide": ("test_parse_flags",)}


def environments() -> list[str]:
    """native plus docker and qemu where they work here (CI requires both)."""
    envs = ["native"]
    from pytest_hostperf.environments.base import EnvironmentFailure
    from pytest_hostperf.environments.docker import connect

    try:
        connect()
        envs.append("docker")
    except EnvironmentFailure as exc:
        if os.environ.get("HOSTPERF_REQUIRE_DOCKER"):
            pytest.fail(f"HOSTPERF_REQUIRE_DOCKER is set but: {exc}")
    if shutil.which("qemu-system-x86_64") is not None and "docker" in envs:  # the VM disk is made from the image
        envs.append("qemu")
    elif os.environ.get("HOSTPERF_REQUIRE_QEMU"):
        pytest.fail("HOSTPERF_REQUIRE_QEMU is set but qemu-system-x86_64 (or the docker engine) is missing")
    if envs == ["native"]:
        pytest.skip("neither docker nor qemu works here")
    return envs


def run_session(python: Path, project: Path, env: dict[str, str], envs: list[str], report: Path,
                *extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    joined = ",".join(envs)
    argv = [str(python), *extra, "-m", "pytest", *BRIEF, "--hostperf", f"--hostperf-envs={joined}",
            f"--hostperf-require={joined}", f"--hostperf-json={report}",
            # The subject is which code runs, not this host's TCG speed (nor interleaving).
            "--hostperf-max-overhead=docker=1000,qemu:tcg=100000", "--hostperf-blocks=1", "-v", "-rA"]
    if "-X" in extra:  # the strict project: a leaked file or socket of the tool itself is an error too
        argv += ["-W", "error::ResourceWarning"]
    done = subprocess.run(argv, cwd=project, capture_output=True, text=True, env=env, timeout=1500, check=False)
    data = json.loads(report.read_text()) if report.exists() else {}
    return done, data


@pytest.mark.parametrize("project_name", ["wellkept", "collide"])
def test_the_projects_own_code_runs_in_every_environment(project_venv: Callable[[str], tuple[Path, Path]],
                                                         clean_environ: dict[str, str], project_name: str,
                                                         tmp_path: Path) -> None:
    envs = environments()
    python, project = project_venv(project_name)
    strict = ("-X", "dev") if project_name == "wellkept" else ()
    done, data = run_session(python, project, clean_environ, envs, tmp_path / "report.json", *strict)
    output = done.stdout + done.stderr
    assert data, f"no report:\n{output}"
    records = data["results"]
    ran = {(r["test"].split("::")[-1], r["env"]) for r in records}
    assert ran == {(case, env) for case in CASES[project_name] for env in envs}, output
    for record in records:
        assert record["outcome"] == "passed", f"{record['item']}: {record['outcome']}: {record['reason']}\n{output}"
        assert record["median_s"], f"{record['item']}: nothing measured\n{output}"
    assert done.returncode == 0, output
    assert "Traceback" not in output and "Warning" not in output, output

    own = OWN_MODULE[project_name]
    for env in envs:
        code = data["environments"][env]["code"]
        assert code["mismatches"] == [], (env, code["mismatches"])
        assert code["modules"][own]["origin"] == "project", (env, code["modules"][own])
        assert code["modules"][own]["path"] == f"src/{own}/__init__.py", (env, code["modules"][own])
    if project_name == "wellkept":
        for env in envs:
            msgpack = data["environments"][env]["code"]["modules"]["msgpack"]
            assert (msgpack["version"], msgpack["origin"]) == ("1.1.0", "site-packages"), (env, msgpack)
            assert "msgpack._cmsgpack" in msgpack["compiled"], (env, msgpack)  # the wheel's C extension
        # The dependency version the tests import is part of every environment's fingerprint.
        assert {r["fingerprint"]["modules"]["msgpack"] for r in records} == {"msgpack==1.1.0"}
