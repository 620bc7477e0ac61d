"""Import roots: which directories of the project its code is imported from (issue #9).

The pure function against hand-made controller views, the editable-install readers
against real installs (setuptools' lenient ``.pth`` mode and strict ``__editable__``
finder mode, made by pip in a throwaway venv), and the agent putting the roots first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_hostperf.importroots import (
    ImportRootError,
    controller_import_roots,
    editable_installs,
    file_url_path,
    import_roots,
)

ROOT = "/work/proj"


def roots(sys_path: list[str], **kwargs: object) -> tuple[str, ...]:
    return import_roots(ROOT, sys_path, cwd="/elsewhere", **kwargs)  # type: ignore[arg-type]


def test_only_entries_inside_the_project_count_in_sys_path_order() -> None:
    sys_path = ["/usr/lib/python311.zip", "/work/proj/src", "/venv/lib/python3.11/site-packages", "/work/proj",
                "/work/other/src", "/work/projector"]
    assert roots(sys_path) == ("src", ".")


def test_pythonpath_ini_comes_first_and_duplicates_count_once() -> None:
    assert roots(["/work/proj", "/work/proj/lib"], pythonpath=["/work/proj/lib"]) == ("lib", ".")


def test_editable_dirs_come_after_sys_path() -> None:
    assert roots(["/work/proj/tests"], editable_dirs=["/work/proj/src", "/elsewhere/lib"]) == ("tests", "src")


def test_relative_and_empty_entries_are_taken_against_the_cwd() -> None:
    assert import_roots(ROOT, ["", "src", "../proj/lib/./"], cwd="/work/proj") == (".", "src", "lib")


def test_a_venv_inside_the_project_is_an_installation_not_a_root() -> None:
    sys_path = ["/work/proj/.venv/lib/python3.11/site-packages", "/work/proj/.venv/lib/python3.11/lib-dynload",
                "/work/proj/vendor/dist-packages", "/work/proj/src"]
    assert roots(sys_path, exclude=["/work/proj/.venv"]) == ("src",)


def test_file_urls() -> None:
    assert file_url_path("file:///tmp/my%20proj") == "/tmp/my proj"
    assert file_url_path("https://example.org/x.whl") is None


PYPROJECT = """
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"
[project]
name = "{name}"
version = "0.1"
[tool.setuptools]
packages = ["{package}"]
"""


def make_project(path: Path, name: str, package: str, src_layout: bool = True) -> Path:
    text = PYPROJECT.format(name=name, package=package)
    if src_layout:
        text += 'package-dir = {"" = "src"}\n'
    (path / ("src" if src_layout else ".") / package).mkdir(parents=True)
    (path / ("src" if src_layout else ".") / package / "__init__.py").write_text("VALUE = 1\n")
    (path / "pyproject.toml").write_text(text)
    return path


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv seeing the host's packages (setuptools for an offline --no-build-isolation build)."""
    path = tmp_path_factory.mktemp("venv")
    # Without a pip of its own (ensurepip is most of a venv's cost): the host's pip, seen
    # through the system site-packages, installs into it.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)], check=True)
    # setuptools < 70 builds wheels (editable ones too) through the separate `wheel` package.
    subprocess.run([str(path / "bin/python"), "-m", "pip", "install", "--quiet", "wheel"], check=True)
    return path


def pip_install_editable(venv: Path, project: Path, mode: str | None = None) -> None:
    settings = ["--config-settings", f"editable_mode={mode}"] if mode else []
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", *settings, "-e", str(project)], check=True, capture_output=True)


