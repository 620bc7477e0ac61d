"""Same code everywhere (issue #9): what the agent reports about imported modules, and the
comparison with native that names every mismatch with both origins."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from pytest_hostperf.agent.origins import ImportTracker
from pytest_hostperf.provenance import (
    COMPILED,
    CONTENT,
    NOT_PROJECT,
    SHADOWED,
    VERSION,
    compare_modules,
    describe_origin,
    match_key,
    merge,
)

# -- what the agent reports ------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    package = tmp_path / "src" / "hp_probe_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from hp_probe_pkg import core\n")
    (package / "core.py").write_text("VALUE = 42\n")
    (package / "lazy.py").write_text("LATER = True\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    yield tmp_path
    for name in [n for n in sys.modules if n.partition(".")[0] == "hp_probe_pkg"]:
        del sys.modules[name]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def test_the_projects_module_is_reported_with_every_files_hash(project: Path) -> None:
    tracker = ImportTracker(str(project))
    tracker.report()
    import hp_probe_pkg  # noqa: F401

    entry = tracker.report()["hp_probe_pkg"]
    assert entry["origin"] == "project"
    assert entry["path"] == "src/hp_probe_pkg/__init__.py"
    assert entry["files"] == {"src/hp_probe_pkg/__init__.py": digest(project / "src/hp_probe_pkg/__init__.py"),
                              "src/hp_probe_pkg/core.py": digest(project / "src/hp_probe_pkg/core.py")}


def test_after_a_run_only_new_or_grown_modules_are_reported(project: Path) -> None:
    tracker = ImportTracker(str(project))
    import hp_probe_pkg  # noqa: F401

    assert "hp_probe_pkg" in tracker.report()
    assert tracker.report() == {}                     # nothing new
    import hp_probe_pkg.lazy  # noqa: F401

    grown = tracker.report()
    assert list(grown) == ["hp_probe_pkg"]             # re-described with its new file
    assert "src/hp_probe_pkg/lazy.py" in grown["hp_probe_pkg"]["files"]


def test_an_installed_module_is_reported_with_distribution_version_and_compiled_extensions() -> None:
    import psutil

    tracker = ImportTracker("/nonexistent-project")
    entry = tracker.describe("psutil")
    assert entry["origin"] == "site-packages"
    assert entry["path"].startswith("site-packages/psutil/")
    assert (entry["distribution"], entry["version"]) == ("psutil", psutil.__version__)
    assert any(name.startswith("psutil._psutil_") for name in entry["compiled"])


def test_the_distribution_is_found_when_its_name_differs_from_the_module(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A wheel without top_level.txt (hatch, flit, poetry build them): its RECORD says what it owns."""
    site = tmp_path / "lib" / "site-packages"
    (site / "hp_fancy_mod").mkdir(parents=True)
    (site / "hp_fancy_mod" / "__init__.py").write_text("")
    for name, version, files in (("aaa-first", "1.0", "aaa/__init__.py"),
                                 ("Fancy.Dist", "2.0", "hp_fancy_mod/__init__.py")):
        info = site / f"{name.replace('.', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "RECORD").write_text(f"{files},sha256=x,1\n{info.name}/METADATA,,\n")
    monkeypatch.syspath_prepend(str(site))
    import hp_fancy_mod  # noqa: F401

    try:
        entry = ImportTracker("/nonexistent-project").describe("hp_fancy_mod")
    finally:
        del sys.modules["hp_fancy_mod"]
    assert (entry["origin"], entry["path"]) == ("site-packages", "site-packages/hp_fancy_mod/__init__.py")
    assert (entry["distribution"], entry["version"]) == ("Fancy.Dist", "2.0")
    tracker = ImportTracker("/nonexistent-project")
    assert tracker.describe("_pytest")["distribution"] == "pytest"      # top_level.txt of pytest


def test_stdlib_the_agent_itself_and_start_up_hooks_are_left_out(project: Path) -> None:
    import json  # noqa: F401

    import pytest_hostperf.agent  # noqa: F401

    report = ImportTracker(str(project), startup=["_pytest"]).report()
    assert "json" not in report and "pytest_hostperf" not in report and "_pytest" not in report
    assert report["pytest"]["origin"] == "site-packages"


def test_modules_imported_before_collection_are_marked_harness(project: Path) -> None:
    tracker = ImportTracker(str(project))
    tracker.mark_harness()
    import hp_probe_pkg  # noqa: F401

    report = tracker.report()
    assert report["pytest"]["harness"] is True
    assert report["hp_probe_pkg"]["harness"] is False


