"""The building blocks of issue #9 against real agents, beside the plugin's own wiring.

1. In the ``wellkept`` project's own venv (editable install, msgpack installed), the
   dependency plan (:mod:`pytest_hostperf.dependencies`) and the import roots
   (:mod:`pytest_hostperf.importroots`) are what the controller computes there.
2. Without import roots (what the controller passed before issue #9) the stock image's
   py-cpuinfo shadows the ``wellkept`` project's own ``cpuinfo``, and the comparison of the
   real agents' module reports names both origins. With the plugin's wiring the same
   project runs its own code everywhere (tests/test_realprojects.py).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from pytest_hostperf import images
from pytest_hostperf.environments.base import AgentClient, AgentLaunch, Environment
from pytest_hostperf.environments.docker import DockerEnvironment
from pytest_hostperf.environments.native import NativeEnvironment
from pytest_hostperf.provenance import SHADOWED, compare_modules, merge

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent

#: What a controller computes in the project's venv (run there, as it would be in pytest).
CONTROLLER_VIEW = """
import json, sys
from pathlib import Path
from pytest_hostperf.dependencies import installed_distributions, plan_requirements
from pytest_hostperf.importroots import controller_import_roots
project = Path(sys.argv[1])
plan = plan_requirements(installed_distributions(), str(project))
print(json.dumps({"requirements": plan.requirements, "problems": plan.problems,
                  "roots": controller_import_roots(project)}))
"""


def controller_view(python: Path, project: Path) -> dict[str, Any]:
    out = subprocess.run([str(python), "-c", CONTROLLER_VIEW, str(project)], capture_output=True, text=True,
                         check=True, cwd=project)
    return json.loads(out.stdout)


def start(env: Environment, launch: AgentLaunch, test: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start the agent, run ``test`` once: (its merged module report, the run's result)."""
    client = AgentClient(env.name, env.start_agent(launch))
    try:
        hello = client.wait_ready(180)
        result = client.request({"op": "run", "nodeid": test, "mount": "", "mount_path": None,
                                 "benchmark_options": {"max_time": 0.02, "min_rounds": 3, "warmup": False}},
                                "result", 180, f"running {test}")
    finally:
        client.shutdown(timeout=10)
    return merge(hello.get("modules") or {}, result.get("modules") or {}), result


def outcome(result: dict[str, Any]) -> str:
    failures = [r.get("longrepr") for r in result.get("reports", []) if r.get("outcome") == "failed"]
    return f"{result['outcome']}: {failures or result.get('message', '')}"


@pytest.fixture(scope="module")
def wellkept(project_venv: Callable[[str], tuple[Path, Path]]) -> tuple[Path, Path, dict[str, Any]]:
    python, project = project_venv("wellkept")
    return python, project, controller_view(python, project)


def test_the_plan_pins_msgpack_and_leaves_out_the_project_and_hostperfs_own(
        wellkept: tuple[Path, Path, dict[str, Any]]) -> None:
    _, _, view = wellkept
    requirements = view["requirements"]
    assert "msgpack==1.1.0" in requirements
    assert not any(r.lower().startswith(("py-cpuinfo", "pytest-hostperf", "scipy", "docker"))
                   for r in requirements), requirements
    assert view["problems"] == []
    assert "src" in view["roots"]


def test_without_import_roots_the_images_release_shadows_the_project_and_both_origins_are_named(
        wellkept: tuple[Path, Path, dict[str, Any]], project_image: images.ImageRef, tmp_path: Path) -> None:
    """The stock image, no --import-root (the controller before issue #9): py-cpuinfo's release wins there."""
    python, project, view = wellkept
    test = "tests/test_collide.py::test_parse_flags"
    native = NativeEnvironment(tmp_path / "native", python=str(python))
    (tmp_path / "native").mkdir()
    try:
        native_modules, native_result = start(native, AgentLaunch(
            str(python), str(REPO), str(project), (test.split("::")[0],), (), "native",
            import_roots=tuple(view["roots"])), test)
    finally:
        native.stop()
    assert native_result["outcome"] == "passed", outcome(native_result)

    with DockerEnvironment(uuid.uuid4().hex[:12], project, tmp_path / "docker", image=project_image.tag) as docker:
        docker_modules, docker_result = start(docker, docker.launch((test.split("::")[0],)), test)
    assert docker_result["outcome"] == "failed"  # the project's own assertion, inside the container

    [mismatch] = [m for m in compare_modules(native_modules, docker_modules) if m.module == "cpuinfo"]
    assert mismatch.kind == SHADOWED
    reason = mismatch.reason("docker")
    assert "native the project's src/cpuinfo/__init__.py" in reason
    assert "docker site-packages/cpuinfo/__init__.py (py-cpuinfo " in reason, reason