def editable_view(venv: Path) -> dict[str, dict[str, object]]:
    code = ("import json, dataclasses, sys; from pytest_hostperf.importroots import editable_installs; "
            "print(json.dumps({e.distribution: dataclasses.asdict(e) for e in editable_installs()}))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    out = subprocess.run([str(venv / "bin/python"), "-c", code], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout)


@pytest.mark.slow
def test_editable_installs_pth_link_tree_and_finder(venv: Path, tmp_path: Path) -> None:
    """setuptools' three editable mechanisms, each traced back to the project's real directory."""
    pth = make_project(tmp_path / "pth", "hp-pth", "hp_pth")                      # src layout: a .pth line
    tree = make_project(tmp_path / "tree", "hp-tree", "hp_tree")                  # strict: symlinks under build/
    finder = make_project(tmp_path / "finder", "hp-finder", "hp_finder", False)   # flat layout: a meta-path finder
    pip_install_editable(venv, pth)
    pip_install_editable(venv, tree, "strict")
    pip_install_editable(venv, finder)
    view = editable_view(venv)
    assert {name: (v["source_dir"], v["import_dirs"]) for name, v in view.items() if name.startswith("hp-")} == {
        "hp-pth": (str(pth), [str(pth / "src")]),
        "hp-tree": (str(tree), [str(tree / "src")]),
        "hp-finder": (str(finder), [str(finder)]),
    }
    assert import_roots(str(tree), [], cwd="/", editable_dirs=view["hp-tree"]["import_dirs"]) == ("src",)


def test_a_finder_mapping_a_package_to_a_differently_named_dir_is_unmappable(tmp_path: Path) -> None:
    """``package_dir={"pkg": "lib"}``: no sys.path entry gives ``import pkg`` from ``lib/``."""
    import importlib.metadata

    site = tmp_path / "site"
    info = site / "weird-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: weird\nVersion: 1.0\n")
    (info / "direct_url.json").write_text(json.dumps({"url": "file:///work/weird", "dir_info": {"editable": True}}))
    (info / "RECORD").write_text("__editable___weird_1_0_finder.py,,\nweird-1.0.dist-info/METADATA,,\n")
    (site / "__editable___weird_1_0_finder.py").write_text(
        "import sys\nMAPPING: dict = {'weird': '/work/weird/lib', 'good': '/work/weird/src/good'}\n")
    [install] = editable_installs(importlib.metadata.distributions(path=[str(site)]))
    assert install.source_dir == "/work/weird"
    assert install.import_dirs == ("/work/weird/src",)
    assert install.unmappable == {"weird": "/work/weird/lib"}

    # The controller refuses such a project (its roots could not reproduce it inside), naming the
    # package, where it is mapped from and the fix; another checkout's mapping is not the project's.
    with pytest.raises(ImportRootError, match=r"package 'weird' of weird .*/work/weird/lib.*name the directory"):
        controller_import_roots(Path("/work/weird"), installs=[install])
    assert controller_import_roots(tmp_path, installs=[install]) == ()


def put_first(rootdir: Path, *roots: str) -> list[str]:
    """The agent's start-up step in a fresh interpreter: where ``iniconfig`` is then imported from."""
    probe = ("import os, sys\n"
             "from pytest_hostperf.agent.__main__ import _put_import_roots_first\n"
             "try:\n"
             "    _put_import_roots_first(sys.argv[1], sys.argv[2:])\n"
             "except ValueError as exc:\n"
             "    sys.exit(print('ValueError:', exc))\n"
             "import iniconfig\n"
             "print(iniconfig.__file__)\n"
             "print(os.environ.get('PYTHONPATH', '').split(os.pathsep)[0])\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    out = subprocess.run([sys.executable, "-c", probe, str(rootdir), *roots], capture_output=True, text=True,
                         env=env, check=True)
    return out.stdout.splitlines()


def test_the_agent_puts_roots_ahead_of_an_installed_distribution_of_the_same_name(tmp_path: Path) -> None:
    # iniconfig is installed next to pytest; the project's own src/iniconfig must win.
    (tmp_path / "src/iniconfig").mkdir(parents=True)
    (tmp_path / "src/iniconfig/__init__.py").write_text("")
    module_file, first_pythonpath = put_first(tmp_path, "src")
    assert module_file == str(tmp_path / "src/iniconfig/__init__.py")
    assert first_pythonpath == str(tmp_path / "src")  # subprocesses of a test see it too


def test_without_roots_the_installed_distribution_wins(tmp_path: Path) -> None:
    (tmp_path / "src/iniconfig").mkdir(parents=True)
    (tmp_path / "src/iniconfig/__init__.py").write_text("")
    assert "site-packages" in put_first(tmp_path)[0]


@pytest.mark.parametrize("bad", ["../outside", "/etc", "src/../../x"])
def test_a_root_outside_the_project_is_refused_with_the_fix(tmp_path: Path, bad: str) -> None:
    [line] = put_first(tmp_path, bad)
    assert line.startswith("ValueError: --import-root") and "inside the project" in line
