"""Fixtures shared by the test modules that drive real engines."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from pytest_hostperf import images
from pytest_hostperf.environments.base import EnvironmentFailure

REPO = Path(__file__).resolve().parent.parent
PROJECTS = REPO / "tests" / "projects"
TINY = PROJECTS / "tiny"
#: The agent's own stack at this interpreter's versions, so a project venv's image is the
#: one the rest of the suite uses (and its VM disk is cached) until it adds dependencies.
AGENT_PINS = (f"pytest=={importlib.metadata.version('pytest')}",
              f"pytest-benchmark=={importlib.metadata.version('pytest-benchmark')}")
PROJECT_DEPENDENCIES = {"wellkept": ("msgpack==1.1.0",)}

#: (venv python, project copy) for a project under tests/projects/, made on first use.
ProjectVenvs = Callable[[str], "tuple[Path, Path]"]


def pytest_configure(config: pytest.Config) -> None:
    # pytester gives every test its own HOME, so each pytest session a test starts built its
    # own VM disk (~11 s), guest kernel, and probed KVM again (~5 s a VM) under ~/.cache.
    # The suite's sessions share the user's cache as one user's sessions do; the tests of
    # a cache itself (tests/test_vmimage.py, the prune test, the HTML cache) use their own.
    os.environ.setdefault("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))


@pytest.fixture(scope="session")
def engine() -> Any:
    """The Docker engine; skipped without one unless HOSTPERF_REQUIRE_DOCKER (CI) is set."""
    from pytest_hostperf.environments.docker import connect

    try:
        return connect()
    except EnvironmentFailure as exc:
        if os.environ.get("HOSTPERF_REQUIRE_DOCKER"):
            pytest.fail(f"HOSTPERF_REQUIRE_DOCKER is set but: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def project_image(engine: Any) -> images.ImageRef:
    # Builds the base too when the engine does not have it yet (about a minute, once).
    return images.ensure_image(engine, TINY)


def _clean_environ() -> dict[str, str]:
    drop = ("PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTHONDEVMODE", "PYTHONWARNINGS")
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.fixture
def clean_environ() -> dict[str, str]:
    """This process's environment without what would leak the outer run into a project's venv."""
    return _clean_environ()


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, env=_clean_environ(), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")


@pytest.fixture(scope="session")
def project_venv(tmp_path_factory: pytest.TempPathFactory) -> ProjectVenvs:
    """A test project copied to a temporary directory and installed editable in a fresh venv.

    As its developers work: a clean venv (no system site-packages) with pytest and
    pytest-benchmark at this interpreter's versions, pytest-hostperf from this checkout,
    the project's dependencies, and the project itself with ``pip install -e``.
    """
    made: dict[str, tuple[Path, Path]] = {}

    def make(name: str) -> tuple[Path, Path]:
        if name not in made:
            base = tmp_path_factory.mktemp(name)
            project = base / name
            shutil.copytree(PROJECTS / name, project)
            python = base / "venv" / "bin" / "python"
            # Made without ensurepip (10-40 s here under load): this interpreter's pip installs
            # pip itself into it with the rest (the controller downloads the image's wheels with it).
            _run([sys.executable, "-m", "venv", "--without-pip", str(base / "venv")])
            # --no-compile: byte-compiling scipy and the rest at install was ~20 s of ~45 here;
            # what runs is compiled on import instead.
            pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-compile",
                   "--disable-pip-version-check"]
            _run([*pip, f"pip=={importlib.metadata.version('pip')}", "setuptools", "wheel", *AGENT_PINS,
                  *PROJECT_DEPENDENCIES.get(name, ())])
            # setuptools' editable builds need no isolation (and no network) once wheel is there.
            _run([*pip, "--no-build-isolation", "-e", str(REPO)])
            _run([*pip, "--no-build-isolation", "--no-deps", "-e", str(project)])
            made[name] = (python, project)
        return made[name]

    return make
