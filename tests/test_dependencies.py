"""The image's requirements from the controller's environment (issue #9).

The pure planner against hand-made environments (reference answers worked out by hand),
the reader against this interpreter, and the compiled-wheel choice against the real index:
``pip download`` the way the image build does it must pick a manylinux wheel built for the
image's CPython, never an sdist or another interpreter's wheel.
"""

from __future__ import annotations

import platform
import re
import sys
from pathlib import Path

import pytest

from pytest_hostperf.dependencies import (
    Installed,
    RequirementError,
    canonical,
    check_entries,
    installed_distributions,
    plan_requirements,
)

PROJECT = "/work/proj"
ENV = {"python_version": "3.11", "python_full_version": "3.11.7", "sys_platform": "linux", "os_name": "posix",
       "platform_machine": "x86_64", "platform_system": "Linux", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "platform_release": "", "platform_version": "",
       "implementation_version": "3.11.7"}


def editable(url: str) -> dict[str, object]:
    return {"url": url, "dir_info": {"editable": True}}


#: A venv like a user's: the project editable, its dependency, a test tool, hostperf and its stack.
VENV = [
    Installed("myproj", "0.3.dev1", ("msgpack>=1", "attrs; extra == 'fast'"), editable("file:///work/proj")),
    Installed("msgpack", "1.0.8"),
    Installed("attrs", "23.2.0"),
    Installed("hypothesis", "6.100.0", ("attrs>=22", "sortedcontainers")),
    Installed("sortedcontainers", "2.4.0"),
    Installed("pytest", "8.3.2", ("iniconfig", "pluggy<2,>=1.5", "packaging", "tomli; python_version < '3.11'")),
    Installed("iniconfig", "2.0.0"),
    Installed("pluggy", "1.5.0"),
    Installed("packaging", "24.1"),
    Installed("tomli", "2.0.1"),
    Installed("pytest-benchmark", "4.0.0", ("pytest>=3.8", "py-cpuinfo")),
    Installed("py-cpuinfo", "9.0.0"),
    Installed("pytest-hostperf", "0.1.0", ("pytest>=7.4", "pytest-benchmark>=4", "docker>=6.1", "scipy>=1.10")),
    Installed("docker", "7.1.0", ("requests>=2.26", "urllib3>=1.26")),
    Installed("requests", "2.32.3", ("urllib3<3,>=1.21.1",)),
    Installed("urllib3", "2.2.2"),
    Installed("scipy", "1.14.0", ("numpy<2.3,>=1.23.5",)),
    Installed("numpy", "2.0.1"),
    Installed("pip", "24.2"),
    Installed("setuptools", "72.1.0"),
]


def plan(installed: list[Installed] = VENV, **kwargs: object):  # type: ignore[no-untyped-def]
    return plan_requirements(installed, PROJECT, marker_env=ENV, **kwargs)  # type: ignore[arg-type]


def test_pins_everything_the_project_and_the_user_need_and_nothing_of_hostperf() -> None:
    result = plan()
    assert result.requirements == (
        "attrs==23.2.0", "hypothesis==6.100.0", "iniconfig==2.0.0", "msgpack==1.0.8", "packaging==24.1",
        "pluggy==1.5.0", "py-cpuinfo==9.0.0", "pytest-benchmark==4.0.0", "pytest==8.3.2",
        "sortedcontainers==2.4.0",
        "tomli==2.0.1")  # pytest needs it only below 3.11; nothing else does, so the user installed it
    assert result.excluded == {
        "docker": "needed only by pytest-hostperf",
        "myproj": "the project itself (its code comes from the mounted tree)",
        "numpy": "needed only by pytest-hostperf", "pip": "installer tooling that nothing kept requires",
        "pytest-hostperf": "pytest-hostperf itself (the agent is shipped)",
        "requests": "needed only by pytest-hostperf", "scipy": "needed only by pytest-hostperf",
        "setuptools": "installer tooling that nothing kept requires",
        "urllib3": "needed only by pytest-hostperf",
    }
    assert result.problems == ()


def test_a_dependency_the_user_installed_stays_even_if_hostperf_needs_it_too() -> None:
    # numpy required by the project: it is the project's, whatever else also needs it.
    venv = [Installed("myproj", "1", ("numpy",), editable("file:///work/proj")), *VENV[1:]]
    assert "numpy==2.0.1" in plan(venv).requirements


