"""The controller's pytest hooks: one item per environment, reports from agents' results.

Registered by :mod:`pytest_hostperf.plugin` only with ``--hostperf``. This module only
translates between pytest and the run loop (:mod:`pytest_hostperf.run`): at configure
it makes the environment pool and starts the native agent; after collection it hands
the plan over once (:class:`~pytest_hostperf.run.session.SessionRun`); each item asks
for its record; at the end it writes the reports, then saves the baselines.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import signal
import uuid
from pathlib import Path
from typing import Any, Iterator, Literal

import pytest

from pytest_hostperf import revision
from pytest_hostperf.agent.origins import ImportTracker
from pytest_hostperf.baselines import BaselineError, BaselineSaveError
from pytest_hostperf.environments.base import Environment, EnvironmentContext, EnvironmentFailure
from pytest_hostperf.forwarding import forwarded_options
from pytest_hostperf.model import Outcome, Record, Verdict
from pytest_hostperf.options import DEFAULT_MAX_OVERHEAD, Kinds
from pytest_hostperf.progress import Reporter
from pytest_hostperf.report.json import write_json
from pytest_hostperf.report.markdown import render_markdown
from pytest_hostperf.report.terminal import render_terminal
from pytest_hostperf.run import workdir
from pytest_hostperf.run.against import AgainstRevision, revision_args
from pytest_hostperf.run.codecheck import CodeCheck
from pytest_hostperf.run.paired import DEFAULT_SIDE_SECONDS, PairBudget
from pytest_hostperf.run.plan import FORWARDED_BENCHMARK_OPTIONS, Plan, Request
from pytest_hostperf.run.pool import AgentArgs, EnvironmentPool
from pytest_hostperf.run.session import SessionRun
from pytest_hostperf.settings import Settings
from pytest_hostperf.targets import MarkerError, MarkerSettings, Target, parse_marker, plan_targets
from pytest_hostperf.verdict import Policy

TARGET_ARG = "_hostperf_target"
REQUEST_KEY = pytest.StashKey[Request]()
#: Signals that end the session like Ctrl-C does: stop every environment, then exit.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class HostperfPlugin:
    """The controller's hooks, registered only with ``--hostperf``."""

    def __init__(self, config: pytest.Config, settings: Settings, kinds: Kinds) -> None:
        self.config = config
        self.settings = settings
        self.kinds = kinds
        # Where the project's code is imported from, as this interpreter sees it (native's
        # view); every agent puts these first so the same code runs everywhere.
        self.import_roots = _import_roots(config)
        workdir.sweep_stale()  # what a SIGKILLed session left in $TMPDIR
        session_id = uuid.uuid4().hex[:12]
        self.work_dir = workdir.create(session_id)
        context = EnvironmentContext(settings, session_id, self.work_dir, Reporter(self._write_line))
        # The controller's own view of the tests' modules completes native's as the reference
        # other environments are checked against (all there is when native is not in the session).
        self.imports = ImportTracker(str(config.rootpath))
        self.imports.mark_harness()  # pytest, its plugins and the initial conftests are loaded by now
        self.pool = EnvironmentPool(context, self._make_environment, CodeCheck(self.imports.report))
        self.checkout: revision.Checkout | None = None
        self.rev_pool: EnvironmentPool | None = None
        if settings.against is not None:
            self._prepare_revision(settings.against, context)
        self.run: SessionRun | None = None
        self.json_report: dict[str, Any] | None = None
        self.saved: list[Path] = []
        self.save_problem = ""
        self._install_cleanup()
        self._start_native_early(config)

    # -- lifecycle ------------------------------------------------------------------------

    def _write_line(self, line: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(line)

    def _make_environment(self, name: str, context: EnvironmentContext) -> Environment:
        backend: Environment | None = self.config.hook.pytest_hostperf_make_environment(name=name, context=context)
        if backend is None:
            raise EnvironmentFailure(name, "no installed plugin makes this kind of environment",
                                     hint="a plugin that declares it in pytest_hostperf_environment_kinds must "
                                          "also implement pytest_hostperf_make_environment")
        return backend

    def _install_cleanup(self) -> None:
        # pytest turns SIGINT into KeyboardInterrupt and still unconfigures; SIGTERM, SIGHUP
        # (the terminal closed) and a hard interpreter exit get the same cleanup here.
        # SIGKILL cannot be caught: every backend labels what it creates and the next
        # session sweeps it (workdir.sweep_stale for the work dir).
        atexit.register(self._stop)
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) in (signal.SIG_DFL, None):
                signal.signal(signum, _interrupt)

    def _prepare_revision(self, rev: revision.Revision, context: EnvironmentContext) -> None:
        """REV's tree and a pool of agents on it (--hostperf-against); removed by :meth:`_stop`."""
        revision.sweep_stale()  # what a SIGKILLed session's --hostperf-against left
        try:
            self.checkout = revision.materialize(rev, session=context.session_id)
        except revision.RevisionError as exc:
            workdir.remove(self.work_dir)
            raise pytest.UsageError(str(exc)) from None
        rev_work = self.work_dir / "rev"
        rev_work.mkdir()
        rev_context = EnvironmentContext(dataclasses.replace(self.settings, project_dir=self.checkout.project_dir),
                                         f"{context.session_id}-rev", rev_work, context.reporter)
        # REV's agents get the session's import roots (relative: REV's src/ before the working
        # tree's installed copy) through AgentArgs, as every agent does.
        self.rev_pool = EnvironmentPool(rev_context, self._make_environment)

    def _against(self, plan: Plan) -> AgainstRevision | None:
        if self.settings.against is None or self.checkout is None or self.rev_pool is None:
            return None
        budget = PairBudget(self.settings.pair_budget_s or DEFAULT_SIDE_SECONDS, self.settings.pair_round_s)
        # Each item is compared twice (stored baselines and REV): both count for Bonferroni.
        confidence = Policy(self.settings.tolerance, self.settings.alpha, 2 * plan.comparisons).confidence
        return AgainstRevision(self.settings.against, self.rev_pool,
                               revision_args(plan.agent_args, self.checkout.project_dir), budget, confidence,
                               self.pool.context.session_id)

    def _stop(self) -> None:
        try:
            self.pool.stop_all()
            if self.rev_pool is not None:
                self.rev_pool.stop_all()
        finally:
            if self.checkout is not None:
                self.checkout.remove()
            workdir.remove(self.work_dir)

    def _start_native_early(self, config: pytest.Config) -> None:
        """Start the native agent now, before collection, as xdist starts its workers.

        The agent is a second pytest start-up (~0.4 s, plus pytest-benchmark's 1 s timer
        probe); begun here it overlaps the controller's own plugin imports and
        collection. It collects what the invocation names, which holds every item the
        controller will collect. Other environments start after collection, when it is
        known that a test uses them (a VM boot is not worth risking on a guess).
        """
        if "native" not in self.settings.envs or config.option.pyargs:
            return
        files = _invocation_paths(config)
        if files is not None:
            self.pool.prestart(["native"], AgentArgs(files, _forwarded_args(config), self.import_roots))

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self._stop()
        atexit.unregister(self._stop)

    # -- collection -----------------------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "benchmark" not in metafunc.fixturenames:
            return
        marker = metafunc.definition.get_closest_marker("hostperf")
        try:
            settings = parse_marker(marker.kwargs, marker.args, self.kinds) if marker else MarkerSettings()
        except MarkerError as exc:
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: @pytest.mark.hostperf: {exc}") from None
        uses_dir = "hostperf_dir" in metafunc.fixturenames
        targets = plan_targets(self.settings.envs, settings, uses_dir, self.kinds, self.settings.mounts)
        if not targets:
            raise pytest.UsageError(
                f"{metafunc.definition.nodeid}: @pytest.mark.hostperf(envs={list(settings.envs or ())}) "
                f"selects none of the session's environments ({','.join(self.settings.envs)})")
        # A parameter the test function does not declare (as pytest-repeat does): it only
        # gives each environment its own item and id.
        metafunc.fixturenames.append(TARGET_ARG)
        metafunc.parametrize(TARGET_ARG, targets, ids=[t.id for t in targets])

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        files: set[str] = set()
        requests = []
        exempt = self.config.pluginmanager.has_plugin("timeout")
        for item in session.items:
            target = _target_of(item)
            if target is None:
                continue
            marker = item.get_closest_marker("hostperf")
            settings = parse_marker(marker.kwargs, (), self.kinds) if marker else MarkerSettings()
            request = Request(item.nodeid, _agent_nodeid(item, target), target, settings.tolerance,
                              settings.max_overhead)
            item.stash[REQUEST_KEY] = request
            requests.append(request)
            files.add(_agent_path(item, target))
            if exempt:
                # pytest-timeout's alarm would fire inside the controller while it waits for the
                # whole group in every environment; the body's limit applies inside the agent
                # (--timeout is forwarded), --hostperf-timeout guards the agent itself.
                item.add_marker(pytest.mark.timeout(0))
        agent_args = AgentArgs(tuple(sorted(files)), _forwarded_args(self.config), self.import_roots)
        if any(Path(f).is_absolute() for f in files):
            # Outside the rootdir: native collects what the invocation named, so that its node
            # ids (relative to those paths) are the controller's.
            pyargs = ("--pyargs",) if self.config.option.pyargs else ()
            agent_args = dataclasses.replace(agent_args, test_files=tuple(str(a) for a in self.config.args),
                                             pytest_args=(*agent_args.pytest_args, *pyargs))
        plan = Plan(tuple(requests), agent_args, _benchmark_options(self.config))
        self.run = SessionRun(plan, self.pool, self.settings, DEFAULT_MAX_OVERHEAD, against=self._against(plan))
        self.run.start()

    # -- running --------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
        request = item.stash.get(REQUEST_KEY, None)
        if request is None or self.run is None:
            return None
        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        self.run.run_test(request.test)
        for rep in _reports_for(item, self.run.record(item.nodeid), self.settings.strict):
            item.ihook.pytest_runtest_logreport(report=rep)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    # -- reporting ------------------------------------------------------------------------

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.run is None:
            return
        data = self.run.report()
        self.json_report = data
        # Reports first: a failed save below must not lose them.
        if self.settings.json_path:
            write_json(self.settings.json_path, data)
        markdown = render_markdown(data)
        if self.settings.markdown_path:
            self.settings.markdown_path.parent.mkdir(parents=True, exist_ok=True)
            self.settings.markdown_path.write_text(markdown, encoding="utf-8")
        summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary_file:
            with open(summary_file, "a", encoding="utf-8") as handle:
                handle.write(markdown + "\n")
        if self.settings.html_path:
            from pytest_hostperf.report.html import write_html  # plotly: only when asked for

            write_html(data, self.settings.html_path, self.settings.baselines_dir)
        if self.settings.save and self.run.records:
            self._save(session, exitstatus)

    def _save(self, session: pytest.Session, exitstatus: int) -> None:
        """Save from a session that ran to its end; never a failing item (unless accepted)."""
        assert self.run is not None
        cut_short = (exitstatus == pytest.ExitCode.INTERRUPTED or session.shouldstop or session.shouldfail
                     or not self.run.complete)
        if cut_short:
            self.save_problem = ("baselines NOT saved: the session did not run to its end (-x/--maxfail, "
                                 "Ctrl-C or a signal stopped it); a partial session would skew the history")
            return
        try:
            self.saved = self.run.save_baselines()
        except (BaselineError, BaselineSaveError) as exc:
            self.save_problem = f"ERROR: {exc}"
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return
        left_out = [r for r in self.run.records.values() if r.fails]
        if left_out:
            self.save_problem = (f"{len(left_out)} failing item(s) not saved, so a regression never becomes the "
                                 f"baseline: {', '.join(r.item for r in left_out[:5])}"
                                 f"{' ...' if len(left_out) > 5 else ''} (accept a known change with "
                                 "--hostperf-accept=GLOB --hostperf-accept-reason=TEXT)")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.json_report is None:
            return
        terminalreporter.write_sep("=", "hostperf")
        for line in render_terminal(self.json_report, verbose=self.config.option.verbose > 0):
            terminalreporter.write_line(line)
        for path in self.saved:
            terminalreporter.write_line(f"hostperf: baseline saved to {path}")
        if self.save_problem:
            terminalreporter.write_line(f"hostperf: {self.save_problem}", red=self.save_problem.startswith("ERROR"))


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


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


