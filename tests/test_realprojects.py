"""Real projects run the same code in every environment (issue #9), end to end.

The ``wellkept`` project under ``tests/projects/`` is copied to a temporary directory and
installed editable into a throwaway venv, as its developers work (``project_venv`` in
conftest.py). Then one ``pytest --hostperf`` session under ``-X dev -W
error::ResourceWarning`` runs it natively, in docker and in qemu (one VM boot), with the
image hostperf plans from that venv. Its four cases, one test file each, share that one
venv, image, VM disk and session (CI time): a src layout installed editable, a compiled
dependency (msgpack), ``filterwarnings = error``, and a package name that collides with
the image (the project is a checkout of py-cpuinfo, whose released ``cpuinfo`` every image
that runs pytest-benchmark has in site-packages).

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

#: The project's own top-level modules, which must come from src/ in every environment.
OWN_MODULES = ("hp_wellkept", "cpuinfo")
#: Each case (a test), run in every environment.
CASES = ("test_checksum", "test_round_trip", "test_histogram", "test_parse_flags")


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


def run_session(python: Path, project: Path, env: dict[str, str], envs: list[str],
                report: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    joined = ",".join(envs)
    # Strict: a leaked file or socket of the tool itself is an error too.
    argv = [str(python), "-X", "dev", "-m", "pytest", *BRIEF, "-W", "error::ResourceWarning", "--hostperf",
            f"--hostperf-envs={joined}", f"--hostperf-require={joined}", f"--hostperf-json={report}",
            # The subject is which code runs, not this host's TCG speed (nor interleaving).
            "--hostperf-max-overhead=docker=1000,qemu:tcg=100000", "--hostperf-blocks=1", "-v", "-rA"]
    done = subprocess.run(argv, cwd=project, capture_output=True, text=True, env=env, timeout=1500, check=False)
    data = json.loads(report.read_text()) if report.exists() else {}
    return done, data


def test_the_projects_own_code_runs_in_every_environment(project_venv: Callable[[str], tuple[Path, Path]],
                                                         clean_environ: dict[str, str], tmp_path: Path) -> None:
    envs = environments()
    python, project = project_venv("wellkept")
    done, data = run_session(python, project, clean_environ, envs, tmp_path / "report.json")
    output = done.stdout + done.stderr
    assert data, f"no report:\n{output}"
    records = data["results"]
    ran = {(r["test"].split("::")[-1], r["env"]) for r in records}
    assert ran == {(case, env) for case in CASES for env in envs}, output
    for record in records:
        assert record["outcome"] == "passed", f"{record['item']}: {record['outcome']}: {record['reason']}\n{output}"
        assert record["median_s"], f"{record['item']}: nothing measured\n{output}"
    assert done.returncode == 0, output
    assert "Traceback" not in output and "Warning" not in output, output

    for env in envs:
        code = data["environments"][env]["code"]
        assert code["mismatches"] == [], (env, code["mismatches"])
        for own in OWN_MODULES:
            assert code["modules"][own]["origin"] == "project", (env, code["modules"][own])
            assert code["modules"][own]["path"] == f"src/{own}/__init__.py", (env, code["modules"][own])
        msgpack = code["modules"]["msgpack"]
        assert (msgpack["version"], msgpack["origin"]) == ("1.1.0", "site-packages"), (env, msgpack)
        assert "msgpack._cmsgpack" in msgpack["compiled"], (env, msgpack)  # the wheel's C extension
    # The dependency version the tests import is part of every environment's fingerprint.
    assert {r["fingerprint"]["modules"]["msgpack"] for r in records} == {"msgpack==1.1.0"}


def test_against_rev_runs_revs_own_code_of_an_editable_src_layout(
        project_venv: Callable[[str], tuple[Path, Path]], clean_environ: dict[str, str], tmp_path: Path) -> None:
    """``--hostperf-against=HEAD`` in the developers' venv, where ``pip install -e`` maps
    ``hp_wellkept`` to the working tree's ``src/``: REV's agent must import REV's.

    The working tree's ``checksum`` does 4x REV's work. Had REV's side run the working
    tree's code, the pair would read ~1x; and the project's own test asserts, on each side,
    that the module is the file of the tree it runs in (so it would fail at REV)."""
    python, project = project_venv("wellkept")
    module = project / "src" / "hp_wellkept" / "__init__.py"
    original = module.read_text()
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    try:
        for args in (["init", "-q", "."], ["add", "-A"], ["commit", "-qm", "REV"]):
            subprocess.run([*git, *args], cwd=project, check=True, capture_output=True)
        module.write_text(original.replace("for i in range(count))", "for i in range(4 * count))"))
        report = tmp_path / "against.json"
        argv = [str(python), "-X", "dev", "-m", "pytest", *BRIEF, "-W", "error::ResourceWarning", "--hostperf",
                "--hostperf-envs=native", "--hostperf-against=HEAD", f"--hostperf-json={report}",
                "tests/test_srclayout.py", "-rA"]
        done = subprocess.run(argv, cwd=project, capture_output=True, text=True, env=clean_environ, timeout=600,
                              check=False)
    finally:
        module.write_text(original)
        shutil.rmtree(project / ".git", ignore_errors=True)
    output = done.stdout + done.stderr
    assert report.exists(), output
    [record] = [r for r in json.loads(report.read_text())["results"] if r["test"].endswith("::test_checksum")]
    against = record["against"]
    assert against and against.get("error") is None, (against, output)
    assert against["verdict"] == "regression" and 3.0 < against["ratio"] < 5.5, (against, output)
    assert done.returncode == 1, output  # the regression fails the session