def test_what_an_extra_pulls_in_belongs_to_whoever_asked_for_the_extra() -> None:
    # hostperf asking for docker[ssh] makes paramiko hostperf's; a user's app asking for
    # myproj[fast] makes attrs the app's.
    venv = [Installed("pytest-hostperf", "0.1.0", ("pytest", "pytest-benchmark", "docker[ssh]>=6.1")),
            Installed("docker", "7.1.0", ("requests>=2.26", "paramiko>=2.4.3; extra == 'ssh'")),
            Installed("paramiko", "3.4.0"),
            Installed("app", "1", ("myproj[fast]",)),
            Installed("myproj", "1", ("attrs; extra == 'fast'",), editable("file:///elsewhere/myproj")),
            Installed("attrs", "23.2.0"),
            *[d for d in VENV if d.name in ("pytest", "pytest-benchmark", "requests", "urllib3")]]
    result = plan(venv)
    assert result.excluded["paramiko"] == "needed only by pytest-hostperf"
    assert "attrs==23.2.0" in result.requirements


def test_a_cycle_of_the_users_stays_and_one_only_hostperf_reaches_goes() -> None:
    # sphinx and its contrib packages required each other for years; docker[ssh] stacks can too.
    venv = [Installed("sphinx", "7.0", ("sphinxcontrib-applehelp",)),
            Installed("sphinxcontrib-applehelp", "1.0", ("sphinx",)),
            Installed("pytest-hostperf", "0.1.0", ("pytest", "pytest-benchmark", "docker")),
            Installed("docker", "7.1.0", ("requests",)), Installed("requests", "2.32.3", ("docker",)),
            *[d for d in VENV if d.name in ("pytest", "pytest-benchmark", "py-cpuinfo", "iniconfig", "pluggy",
                                            "packaging")]]
    result = plan(venv)
    assert {"sphinx==7.0", "sphinxcontrib-applehelp==1.0"} <= set(result.requirements)
    assert result.excluded["docker"] == result.excluded["requests"] == "needed only by pytest-hostperf"


def test_pytest_and_pytest_benchmark_stay_even_when_only_hostperf_installed_them() -> None:
    venv = [d for d in VENV if d.name not in ("hypothesis", "sortedcontainers")]
    assert {"pytest==8.3.2", "pytest-benchmark==4.0.0"} <= set(plan(venv).requirements)


def test_a_plain_path_install_of_the_project_and_one_of_its_subprojects_are_the_project() -> None:
    venv = [Installed("myproj", "1", (), {"url": "file:///work/proj", "dir_info": {}}),
            Installed("plugin", "1", (), editable("file:///work/proj/plugins/one")),
            Installed("neighbour", "1", (), editable("file:///work/projector"))]
    result = plan(venv)
    assert {"myproj", "plugin"} <= set(result.excluded)
    assert "neighbour" not in result.excluded  # not inside the tree: a problem, below


def test_exclude_by_name_or_glob_and_replace_a_pin() -> None:
    result = plan(exclude=["Hypothesis", "sorted*"], extra=["msgpack<1.1", "ujson==5.10.0"])
    assert "hypothesis==6.100.0" not in result.requirements
    assert "sortedcontainers==2.4.0" not in result.requirements
    assert result.excluded["hypothesis"] == "named in hostperf_requirements_exclude"
    assert "msgpack<1.1" in result.requirements and "msgpack==1.0.8" not in result.requirements
    assert "ujson==5.10.0" in result.requirements


def test_excluding_everything_keeps_what_the_agent_runs_on() -> None:
    """``*``: the image gets pytest and pytest-benchmark at the controller's versions and the
    user's lines (pip resolves their dependencies), as before the image followed the environment."""
    result = plan(exclude=["*"], extra=["msgpack>=1"])
    assert result.requirements == ("msgpack>=1", "pytest-benchmark==4.0.0", "pytest==8.3.2")
    assert result.excluded["pluggy"] == result.excluded["hypothesis"] == "named in hostperf_requirements_exclude"
    assert check_entries(["msgpack>=1"], ["*", "types-*"]) is None
    with pytest.raises(RequirementError, match="'numpy==1'"):
        check_entries((), ["numpy==1"])