def _agent_path(item: pytest.Item, target: Target) -> str:
    """The test file as agents collect it: relative to the rootdir, which every backend mounts.

    A file outside the rootdir (``--pyargs`` of an installed package) is collected natively
    from where it is; nothing of it reaches a container, a VM or an ssh target.
    """
    rootpath = item.config.rootpath
    if item.path.is_relative_to(rootpath):
        return str(item.path.relative_to(rootpath))
    if target.kind != "native":
        raise pytest.UsageError(
            f"{item.nodeid}: its file {item.path} is outside the rootdir {rootpath} (--pyargs of an installed "
            f"package?), so {target.env} cannot see it: run the tests from the package's checkout (its rootdir "
            f"is mounted in every environment), or keep --hostperf-envs=native for it")
    return str(item.path)


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


def _import_roots(config: pytest.Config) -> tuple[str, ...]:
    from pytest_hostperf.importroots import ImportRootError, controller_import_roots

    try:
        pythonpath = config.getini("pythonpath")
    except ValueError:  # pytest's python_path plugin is disabled (-p no:python_path)
        pythonpath = []
    try:
        return controller_import_roots(config.rootpath, pythonpath)
    except ImportRootError as exc:
        raise pytest.UsageError(f"--hostperf: {exc}") from None


def _forwarded_args(config: pytest.Config) -> tuple[str, ...]:
    """The agent's pytest arguments: the ini file, and the invocation's options that hold for a
    test body (see :mod:`pytest_hostperf.forwarding`)."""
    args: list[str] = []
    inifile = config.inipath
    if inifile is not None:
        args += ["-c", str(inifile.relative_to(config.rootpath)) if inifile.is_relative_to(config.rootpath)
                 else str(inifile)]
    seed = config.getoption("randomly_seed", None) if config.pluginmanager.has_plugin("randomly") else None
    args += forwarded_options(os.environ.get("PYTEST_ADDOPTS", ""), [str(a) for a in config.invocation_params.args],
                              [str(a) for a in config.args], seed if isinstance(seed, int) else None)
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


