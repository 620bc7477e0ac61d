"""Offline image building: pure helpers directly, builds against the real engine."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from pytest_hostperf import images
from pytest_hostperf.environments import labels as owner_labels
from pytest_hostperf.environments.process import process_alive
from pytest_hostperf.progress import Reporter

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
    again = images.ensure_image(engine, TINY, reporter=Reporter(pytest.fail))  # any progress line = work done
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
    ref = images.ensure_image(engine, TINY, requirements=["tomli"], reporter=Reporter(lines.append))
    try:
        assert ref.built is True and ref.tag != project_image.tag
        assert any("offline, network none" in line for line in lines)
        assert "tomli" in json.loads(engine.images.get(ref.tag).labels[images.LABEL_REQUIREMENTS])
        out = engine.containers.run(ref.tag, [ref.python, "-c", "import tomli; print('ok')"], remove=True,
                                    network_mode="none")
        assert out.strip() == b"ok"
        # Nothing of the build's own steps is left, not even the engine's LABEL step
        # container that the legacy builder sometimes leaves in "created".
        digest = engine.images.get(ref.tag).labels[images.LABEL_HASH]
        assert not engine.containers.list(all=True, filters={"label": f"{images.LABEL_HASH}={digest}"})
    finally:
        engine.images.remove(ref.tag, force=True)


@pytest.mark.docker
def test_user_image_wins(engine: Any, project_image: images.ImageRef) -> None:
    ref = images.ensure_image(engine, TINY, user_image=project_image.tag, reporter=Reporter(pytest.fail))
    assert ref.kind == "user" and ref.built is False and ref.id == project_image.id
    with pytest.raises(images.ImageBuildError, match="not present on the engine"):
        images.ensure_image(engine, TINY, user_image="hostperf-no-such-image:latest")


@pytest.fixture
def dead_pid() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not process_alive(proc.pid)
    yield proc.pid


@pytest.mark.docker
def test_sweep_removes_leftovers_of_a_killed_build(engine: Any, project_image: images.ImageRef,
                                                   dead_pid: int) -> None:
    here = owner_labels.Owner.current()
    dead = owner_labels.Owner(dead_pid, socket.gethostname(), here.boot_id, here.pid_ns, None)
    labels = {images.LABEL_KIND: images.KIND_BUILD_TEMP, **dead.labels()}
    container = engine.containers.create(project_image.tag, ["true"], labels=labels)
    live = engine.containers.create(project_image.tag, ["true"], labels={**labels, **here.labels()})
    try:
        removed = images.sweep_build_leftovers(engine)
        assert f"container {live.name}" not in removed   # its build (this process) still runs
    finally:
        live.remove(force=True)
    assert f"container {container.name}" in removed
    assert not engine.containers.list(all=True, filters={"id": container.id})
    # Cached images are the cache: never swept.
    assert engine.images.get(project_image.tag)


@pytest.mark.docker
def test_sweep_removes_a_build_step_container_left_in_created(engine: Any, project_image: images.ImageRef,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # What an interrupted build left here: the engine's own LABEL step, with the image's
    # labels and no owner. Any age counts as stale for the test; a container that is not a
    # build step (no "#(nop)") is never touched.
    from pytest_hostperf.images import project

    step = engine.containers.create(project_image.tag, ["/bin/sh", "-c", "#(nop) ", "LABEL x=y"])
    other = engine.containers.create(project_image.tag, ["true"])
    try:
        monkeypatch.setattr(project, "STALE_STEP_S", -1.0)
        removed = images.sweep_build_leftovers(engine)
        assert f"container {step.name}" in removed and f"container {other.name}" not in removed
        assert not engine.containers.list(all=True, filters={"id": step.id})
    finally:
        for container in engine.containers.list(all=True, filters={"id": [step.id, other.id]}):
            container.remove(force=True)


def test_a_build_step_is_stale_only_when_old() -> None:
    from pytest_hostperf.images.project import _is_stale_build_step

    step = {"Config": {"Cmd": ["/bin/sh", "-c", "#(nop) ", "LABEL a=b"]}}
    assert _is_stale_build_step({**step, "Created": "2026-01-01T00:00:00.123456789Z"})
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000000001Z")
    assert not _is_stale_build_step({**step, "Created": now})
    assert not _is_stale_build_step({"Config": {"Cmd": ["true"]}, "Created": "2026-01-01T00:00:00Z"})
    assert not _is_stale_build_step({**step, "Created": "garbage"})


def test_requirements_from_the_projects_ini_files(tmp_path: Path) -> None:
    assert images.requirements_from_project(tmp_path) == []
    (tmp_path / "requirements-perf.txt").write_text("attrs\n")
    (tmp_path / "setup.cfg").write_text("[metadata]\nname = x\n")  # no pytest section: skipped
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\nhostperf_requirements = ["numpy>=1.24", "-r requirements-perf.txt"]\n')
    assert images.requirements_from_project(tmp_path) == ["numpy>=1.24", "attrs"]
    (tmp_path / "pytest.ini").write_text("[pytest]\nhostperf_requirements =\n    tomli\n    # note\n")
    assert images.requirements_from_project(tmp_path) == ["tomli"]  # pytest.ini wins, like pytest


# --------------------------------------------------------------------------- hostperf image prune

def _fake_disk(cache: Path, name: str, key: str) -> Path:
    directory = cache / name
    directory.mkdir(parents=True)
    (directory / "disk.json").write_text(json.dumps({"key": key, "path": "disk.img", "kernel": "vmlinuz"}))
    (directory / "disk.img").write_bytes(b"\1" * 65536)
    return directory


@pytest.mark.docker
def test_prune_lists_sizes_keeps_what_the_project_uses_and_removes_the_rest(
        engine: Any, project_image: images.ImageRef, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 8.8: images and VM disks piled up with no way out."""
    from pytest_hostperf import cli
    from pytest_hostperf.environments.ship import human_size
    from pytest_hostperf.images.prune import apply_prune, plan_prune
    from pytest_hostperf.vm.cache import disk_usage

    (tmp_path / "ctx").mkdir()
    # The LABEL step's container carries the mark: the legacy builder sometimes leaves it in
    # "created" even after a successful build (seen twice in CI runs of 2026-12-08).
    mark = f"io.hostperf.test-prune={os.getpid()}"
    (tmp_path / "ctx" / "Dockerfile").write_text(f"FROM {images.BASE_TAG}\nLABEL {images.LABEL_KIND}=project {mark}\n")
    stale_tag = f"{images.PROJECT_REPOSITORY}:prunetest-{os.getpid()}"
    stale, _ = engine.images.build(path=str(tmp_path / "ctx"), tag=stale_tag, network_mode="none", forcerm=True)
    for step in engine.containers.list(all=True, filters={"label": mark, "status": "created"}):
        step.remove(force=True)
    cache = tmp_path / "xdg" / "pytest-hostperf" / "vm"
    current_disk = _fake_disk(cache, "current", project_image.id)
    old_disk = _fake_disk(cache, "old", "sha256:an-image-of-last-month")
    killed_build = cache / ".build-0123456789abcdef0123-xyz"
    (killed_build / "rootfs").mkdir(parents=True)
    (killed_build / "rootfs" / "big").write_bytes(b"\1" * 65536)
    try:
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert cli.main(["image", "prune", "--project", str(TINY), "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert "keep    image" in out and project_image.tag in out
        (stale_line,) = [line for line in out.splitlines() if stale_tag in line]
        assert stale_line.startswith("remove  image") and " MB" in stale_line
        (old_line,) = [line for line in out.splitlines() if str(old_disk) in line]
        assert old_line.startswith("remove  VM disk") and f" {human_size(disk_usage(old_disk))} " in old_line
        assert [line for line in out.splitlines() if str(current_disk) in line][0].startswith("keep")
        assert [line for line in out.splitlines() if str(killed_build) in line][0].startswith("remove  build leftover")
        assert "nothing removed" in out and engine.images.get(stale_tag) and old_disk.is_dir()

        entries = plan_prune(engine, TINY, cache_dir=cache)
        assert not [e for e in entries if e.remove and project_image.tag in e.name]
        # Remove only what this test made: the engine is shared with other sessions.
        mine = [e for e in entries if e.ref in (stale.id, str(old_disk), str(killed_build))]
        assert len(mine) == 3 and all(e.remove for e in mine)
        assert [outcome for _, outcome in apply_prune(engine, mine)] == ["removed"] * 3
        assert not old_disk.exists() and not killed_build.exists() and current_disk.is_dir()
        assert not engine.images.list(name=stale_tag)
        assert engine.images.get(project_image.tag)
    finally:
        try:
            engine.images.remove(stale_tag, force=True)
        except Exception:  # noqa: BLE001 - removed by the test itself
            pass
