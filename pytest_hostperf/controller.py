"""The controller's pytest hooks: one item per environment, reports from agents' results.

Registered by :mod:`pytest_hostperf.plugin` only with ``--hostperf``. The work is done by
:class:`~pytest_hostperf.session.HostperfSession`; this module translates between pytest
and it.
"""

from __future__ import annotations

import atexit
import os
import signal
from pathlib import Path
from typing import Any, Iterator

import pytest

from pytest_hostperf import report
from pytest_hostperf.environments.registry import create_backend
from pytest_hostperf.session import FORWARDED_BENCHMARK_OPTIONS, HostperfSession, Request, Result
from pytest_hostperf.settings import Settings
from pytest_hostperf.targets import MarkerError, MarkerSettings, Target, parse_marker, plan_targets

TARGET_ARG = "_hostperf_target"
REQUEST_KEY = pytest.StashKey[Request]()


class HostperfPlugin:
    """The controller's hooks, registered only with ``--hostperf``."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.session = HostperfSession(settings, self._progress, create_backend)
        self.groups: dict[str, list[pytest.Item]] = {}
        self._install_cleanup()
        self._start_native_early(config)

    # -- lifecycle ------------------------------------------------------------------------

    def _progress(self, line: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(line)

    def _install_cleanup(self) -> None:
        # pytest turns SIGINT into KeyboardInterrupt and still unconfigures; SIGTERM and a
        # hard interpreter exit get the same cleanup here. SIGKILL cannot be caught: every
        # backend labels what it creates and sweeps stale resources at the next start.
        atexit.register(self.session.stop_all)
        if hasattr(signal, "SIGTERM") and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            def on_term(signum: int, frame: Any) -> None:
                raise KeyboardInterrupt(f"signal {signum}")

            signal.signal(signal.SIGTERM, on_term)

    def _start_native_early(self, config: pytest.Config) -> None:
        """Start the native agent now, before collection, as xdist starts its workers.

        The agent is a second pytest start-up (~0.4 s, plus pytest-benchmark's 1 s timer
        probe); begun here it overlaps the controller's own plugin imports and
        collection. It collects what the invocation names, which holds every item the
        controller will collect. Other environments start after collection, when it is
        known that a test uses them (a VM boot is not worth risking on a guess).
        """
        if "native" not in self.session.settings.envs or config.option.pyargs:
            return
        files = _invocation_paths(config)
        if files is None:
            return
        self.session.test_files = files
        self.session.pytest_args = _forwarded_args(config)
        self.session.prestart(["native"])

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.session.stop_all()
        atexit.unregister(self.session.stop_all)

    # -- collection -----------------------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "benchmark" not in metafunc.fixturenames:
            return
        marker = metafunc.definition.get_closest_marker("hostperf")
        try:
            settings = parse_marker(marker.kwargs, marker.args) if marker else MarkerSettings()
        except MarkerError as exc:
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: @pytest.mark.hostperf: {exc}") from None
        uses_dir = "hostperf_dir" in metafunc.fixturenames
        targets = plan_targets(self.session.settings.envs, settings, uses_dir)
        if not targets:
            raise pytest.UsageError(
                f"{metafunc.definition.nodeid}: @pytest.mark.hostperf(envs={list(settings.envs or ())}) "
                f"selects none of the session's environments ({','.join(self.session.settings.envs)})")
        # A parameter the test function does not declare (as pytest-repeat does): it only
        # gives each environment its own item and id.
        metafunc.fixturenames.append(TARGET_ARG)
        metafunc.parametrize(TARGET_ARG, targets, ids=[t.id for t in targets])

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        files: set[str] = set()
        self.groups.clear()
        for item in session.items:
            target = _target_of(item)
            if target is None:
                continue
            marker = item.get_closest_marker("hostperf")
            settings = parse_marker(marker.kwargs) if marker else MarkerSettings()
            test = _agent_nodeid(item, target)
            item.stash[REQUEST_KEY] = Request(item.nodeid, test, target, settings.tolerance, settings.max_overhead)
            self.groups.setdefault(test, []).append(item)
            files.add(str(item.path.relative_to(self.config.rootpath)))
        self.session.comparisons = max(1, sum(len(g) for g in self.groups.values()))
        self.session.test_files = tuple(sorted(files))
        self.session.pytest_args = _forwarded_args(self.config)
        self.session.benchmark_options = _benchmark_options(self.config)
        used = {item.stash[REQUEST_KEY].target.env for group in self.groups.values() for item in group}
        self.session.preload_statistics()
        self.session.prestart([env for env in self.session.settings.envs if env in used])

    # -- running --------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
        request = item.stash.get(REQUEST_KEY, None)
        if request is None:
            return None
        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        group = self.groups.get(request.test, [item])
        self.session.run_group([g.stash[REQUEST_KEY] for g in group])
        for rep in _reports_for(item, self.session.results[item.nodeid]):
            item.ihook.pytest_runtest_logreport(report=rep)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    # -- reporting ------------------------------------------------------------------------

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.saved: list[Path] = []
        if self.session.settings.save:
            self.saved = self.session.save_baselines()
        data = report.build_json(self.session)
        settings = self.session.settings
        if settings.json_path:
            report.write_json(settings.json_path, data)
        markdown = report.render_markdown(data)
        if settings.markdown_path:
            settings.markdown_path.parent.mkdir(parents=True, exist_ok=True)
            settings.markdown_path.write_text(markdown, encoding="utf-8")
        summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary_file:
            with open(summary_file, "a", encoding="utf-8") as handle:
                handle.write(markdown + "\n")
        self.json_report = data

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        data = getattr(self, "json_report", None)
        if data is None:
            return
        terminalreporter.write_sep("=", "hostperf")
        for line in report.render_terminal(data):
            terminalreporter.write_line(line)
        for path in getattr(self, "saved", []):
            terminalreporter.write_line(f"hostperf: baseline saved to {path}")


def _target_of(item: pytest.Item) -> Target | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    value = callspec.params.get(TARGET_ARG)
    return value if isinstance(value, Target) else None


def _agent_nodeid(item: pytest.Item, target: Target) -> str:
    """The node id the agent knows: ours without the environment part of the id."""
    nodeid = item.nodeid
    whole = f"[{target.id}]"
    if nodeid.endswith(whole):
        return nodeid[: -len(whole)]
    suffix = f"-{target.id}]"
    if nodeid.endswith(suffix):
        return nodeid[: -len(suffix)] + "]"
    raise pytest.UsageError(f"{nodeid}: cannot find the environment id {target.id!r} at the end of the test id; "
                            "is another plugin renaming parametrized ids?")


def _invocation_paths(config: pytest.Config) -> tuple[str, ...] | None:
    """The invocation's test paths relative to the rootdir, or None if one is not a path."""
    paths: list[str] = []
    for arg in config.args:
        path_part, sep, rest = str(arg).partition("::")
        path = Path(config.invocation_params.dir, path_part).resolve()
        if not path.exists():
            return None  # pytest reports it during collection; let that error stand alone
        if path.is_relative_to(config.rootpath):
            path_text = path.relative_to(config.rootpath).as_posix() or "."
        else:
            path_text = str(path)
        paths.append(path_text + sep + rest)
    return tuple(paths)


