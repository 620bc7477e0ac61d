"""What goes into an image besides the base system: pytest, pytest-benchmark, the project's needs.

Requirements come from the controller's environment (:class:`ImageDependencies`: every
distribution installed next to pytest at its exact version, planned by
:mod:`pytest_hostperf.dependencies`) and the project (``hostperf_requirements`` adds,
``hostperf_requirements_exclude`` leaves out). Wheels are downloaded *on the host* with
the host's pip configuration, for the image's interpreter, and installed with
``--no-index``: images are built with no network at all. This is the one wheels step of
the project image and of the Docker-less VM root filesystem.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Sequence

from pytest_hostperf.environments.labels import owned_temp_dir
from pytest_hostperf.images.ref import ImageBuildError


def default_requirements() -> list[str]:
    """pytest and pytest-benchmark pinned to the versions the controller runs."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in ("pytest", "pytest-benchmark")]


def read_requirements(path: Path) -> list[str]:
    """Requirement lines of a simple requirements file (comments and blanks skipped).

    Options (``-r``, ``--index-url``...) are rejected: the wheels are fetched on the
    host with the host's pip configuration, and the build itself is offline.
    """
    result: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise ImageBuildError("project", f"{path}: option lines are not supported: {line!r}",
                                  hint="list plain requirement specifiers, one per line")
        result.append(line)
    return result


@dataclasses.dataclass(frozen=True)
class ImageDependencies:
    """The image's requirements, planned from the controller's environment for a project.

    ``extra`` are ``hostperf_requirements`` lines (a line naming an installed distribution
    replaces its pin); ``exclude`` are ``hostperf_requirements_exclude`` names or globs.
    """

    project_dir: Path
    extra: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def requirements(self) -> list[str]:
        """Pinned requirement lines; raises :class:`ImageBuildError` naming what cannot be fetched."""
        from pytest_hostperf.dependencies import RequirementError, installed_distributions, plan_requirements

        try:
            plan = plan_requirements(installed_distributions(), str(self.project_dir), self.extra, self.exclude)
        except RequirementError as exc:
            raise ImageBuildError("project", str(exc)) from None
        if plan.problems:
            raise ImageBuildError("project", "the image gets what this environment has installed, but "
                                  + "; ".join(plan.problems))
        return list(plan.requirements)


def requirements_from_project(project_dir: Path, key: str = "hostperf_requirements") -> list[str]:
    """An ini key's lines (``hostperf_requirements`` by default) from the project's ini file.

    Found the way pytest finds it: the first of pytest.ini, .pytest.ini, pyproject.toml
    ([tool.pytest.ini_options]), tox.ini ([pytest]) and setup.cfg ([tool:pytest]) that has
    a pytest section wins. An entry ``-r FILE`` includes a requirements file relative to
    the project.
    """
    for name, section in (("pytest.ini", "pytest"), (".pytest.ini", "pytest"), ("pyproject.toml", None),
                          ("tox.ini", "pytest"), ("setup.cfg", "tool:pytest")):
        path = project_dir / name
        if not path.is_file():
            continue
        found = _ini_value(path, section, key) if section else _toml_value(path, key)
        if found is None:
            continue  # no pytest section here: pytest keeps looking, so do we
        return expand_requirement_entries(project_dir, found)
    return []


def _ini_value(path: Path, section: str, key: str) -> list[str] | None:
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path)
    if not parser.has_section(section):
        return [] if path.name in ("pytest.ini", ".pytest.ini") else None
    return parser.get(section, key, fallback="").splitlines()


def _toml_value(path: Path, key: str) -> list[str] | None:
    try:
        import tomllib
    except ImportError:  # Python < 3.11: pytest itself depends on tomli there
        import tomli as tomllib  # type: ignore[no-redef]
    options = tomllib.loads(path.read_text()).get("tool", {}).get("pytest", {}).get("ini_options")
    if options is None:
        return None
    value = options.get(key, [])
    return value.splitlines() if isinstance(value, str) else [str(v) for v in value]


def expand_requirement_entries(project_dir: Path, entries: Iterable[str]) -> list[str]:
    """Requirement lines, with each ``-r FILE`` entry replaced by that file's lines (relative to the project)."""
    result: list[str] = []
    for entry in (e.strip() for e in entries):
        if entry.startswith("-r"):
            result += read_requirements(project_dir / entry[2:].strip())
        elif entry and not entry.startswith("#"):
            result.append(entry)
    return result


def requirement_list(extra: Iterable[str] = ()) -> list[str]:
    """Sorted, de-duplicated requirements for an image (defaults + ``extra``)."""
    return sorted(set(default_requirements()) | {r.strip() for r in extra if r.strip()})


def pip_wheel_name() -> str:
    """The file name of the host pip's own wheel (the image's venv is made without pip)."""
    return f"pip-{host_pip_version()}-py3-none-any.whl"


def pip_requirement() -> str:
    return f"pip=={host_pip_version()}"


def host_pip_version() -> str:
    """The version of pip in the controller's interpreter, which downloads the image's wheels."""
    try:
        return importlib.metadata.version("pip")
    except importlib.metadata.PackageNotFoundError:
        raise ImageBuildError("project", f"pip is not installed in {sys.executable}",
                              hint="the image's wheels are downloaded with the pip of the interpreter pytest "
                                   f"runs in (a venv made with --without-pip or by uv has none): "
                                   f"{sys.executable} -m ensurepip, or install pip into it") from None


def download_wheels(dest: Path, requirements: Sequence[str], python_version: str, step: str = "project") -> None:
    """Wheels for a Debian bookworm interpreter of ``python_version``, fetched by the host's pip."""
    dest.mkdir(parents=True, exist_ok=True)
    machine = platform.machine()
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet",
            "--only-binary=:all:", "--dest", str(dest),
            "--python-version", python_version, "--implementation", "cp",
            # glibc of bookworm is 2.36; pip expands each manylinux tag to the older ones.
            "--platform", f"manylinux_2_36_{machine}", "--platform", f"manylinux2014_{machine}",
            "--platform", "linux_" + machine, *requirements]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        missing = _unavailable(result.stderr)
        head = f"pip download exited with {result.returncode}"
        if missing:
            head += f": no wheel of {missing} for linux/{machine} python {python_version}"
        raise ImageBuildError(step, head,
                              hint="every requirement needs a wheel for linux/"
                                   f"{machine} python {python_version}, and the host must reach "
                                   "the package index (pip config applies); leave a distribution out with "
                                   "hostperf_requirements_exclude, or pin another version of it in "
                                   "hostperf_requirements",
                              output=result.stderr or result.stdout)


def _unavailable(pip_stderr: str) -> str:
    """The requirement pip found no distribution for (its "No matching distribution" line), or ''."""
    found = re.search(r"No matching distribution found for (\S+)", pip_stderr)
    return found.group(1) if found else ""


def install_into_rootfs(rootfs: Path, requirements: Sequence[str], python_version: str) -> None:
    """Download wheels and install them into ``rootfs``'s dist-packages, offline."""
    with owned_temp_dir("wheels") as wheels:
        download_wheels(wheels, requirements, python_version, step="VM root filesystem")
        target = rootfs / f"usr/local/lib/python{python_version}/dist-packages"
        same_minor = python_version == f"{sys.version_info[0]}.{sys.version_info[1]}"
        argv = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
                "--find-links", str(wheels), "--target", str(target),
                # the host's .pyc files are valid inside only for the same python minor
                *([] if same_minor else ["--no-compile"]), *requirements]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ImageBuildError("VM root filesystem", f"pip install --target {target} exited with "
                                  f"{result.returncode}", output=result.stderr or result.stdout)