def _reports_for(item: pytest.Item, record: Record, strict: bool) -> Iterator[pytest.TestReport]:
    config = item.config
    reports = [config.hook.pytest_report_from_serializable(config=config, data=d) for d in record.reports]
    reports = [r for r in reports if isinstance(r, pytest.TestReport)]
    if not reports:
        reports = [_synthetic(item, record)]
    failure = _failure(record, strict)
    for rep in reports:
        rep.nodeid = item.nodeid
        rep.location = item.location
        if rep.when == "call":
            if record.verdict is not None:
                rep.user_properties.append(("hostperf_verdict", record.verdict.value))
            if record.reason:
                rep.sections.append(("hostperf", record.reason))
            if failure and rep.passed:
                rep.outcome = "failed"
                rep.longrepr = failure
        yield rep


def _failure(record: Record, strict: bool) -> str:
    """Why a passing test body still fails its item (a verdict, the gate off), or ''."""
    label = f"[{record.target}]"
    if record.outcome is Outcome.ERROR:
        return record.reason
    if record.verdict is not None and record.verdict.fails and record.accepted is None:
        return f"hostperf {record.verdict.value} {label}: {record.reason}"
    if strict and record.verdict is Verdict.NO_BASELINE:
        return f"hostperf no-baseline {label} (--hostperf-strict): {record.reason}"
    return ""


def _synthetic(item: pytest.Item, record: Record) -> pytest.TestReport:
    """A report for an item whose environment never ran it (skipped, crashed, timed out)."""
    path, lineno, _ = item.location
    if record.outcome is Outcome.SKIPPED:
        return pytest.TestReport(item.nodeid, item.location, dict.fromkeys(item.keywords, 1), "skipped",
                                 (str(item.path), (lineno or 0) + 1, f"Skipped: {record.reason}"), "setup")
    when: Literal["setup", "call"] = "setup" if record.outcome is Outcome.ERROR else "call"
    return pytest.TestReport(item.nodeid, item.location, dict.fromkeys(item.keywords, 1), "failed",
                             record.reason or "the environment returned no result", when)
