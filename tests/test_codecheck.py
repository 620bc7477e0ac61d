"""Same code everywhere (issue #9): the run loop checks every environment's modules against native's.

Fake in-process agents (tests/fake_env.py) send module reports as real agents do (a full
report at ``ready``, a delta with each result); the real agents' reports are checked end
to end in tests/test_realprojects.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from fake_env import plan, samples, world

from pytest_hostperf.model import Outcome
from pytest_hostperf.options import DEFAULT_MAX_OVERHEAD
from pytest_hostperf.run.codecheck import CodeCheck
from pytest_hostperf.run.plan import PlanRunner
from pytest_hostperf.run.session import SessionRun

T1, T2 = "t.py::test_one", "t.py::test_two"
PROJECT = {"origin": "project", "path": "src/mylib/__init__.py", "files": {"src/mylib/__init__.py": "aa11"}}
SHADOWING = {"origin": "site-packages", "path": "site-packages/mylib/__init__.py", "distribution": "mylib",
             "version": "2.0"}


def installed(version: str, compiled: tuple[str, ...] = ()) -> dict[str, Any]:
    entry: dict[str, Any] = {"origin": "site-packages", "path": "site-packages/msgpack/__init__.py",
                             "distribution": "msgpack", "version": version}
    if compiled:
        entry["compiled"] = list(compiled)
    return entry


def ok(**extra: Any) -> dict[str, Any]:
    return {"samples": samples(1e-3), **extra}


def session(w: Any, tests: list[str], envs: list[str]) -> SessionRun:
    run = SessionRun(plan(tests, envs), w.pool, w.settings, DEFAULT_MAX_OVERHEAD)
    run.runner = PlanRunner(run.plan, w.pool, run.judge, w.settings, sleep=lambda s: None)
    return run


def test_a_mismatch_known_at_ready_fails_every_item_of_that_environment_unmeasured(tmp_path: Path) -> None:
    w = world(tmp_path, {"native": {T1: [ok()], T2: [ok()]}, "docker": {T1: [ok()], T2: [ok()]}})
    w.backends["native"].modules = {"mylib": PROJECT}
    w.backends["docker"].modules = {"mylib": SHADOWING}
    run = session(w, [T1, T2], ["native", "docker"])
    run.run_test(T1)
    run.run_test(T2)
    for test in (T1, T2):
        assert run.records[f"{test}[native]"].outcome is Outcome.PASSED
        record = run.records[f"{test}[docker]"]
        assert record.outcome is Outcome.FAILED and not record.samples
        assert record.reason == ("module 'mylib' differs from native (shadowed): native the project's "
                                 "src/mylib/__init__.py; docker site-packages/mylib/__init__.py (mylib 2.0); an "
                                 "installed distribution shadows the project's own code there")
    assert ("docker", T1) not in w.runs()  # nothing measured where the code is not the same


def test_a_mismatch_a_run_brings_fails_that_item_and_every_later_one(tmp_path: Path) -> None:
    w = world(tmp_path, {"native": {T1: [ok(modules={"msgpack": installed("1.1.0", ("msgpack._cmsgpack",))})],
                                    T2: [ok()]},
                         "docker": {T1: [ok(modules={"msgpack": installed("1.1.0")})], T2: [ok()]}})
    run = session(w, [T1, T2], ["native", "docker"])
    run.run_test(T1)
    run.run_test(T2)
    first, later = run.records[f"{T1}[docker]"], run.records[f"{T2}[docker]"]
    assert first.outcome is Outcome.FAILED and later.outcome is Outcome.FAILED
    assert "module 'msgpack' differs from native (compiled)" in first.reason
    assert "compiled extensions native ['msgpack._cmsgpack'], there none" in first.reason
    assert run.records[f"{T2}[native]"].outcome is Outcome.PASSED
    code = run.report()["environments"]["docker"]["code"]
    assert code["modules"]["msgpack"]["version"] == "1.1.0"
    assert [(m["module"], m["kind"]) for m in code["mismatches"]] == [("msgpack", "compiled")]
    assert run.report()["environments"]["native"]["code"]["mismatches"] == []


def test_the_same_code_everywhere_passes_and_reports_it(tmp_path: Path) -> None:
    same = {"mylib": PROJECT, "msgpack": installed("1.1.0")}
    w = world(tmp_path, {"native": {T1: [ok()]}, "docker": {T1: [ok()]}})
    w.backends["native"].modules = w.backends["docker"].modules = same
    run = session(w, [T1], ["native", "docker"])
    run.run_test(T1)
    assert [r.outcome for r in run.records.values()] == [Outcome.PASSED, Outcome.PASSED]
    assert run.report()["environments"]["docker"]["code"]["modules"] == same


def test_without_native_the_controllers_own_view_is_the_reference() -> None:
    check = CodeCheck(lambda: {"mylib": PROJECT})
    check.started("docker", {"mylib": dict(PROJECT, files={"src/mylib/__init__.py": "bb22"})})
    [mismatch] = check.mismatches("docker")
    assert (mismatch.kind, mismatch.detail) == ("content", "different content: src/mylib/__init__.py")
    check.started("native", {"mylib": dict(PROJECT, files={"src/mylib/__init__.py": "bb22"})})
    assert check.mismatches("docker") == []  # native's own report wins over the controller's view
    check.started("docker", {})  # a restarted agent starts from its own full report
    assert check.modules("docker") == {}


def test_a_dependency_version_splits_the_fingerprint_but_the_projects_content_does_not(tmp_path: Path) -> None:
    def fingerprint_id(modules: dict[str, Any]) -> str | None:
        w = world(tmp_path, {"docker": {T1: [ok()]}})
        w.backends["docker"].modules = modules
        w.pool.agent("docker", plan([T1], ["docker"]).agent_args)
        return w.pool.state("docker").fingerprint_id

    plain = fingerprint_id({})
    v1 = fingerprint_id({"mylib": PROJECT, "msgpack": installed("1.0.8")})
    assert v1 != plain and v1 != fingerprint_id({"mylib": PROJECT, "msgpack": installed("1.1.0")})
    edited = dict(PROJECT, files={"src/mylib/__init__.py": "cc33"})
    assert fingerprint_id({"mylib": edited, "msgpack": installed("1.0.8")}) == v1
    harness = dict(installed("9.9"), harness=True)  # pytest's own imports do not split baselines
    assert fingerprint_id({"mylib": PROJECT, "msgpack": installed("1.0.8"), "pluggy": harness}) == v1


def test_every_agent_gets_the_import_roots(tmp_path: Path) -> None:
    w = world(tmp_path, {"native": {T1: [ok()]}, "docker": {T1: [ok()]}})
    args = dataclasses.replace(plan([T1], ["native"]).agent_args, import_roots=("src", "."))
    for env in ("native", "docker"):
        w.pool.agent(env, args)
        [launch] = w.backends[env].launches
        assert launch.import_roots == ("src", ".")
        argv = launch.argv()
        assert argv[argv.index("--import-root"):argv.index("--")] == ["--import-root", "src", "--import-root", "."]
