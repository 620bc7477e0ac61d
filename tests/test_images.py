"""Offline image building: pure helpers directly, builds against the real engine."""

from __future__ import annotations

import importlib.metadata
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from pytest_hostperf import images
from pytest_hostperf.environments.base import session_alive

TINY = Path(__file__).parent / "projects" / "tiny"






# --------------------------------------------------------------------------- pure helpers

def test_mirror_from_deb822_sources(tmp_path: Path) -> None:
    sources = tmp_path / "debian.sources"
    sources.write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb deb-src\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n")
    assert images.host_debian_mirror([sources]) == "http://mirror.example/debian"


def test_mirror_from_one_line_sources(tmp_path: Path) -> None:
    sources = tmp_path / "sources.list"
    sources.write_text("# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main\n")
    assert images.host_debian_mirror([sources]) == "http://one.example/debian"
    assert images.host_debian_mirror([tmp_path / "missing"]) == images.DEFAULT_MIRROR


def test_requirements_pin_the_controllers_versions(tmp_path: Path) -> None:
    reqs = images.requirement_list(["iniconfig", " ", "iniconfig"])
    assert f"pytest=={importlib.metadata.version('pytest')}" in reqs
    assert f"pytest-benchmark=={importlib.metadata.version('pytest-benchmark')}" in reqs
    assert reqs == sorted(reqs) and reqs.count("iniconfig") == 1
    req_file = tmp_path / "requirements-perf.txt"
    req_file.write_text("# perf deps\nnumpy>=1.24  # fast\n\nattrs\n")
    assert images.read_requirements(req_file) == ["numpy>=1.24", "attrs"]
    req_file.write_text("--index-url http://x\n")
    with pytest.raises(images.ImageBuildError, match="option lines"):
        images.read_requirements(req_file)


def test_cache_key_depends_on_every_input() -> None:
    dockerfile = images.dockerfile_text("sha256:base", "pip-23.2.1-py3-none-any.whl")
    key = images.project_cache_key("sha256:base", ["b", "a"], dockerfile)
    assert key == images.project_cache_key("sha256:base", ["a", "b"], dockerfile)  # order-free
    assert key != images.project_cache_key("sha256:other", ["a", "b"], dockerfile)
    assert key != images.project_cache_key("sha256:base", ["a"], dockerfile)
    assert key != images.project_cache_key("sha256:base", ["a", "b"], dockerfile + "\n")


def test_dockerfile_installs_offline_into_a_venv_and_not_the_plugin() -> None:
    text = images.dockerfile_text("sha256:base", "pip-23.2.1-py3-none-any.whl")
    assert "--no-index" in text and images.VENV_PYTHON in text
    assert "pytest_hostperf" not in text and "pytest-hostperf" not in text


# --------------------------------------------------------------------------- real engine

@pytest.mark.docker
def test_base_image_is_labelled(engine: Any, project_image: images.ImageRef) -> None:
    labels = engine.images.get(images.BASE_TAG).labels
    assert labels[images.LABEL_KIND] == "base"
    assert labels[images.LABEL_HASH] and labels[images.LABEL_PYTHON_VERSION].startswith("3.")


@pytest.mark.docker
def test_cache_hit_builds_nothing(engine: Any, project_image: images.ImageRef) -> None:
    before = {image.id for image in engine.images.list(all=True)}
    started = time.monotonic()
    again = images.ensure_image(engine, TINY, progress=pytest.fail)  # any progress line = work done
    elapsed = time.monotonic() - started
    assert again.built is False and again.id == project_image.id and again.tag == project_image.tag
    assert elapsed < 0.5, f"cache hit took {elapsed:.3f} s"
    assert {image.id for image in engine.images.list(all=True)} == before


@pytest.mark.docker
def test_project_image_has_the_controllers_pytest_and_no_plugin(engine: Any,
                                                                project_image: images.ImageRef) -> None:
    labels = engine.images.get(project_image.tag).labels
    assert labels[images.LABEL_KIND] == "project"
    assert project_image.tag.endswith(":" + labels[images.LABEL_HASH][:16])
    assert labels[images.LABEL_PYTHON] == project_image.python
    code = ("import importlib.metadata as m, importlib.util as u; "
            "print(m.version('pytest'), m.version('pytest-benchmark'), u.find_spec('pytest_hostperf') is None)")
    out = engine.containers.run(project_image.tag, [project_image.python, "-c", code], remove=True,
                                network_mode="none").decode().split()
    assert out == [importlib.metadata.version("pytest"), importlib.metadata.version("pytest-benchmark"), "True"]


@pytest.mark.docker
def test_extra_requirements_make_a_new_image_built_offline(engine: Any, project_image: images.ImageRef) -> None:
    lines: list[str] = []
    ref = images.ensure_image(engine, TINY, requirements=["tomli"], progress=lines.append)
    try:
        assert ref.built is True and ref.tag != project_image.tag
        assert any("offline, network none" in line for line in lines)
        assert "tomli" in json.loads(engine.images.get(ref.tag).labels[images.LABEL_REQUIREMENTS])
        out = engine.containers.run(ref.tag, [ref.python, "-c", "import tomli; print('ok')"], remove=True,
                                    network_mode="none")
        assert out.strip() == b"ok"
    finally:
        engine.images.remove(ref.tag, force=True)


@pytest.mark.docker
def test_user_image_wins(engine: Any, project_image: images.ImageRef) -> None:
    ref = images.ensure_image(engine, TINY, user_image=project_image.tag, progress=pytest.fail)
    assert ref.kind == "user" and ref.built is False and ref.id == project_image.id
    with pytest.raises(images.ImageBuildError, match="not present on the engine"):
        images.ensure_image(engine, TINY, user_image="hostperf-no-such-image:latest")


@pytest.fixture
def dead_pid() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not session_alive(proc.pid)
    yield proc.pid


@pytest.mark.docker
def test_sweep_removes_leftovers_of_a_killed_build(engine: Any, project_image: images.ImageRef,
                                                   dead_pid: int) -> None:
    labels = {images.LABEL_KIND: images.KIND_BUILD_TEMP, images.LABEL_BUILD_PID: str(dead_pid),
              images.LABEL_BUILD_HOST: socket.gethostname()}
    container = engine.containers.create(project_image.tag, ["true"], labels=labels)
    removed = images.sweep_build_leftovers(engine, session_alive)
    assert f"container {container.name}" in removed
    assert not engine.containers.list(all=True, filters={"id": container.id})
    # Cached images are the cache: never swept.
    assert engine.images.get(project_image.tag)


def test_requirements_from_the_projects_ini_files(tmp_path: Path) -> None:
    assert images.requirements_from_project(tmp_path) == []
    (tmp_path / "requirements-perf.txt").write_text("attrs\n")
    (tmp_path / "setup.cfg").write_text("[metadata]\nname = x\n")  # no pytest section: skipped
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\nhostperf_requirements = ["numpy>=1.24", "-r requirements-perf.txt"]\n')
    assert images.requirements_from_project(tmp_path) == ["numpy>=1.24", "attrs"]
    (tmp_path / "pytest.ini").write_text("[pytest]\nhostperf_requirements =\n    tomli\n    # note\n")
    assert images.requirements_from_project(tmp_path) == ["tomli"]  # pytest.ini wins, like pytest
