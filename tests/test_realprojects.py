"""Real projects run the same code in every environment (issue #9), end to end.

Each project under ``tests/projects/`` is copied to a temporary directory and installed
editable into its own throwaway venv, as its developers work (``project_venv`` in
conftest.py). Then ``pytest --hostperf`` runs it natively, in docker and
in qemu, and the project's own test checks, inside each environment, that the module it
imports is the project's file (and for msgpack, the C extension).

Marked ``xfail(strict=True)`` where the wiring of this stage's building blocks is still
missing; each reason says which step of /work/notes/realprojects-integration.md flips it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest

pytestmark = pytest.mark.slow

FAST = ["--benchmark-max-time=0.05", "--benchmark-min-rounds=5", "--benchmark-warmup=off", "-p", "no:cacheprovider"]

ROOTS = "the controller passes no --import-root yet (integration step 1): "
DEPS = "the image build does not take dependencies.plan_requirements yet (integration step 2): "
LEAKS = "controller-side leaks until the fixes of integration step 5 are applied: "
NOT_IN_IMAGE = ROOTS + "the project is not installed in the image, so its src/ package is not importable there"
XFAIL = {
    ("srclayout", "docker"): NOT_IN_IMAGE,
    ("srclayout", "qemu"): NOT_IN_IMAGE,
    ("collide", "docker"): ROOTS + "the image's py-cpuinfo shadows the project's own cpuinfo",
    ("collide", "qemu"): ROOTS + "the image's py-cpuinfo shadows the project's own cpuinfo",
    ("compiled", "docker"): DEPS + "msgpack is not in the image; and " + NOT_IN_IMAGE,
    ("compiled", "qemu"): DEPS + "msgpack is not in the image; and " + NOT_IN_IMAGE,
    ("strict", "native"): LEAKS + "the native agent's stderr pipe (environments/pipe.py)",
    ("strict", "docker"): LEAKS + "the docker exec socket's HTTP response; and " + NOT_IN_IMAGE,
    ("strict", "qemu"): LEAKS + "the VM disk build's tar stderr when a disk is built; and " + NOT_IN_IMAGE,
}


def cases() -> list[Any]:
    params = []
    for project in ("srclayout", "collide", "compiled", "strict"):
        for env in ("native", "docker", "qemu"):
            marks = [getattr(pytest.mark, env)] if env != "native" else []
            reason = XFAIL.get((project, env))
            if reason:
                marks.append(pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason))
            params.append(pytest.param(project, env, marks=marks, id=f"{project}-{env}"))
    return params


def available(env: str) -> None:
    if env == "docker":
        from pytest_hostperf.environments.base import EnvironmentFailure
        from pytest_hostperf.environments.docker import connect

        try:
            connect()
        except EnvironmentFailure as exc:
            if os.environ.get("HOSTPERF_REQUIRE_DOCKER"):
                pytest.fail(f"HOSTPERF_REQUIRE_DOCKER is set but: {exc}")
            pytest.skip(str(exc))
    if env == "qemu" and shutil.which("qemu-system-x86_64") is None:
        if os.environ.get("HOSTPERF_REQUIRE_QEMU"):
            pytest.fail("HOSTPERF_REQUIRE_QEMU is set but qemu-system-x86_64 is missing")
        pytest.skip("qemu-system-x86_64 is not installed")


@pytest.mark.parametrize(("project_name", "env"), cases())
def test_the_projects_own_code_runs_in_every_environment(project_venv: Callable[[str], tuple[Path, Path]],
                                                         clean_environ: dict[str, str], project_name: str, env: str,
                                                         tmp_path: Path) -> None:
    available(env)
    python, project = project_venv(project_name)
    report = tmp_path / "report.json"
    envs = "native" if env == "native" else f"native,{env}"
    # The strict project also turns a leaked file or socket of the tool itself into an error.
    strict = ["-X", "dev"] if project_name == "strict" else []
    strict_pytest = ["-W", "error::ResourceWarning"] if project_name == "strict" else []
    argv = [str(python), *strict, "-m", "pytest", *FAST, *strict_pytest, "--hostperf", f"--hostperf-envs={envs}",
            f"--hostperf-require={env}", f"--hostperf-json={report}", "--hostperf-max-overhead=docker=1000,qemu:tcg=100000",
            "-v", "-rA"]
    result = subprocess.run(argv, cwd=project, capture_output=True, text=True, env=clean_environ, timeout=1500,
                            check=False)
    output = result.stdout + result.stderr
    records = [r for r in json.loads(report.read_text())["results"] if r["env"] == env] if report.exists() else []
    assert records, f"no {env} record in the report:\n{output}"
    for record in records:
        assert record["outcome"] == "passed", f"{record['item']}: {record['outcome']}: {record['reason']}\n{output}"
        assert record["median_s"], f"{record['item']}: nothing measured\n{output}"
    assert result.returncode == 0, output
    assert "Traceback" not in output and "Warning" not in output, output