def _forwarded_args(config: pytest.Config) -> tuple[str, ...]:
    """Command-line arguments that shape collection and must hold in the agent too."""
    args: list[str] = []
    inifile = config.inipath
    if inifile is not None:
        args += ["-c", str(inifile.relative_to(config.rootpath)) if inifile.is_relative_to(config.rootpath)
                 else str(inifile)]
    return tuple(args)


def _benchmark_options(config: pytest.Config) -> dict[str, Any]:
    bs = getattr(config, "_benchmarksession", None)
    options = dict(getattr(bs, "options", {}) or {})
    forwarded: dict[str, Any] = {}
    for key in FORWARDED_BENCHMARK_OPTIONS:
        value = options.get(key)
        if isinstance(value, bool) or value is None:
            forwarded[key] = value
        else:
            forwarded[key] = float(value) if key not in ("min_rounds", "calibration_precision",
                                                          "warmup_iterations") else int(value)
    return {k: v for k, v in forwarded.items() if v is not None}


def _reports_for(item: pytest.Item, result: Result) -> Iterator[pytest.TestReport]:
    config = item.config
    reports = [config.hook.pytest_report_from_serializable(config=config, data=d) for d in result.reports]
    reports = [r for r in reports if isinstance(r, pytest.TestReport)]
    if not reports:
        reports = [_synthetic(item, result)]
    judgement = result.judgement
    for rep in reports:
        rep.nodeid = item.nodeid
        rep.location = item.location
        if rep.when == "call":
            if judgement is not None:
                rep.user_properties.append(("hostperf_verdict", judgement.verdict.value))
                rep.sections.append(("hostperf", judgement.reason))
                if judgement.verdict.fails and rep.passed:
                    rep.outcome = "failed"
                    rep.longrepr = f"hostperf {judgement.verdict.value} [{result.request.target.id}]: {judgement.reason}"
            elif result.message and rep.passed:
                rep.sections.append(("hostperf", result.message))
        yield rep


def _synthetic(item: pytest.Item, result: Result) -> pytest.TestReport:
    """A report for an item whose environment never ran it (skipped, crashed, timed out)."""
    path, lineno, _ = item.location
    if result.outcome == "skipped":
        return pytest.TestReport(item.nodeid, item.location, dict.fromkeys(item.keywords, 1), "skipped",
                                 (str(item.path), (lineno or 0) + 1, f"Skipped: {result.message}"), "setup")
    when = "setup" if result.outcome == "error" else "call"
    return pytest.TestReport(item.nodeid, item.location, dict.fromkeys(item.keywords, 1), "failed",
                             result.message or "the environment returned no result", when)