def test_what_cannot_be_downloaded_is_a_problem_with_the_fix_unless_the_user_replaces_it() -> None:
    venv = [*VENV, Installed("helper", "0.1", (), editable("file:///work/helper")),
            Installed("fork", "2.0", (), {"url": "https://github.com/x/fork", "vcs_info": {"vcs": "git"}})]
    result = plan(venv)
    assert not any(r.startswith(("helper", "fork")) for r in result.requirements)
    assert len(result.problems) == 2
    fork, helper = result.problems
    assert "fork==2.0 was installed from a VCS checkout (https://github.com/x/fork)" in fork
    assert "helper==0.1 was installed from a directory (file:///work/helper)" in helper
    assert "hostperf_requirements" in helper and "hostperf_requirements_exclude" in helper
    fixed = plan(venv, extra=["fork==2.0"], exclude=["helper"])
    assert fixed.problems == () and "fork==2.0" in fixed.requirements


@pytest.mark.parametrize("entry", ["not a requirement !", "numpy>=>1"])
def test_a_bad_extra_requirement_names_itself(entry: str) -> None:
    with pytest.raises(RequirementError, match=re.escape(repr(entry))):
        plan(extra=[entry])


def test_a_bad_exclude_entry_names_itself() -> None:
    with pytest.raises(RequirementError, match="hostperf_requirements_exclude entry 'numpy==1'"):
        plan(exclude=["numpy==1"])


def test_canonical_names() -> None:
    assert canonical("Foo_Bar.baz") == canonical("foo-bar-baz") == "foo-bar-baz"


def test_this_interpreters_distributions_are_read_with_versions_and_requirements() -> None:
    found = {canonical(d.name): d for d in installed_distributions()}
    assert found["pytest"].version == pytest.__version__
    assert any(line.startswith("pluggy") for line in found["pytest"].requires)


@pytest.mark.slow
def test_a_compiled_dependency_gets_a_manylinux_wheel_for_the_images_python(tmp_path: Path) -> None:
    """msgpack ships C extension wheels per CPython version and an sdist: the image build's
    ``pip download`` must pick the wheel for the image's interpreter and platform."""
    from pytest_hostperf.images.requirements import download_wheels

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    download_wheels(tmp_path / "wheels", ["msgpack==1.1.0"], version)
    [wheel] = [p.name for p in (tmp_path / "wheels").iterdir() if p.name.startswith("msgpack")]
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert wheel.startswith(f"msgpack-1.1.0-{tag}-{tag}-"), wheel
    assert "manylinux" in wheel and wheel.endswith(f"_{platform.machine()}.whl"), wheel


def test_the_image_dependencies_of_this_interpreter_name_what_cannot_be_fetched(tmp_path: Path) -> None:
    from pytest_hostperf.images import ImageBuildError, ImageDependencies

    only_the_agents = ImageDependencies(tmp_path, exclude=("*",)).requirements()
    assert only_the_agents == sorted([f"pytest=={pytest.__version__}",
                                      f"pytest-benchmark=={installed_version('pytest-benchmark')}"], key=str.lower)
    with pytest.raises(ImageBuildError, match=r"'numpy==1' is not a distribution name"):
        ImageDependencies(tmp_path, exclude=("numpy==1",)).requirements()


@pytest.mark.slow
def test_a_requirement_without_a_wheel_is_named_with_the_fix(tmp_path: Path) -> None:
    from pytest_hostperf.images import ImageBuildError
    from pytest_hostperf.images.requirements import download_wheels

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    with pytest.raises(ImageBuildError) as caught:
        download_wheels(tmp_path / "wheels", ["msgpack==0.0.1"], version)
    text = str(caught.value)
    assert f"no wheel of msgpack==0.0.1 for linux/{platform.machine()} python {version}" in text, text
    assert "hostperf_requirements_exclude" in text and "hostperf_requirements" in text


def installed_version(name: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(name)


def test_a_controller_without_pip_is_named_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """A venv made by uv or with --without-pip has no pip to download the image's wheels with."""
    import importlib.metadata

    from pytest_hostperf.images import ImageBuildError
    from pytest_hostperf.images.requirements import pip_requirement

    real_version = importlib.metadata.version

    def version(name: str) -> str:
        if name == "pip":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    named = rf"(?s)pip is not installed in {re.escape(sys.executable)}.*-m ensurepip"
    with pytest.raises(ImageBuildError, match=named):
        pip_requirement()
