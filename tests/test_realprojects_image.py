"""The building blocks of issue #9 end to end in docker, before they are wired in.

What the controller and the image build will do after integration, done here by hand
with the real pieces, against the real engine:

1. In the ``compiled`` project's own venv (editable install, msgpack installed), the
   dependency plan (:mod:`pytest_hostperf.dependencies`) and the import roots
   (:mod:`pytest_hostperf.importroots`) are computed as the controller would.
2. A scratch image ``FROM`` the hostperf base image gets exactly the planned
   requirements, as manylinux wheels downloaded on the host and installed offline.
3. The agent runs in it with ``--import-root``; its module report is compared with the
   native agent's (:func:`pytest_hostperf.provenance.compare_modules`): no mismatch, the
   project's own module from the mounted tree, msgpack's C extension loaded.

And the other way round: today's docker run of the ``collide`` project (no import roots,
the stock image) is caught by the comparison, which names both origins.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from pytest_hostperf import images
from pytest_hostperf.environments.base import AgentClient, AgentLaunch, Environment
from pytest_hostperf.environments.docker import DockerEnvironment
from pytest_hostperf.environments.native import NativeEnvironment
from pytest_hostperf.images.requirements import download_wheels, pip_requirement, pip_wheel_name
from pytest_hostperf.provenance import SHADOWED, compare_modules, merge

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
SCRATCH_REPOSITORY = "hostperf-scratch-realprojects"

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


@dataclasses.dataclass(frozen=True)
class RootedLaunch(AgentLaunch):
    """The agent launch with the import roots the controller will pass after integration."""

    import_roots: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        argv = super().argv()
        split = argv.index("--")
        return [*argv[:split], *(a for root in self.import_roots for a in ("--import-root", root)), *argv[split:]]


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
def compiled(project_venv: Callable[[str], tuple[Path, Path]]) -> tuple[Path, Path, dict[str, Any]]:
    python, project = project_venv("compiled")
    return python, project, controller_view(python, project)


@pytest.fixture(scope="module")
def scratch_image(engine: Any, compiled: tuple[Path, Path, dict[str, Any]],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An image FROM the base with the plan's requirements only, removed afterwards."""
    _, _, view = compiled
    base = engine.images.get(images.BASE_TAG) if _has(engine, images.BASE_TAG) else None
    if base is None:
        images.build_base_image(engine)
        base = engine.images.get(images.BASE_TAG)
    python_version = (base.labels or {}).get(images.LABEL_PYTHON_VERSION) or "3.11"
    context = tmp_path_factory.mktemp("scratch-image")
    requirements = list(view["requirements"])
    download_wheels(context / "wheels", [*requirements, pip_requirement()], python_version)
    (context / "wheels" / "requirements.txt").write_text("\n".join(requirements) + "\n")
    (context / "Dockerfile").write_text(images.dockerfile_text(str(base.id), pip_wheel_name()))
    tag = f"{SCRATCH_REPOSITORY}:{uuid.uuid4().hex[:12]}"
    # Build labels as hostperf's own builds have them, so a killed build's layers are swept.
    engine.images.build(path=str(context), tag=tag, network_mode="none", rm=True, forcerm=True,
                        buildargs={"HOSTPERF_BUILD_PID": str(os.getpid()), "HOSTPERF_BUILD_HOST": socket.gethostname()})
    try:
        yield tag
    finally:
        engine.images.remove(tag, force=True)


def _has(engine: Any, tag: str) -> bool:
    import docker.errors

    try:
        engine.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def test_the_plan_pins_msgpack_and_leaves_out_the_project_and_hostperfs_own(
        compiled: tuple[Path, Path, dict[str, Any]]) -> None:
    _, _, view = compiled
    requirements = view["requirements"]
    assert "msgpack==1.1.0" in requirements
    assert not any(r.lower().startswith(("hostperf-demo-compiled", "pytest-hostperf", "scipy", "docker"))
                   for r in requirements), requirements
    assert view["problems"] == []
    assert "src" in view["roots"]


def test_the_scratch_image_runs_the_same_code_as_native(compiled: tuple[Path, Path, dict[str, Any]],
                                                       scratch_image: str, tmp_path: Path) -> None:
    python, project, view = compiled
    test = "tests/test_compiled.py::test_round_trip"
    roots = tuple(view["roots"])
    native = NativeEnvironment(tmp_path / "native", python=str(python))
    (tmp_path / "native").mkdir()
    native_launch = RootedLaunch(str(python), str(REPO), str(project), (test.split("::")[0],), (), "native",
                                 import_roots=roots)
    try:
        native_modules, native_result = start(native, native_launch, test)
    finally:
        native.stop()
    assert native_result["outcome"] == "passed", outcome(native_result)

    with DockerEnvironment(uuid.uuid4().hex[:12], project, tmp_path / "docker", image=scratch_image) as docker:
        launch = RootedLaunch(**dataclasses.asdict(docker.launch((test.split("::")[0],))), import_roots=roots)
        docker_modules, docker_result = start(docker, launch, test)
    assert docker_result["outcome"] == "passed", outcome(docker_result)

    assert compare_modules(native_modules, docker_modules) == []
    msgpack = docker_modules["msgpack"]
    assert (msgpack["origin"], msgpack["version"]) == ("site-packages", "1.1.0")
    assert "msgpack._cmsgpack" in msgpack["compiled"]                    # the wheel's C extension, loaded
    assert docker_modules["hp_compiled"]["origin"] == "project"
    assert docker_modules["hp_compiled"]["files"] == native_modules["hp_compiled"]["files"]


def test_todays_docker_run_of_a_colliding_project_is_caught_with_both_origins(
        project_venv: Callable[[str], tuple[Path, Path]], project_image: images.ImageRef, tmp_path: Path) -> None:
    """No import roots in the stock image: py-cpuinfo's release shadows the project's cpuinfo."""
    python, project = project_venv("collide")
    view = controller_view(python, project)
    test = "tests/test_collide.py::test_parse_flags"
    native = NativeEnvironment(tmp_path / "native", python=str(python))
    (tmp_path / "native").mkdir()
    try:
        native_modules, native_result = start(native, RootedLaunch(
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