# -- comparing with native --------------------------------------------------------------------

PROJECT_PLUGGY = {"origin": "project", "path": "src/pluggy/__init__.py", "distribution": "pluggy",
                  "version": "1.6.0", "harness": True,
                  "files": {"src/pluggy/__init__.py": "aaaa", "src/pluggy/_hooks.py": "bbbb"}}
RELEASED_PLUGGY = {"origin": "site-packages", "path": "site-packages/pluggy/__init__.py", "distribution": "pluggy",
                   "version": "1.5.0", "harness": True}
MSGPACK = {"origin": "site-packages", "path": "site-packages/msgpack/__init__.py", "distribution": "msgpack",
           "version": "1.0.8", "harness": False, "compiled": ["msgpack._cmsgpack"]}


def test_the_same_code_and_versions_compare_clean() -> None:
    report = {"pluggy": PROJECT_PLUGGY, "msgpack": MSGPACK}
    assert compare_modules(report, dict(report)) == []


def test_a_released_distribution_shadowing_the_project_names_both_origins() -> None:
    [found] = compare_modules({"pluggy": PROJECT_PLUGGY}, {"pluggy": RELEASED_PLUGGY})
    assert found.kind == SHADOWED
    assert found.reason("docker") == (
        "module 'pluggy' differs from native (shadowed): native the project's src/pluggy/__init__.py; "
        "docker site-packages/pluggy/__init__.py (pluggy 1.5.0); "
        "an installed distribution shadows the project's own code there")


def test_native_running_an_installed_copy_of_the_project_is_a_mismatch_too() -> None:
    [found] = compare_modules({"pluggy": RELEASED_PLUGGY}, {"pluggy": PROJECT_PLUGGY})
    assert found.kind == NOT_PROJECT


def test_different_content_names_the_files_and_files_only_one_side_loaded_do_not_count() -> None:
    other = {**PROJECT_PLUGGY, "files": {"src/pluggy/__init__.py": "aaaa", "src/pluggy/_hooks.py": "cccc",
                                         "src/pluggy/_tracing.py": "dddd"}}
    [found] = compare_modules({"pluggy": PROJECT_PLUGGY}, {"pluggy": other})
    assert found.kind == CONTENT and found.detail == "different content: src/pluggy/_hooks.py"


def test_another_version_or_a_missing_compiled_extension_is_a_mismatch() -> None:
    older = {**MSGPACK, "version": "1.0.7"}
    fallback = {**MSGPACK, "compiled": []}
    [version] = compare_modules({"msgpack": MSGPACK}, {"msgpack": older})
    [compiled] = compare_modules({"msgpack": MSGPACK}, {"msgpack": fallback})
    assert version.kind == VERSION and "(msgpack 1.0.8)" in version.native and "(msgpack 1.0.7)" in version.other
    assert compiled.kind == COMPILED and "native ['msgpack._cmsgpack'], there none" in compiled.detail


def test_harness_versions_are_compared_only_when_asked() -> None:
    pytest_8 = {"origin": "site-packages", "path": "site-packages/pytest/__init__.py", "distribution": "pytest",
                "version": "8.3.2", "harness": True}
    pytest_9 = {**pytest_8, "version": "9.0.0"}
    assert compare_modules({"pytest": pytest_8}, {"pytest": pytest_9}) == []
    assert [m.kind for m in compare_modules({"pytest": pytest_8}, {"pytest": pytest_9}, include_harness=True)] \
        == [VERSION]


def test_modules_only_one_side_imported_are_not_compared() -> None:
    assert compare_modules({"msgpack": MSGPACK}, {}) == []


def test_merge_applies_a_runs_delta() -> None:
    merged = merge({"pluggy": PROJECT_PLUGGY}, {"msgpack": MSGPACK, "pluggy": RELEASED_PLUGGY})
    assert merged == {"pluggy": RELEASED_PLUGGY, "msgpack": MSGPACK}


def test_match_key_counts_the_project_as_project_and_dependencies_by_version() -> None:
    harness_only = {"origin": "site-packages", "distribution": "pytest", "version": "8.3.2", "harness": True}
    assert match_key({"pluggy": PROJECT_PLUGGY, "msgpack": MSGPACK, "pytest": harness_only}) == {
        "msgpack": "msgpack==1.0.8", "pluggy": "project"}


def test_describe_origin() -> None:
    assert describe_origin(PROJECT_PLUGGY) == "the project's src/pluggy/__init__.py"
    assert describe_origin({"origin": "builtin"}) == "built in"
