"""pytest glue: options, one item per environment, reports from the agents' results.

Inert unless ``--hostperf`` is given (and always inert inside an agent). The work is
done by :class:`~pytest_hostperf.session.HostperfSession`; this module only translates
between pytest and it.
"""

from __future__ import annotations

import argparse
import atexit
import os
import signal
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import pytest_hostperf.fixtures as fixtures_module
from pytest_hostperf import options as opt
from pytest_hostperf import report
from pytest_hostperf.environments.registry import create_backend
from pytest_hostperf.session import FORWARDED_BENCHMARK_OPTIONS, HostperfSession, Request, Result, Settings
from pytest_hostperf.targets import MarkerError, MarkerSettings, Target, parse_marker, plan_targets

TARGET_ARG = "_hostperf_target"
REQUEST_KEY = pytest.StashKey[Request]()
PLUGIN_KEY = pytest.StashKey["HostperfPlugin"]()

#: (option, ini key, type, default, help) for every value option; ini keys mirror options.
_VALUE_OPTIONS: tuple[tuple[str, str, Callable[[str], Any], str | None, str], ...] = (
    ("--hostperf-envs", "hostperf_envs", opt.parse_envs, "native",
     "environments to run each benchmark in, comma-separated: native, docker, qemu, ssh:HOST "
     "(default: native). Example: --hostperf-envs=native,docker,qemu"),
    ("--hostperf-baselines", "hostperf_baselines", str, None,
     "directory of baseline files (default: baselines/ under the rootdir)"),
    ("--hostperf-tolerance", "hostperf_tolerance", opt.parse_fraction, "5%",
     "smallest slowdown that counts as a regression, e.g. 5%% or 0.05 (default 5%%)"),
    ("--hostperf-alpha", "hostperf_alpha", opt.parse_alpha, "0.01",
     "family-wise false-alarm rate over all comparisons of a session (default 0.01)"),
    ("--hostperf-require", "hostperf_require", lambda s: opt.parse_envs(s) if s else (), "",
     "environments that must work: if one cannot start, its tests error instead of being skipped. "
     "Example: --hostperf-require=docker,qemu"),
    ("--hostperf-max-overhead", "hostperf_max_overhead", opt.parse_budgets, "",
     "budgets for the ratio to native, e.g. docker=1.10,docker-bind=1.5,qemu:tcg=20; "
     "an item whose ratio's lower confidence bound exceeds its budget fails with verdict 'overhead'"),
    ("--hostperf-json", "hostperf_json", str, None, "write the JSON report (one record per test x env x mount) to PATH"),
    ("--hostperf-markdown", "hostperf_markdown", str, None, "write a Markdown report to PATH"),
    ("--hostperf-timeout", "hostperf_timeout", opt.parse_seconds, "300",
     "seconds one test may take in an environment before its agent is killed and restarted (default 300)"),
    ("--hostperf-history", "hostperf_history", lambda s: opt.parse_positive_int(s, "history"), "10",
     "saved sessions kept per test in a baseline (default 10)"),
    ("--hostperf-session-noise", "hostperf_session_noise", lambda s: opt.parse_fraction(s, "session noise"), "3%",
     "between-session noise assumed while a baseline has a single saved session (default 3%%)"),
    ("--hostperf-blocks", "hostperf_blocks", lambda s: opt.parse_positive_int(s, "blocks"), "3",
     "interleaved blocks per test when several environments run it (default 3)"),
    ("--hostperf-image", "hostperf_image", str, None,
     "Docker image to run the agent in, instead of the one hostperf builds (needs python3, pytest, pytest-benchmark)"),
    ("--hostperf-vm-image", "hostperf_vm_image", str, None, "bootable VM disk to use instead of the one hostperf builds"),
    ("--hostperf-ssh-python", "hostperf_ssh_python", str, None,
     "Python interpreter on ssh:HOST targets (default: python3 on the target's PATH)"),
    ("--hostperf-docker-cpus", "hostperf_docker_cpus", lambda s: opt.parse_cpus(s), None,
     "CPU limit for the container, like docker run --cpus (e.g. 0.5); default: no limit"),
    ("--hostperf-ssh-config", "hostperf_ssh_config", str, None,
     "OpenSSH config file for ssh:HOST environments (default: your ~/.ssh/config)"),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hostperf", "environment-aware performance regression testing (pytest-hostperf)")
    group.addoption("--hostperf", action="store_true", default=False,
                    help="run every benchmark test in each environment and gate on regressions and overhead")
    group.addoption("--hostperf-save", action="store_true", default=False,
                    help="append this session's measurements to the baselines (per environment fingerprint)")
    group.addoption("--hostperf-network", action="store_true", default=False,
                    help="give containers and VMs a network (off by default)")
    parser.addini("hostperf_requirements", type="linelist", default=[],
                  help="extra pip requirements installed into the docker/qemu image (one per line)")
    for name, ini, kind, default, text in _VALUE_OPTIONS:
        group.addoption(name, action="store", default=None, type=_argtype(kind), help=text)
        parser.addini(ini, help=text.replace("%%", "%"), default=default)


def _argtype(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        return parse(text)  # ArgumentTypeError propagates: argparse prints it as a usage error

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.is_registered(fixtures_module):
        config.pluginmanager.register(fixtures_module, "hostperf-fixtures")
    if not config.getoption("hostperf") or os.environ.get("HOSTPERF_AGENT"):
        return
    settings = _settings(config)
    plugin = HostperfPlugin(config, settings)
    config.stash[PLUGIN_KEY] = plugin
    config.pluginmanager.register(plugin, "hostperf-controller")


def _value(config: pytest.Config, name: str, ini: str, parse: Callable[[str], Any]) -> Any:
    given = config.getoption(name)
    if given is not None:
        return given
    raw = config.getini(ini)
    if raw in (None, ""):
        return parse("") if ini in ("hostperf_require", "hostperf_max_overhead") else None
    try:
        return parse(str(raw))
    except argparse.ArgumentTypeError as exc:
        raise pytest.UsageError(f"ini option {ini} = {raw!r}: {exc}") from None


def _settings(config: pytest.Config) -> Settings:
    values = {ini: _value(config, name, ini, parse) for name, ini, parse, _, _ in _VALUE_OPTIONS}
    root = config.rootpath
    baselines = Path(values["hostperf_baselines"]) if values["hostperf_baselines"] else root / "baselines"
    if not baselines.is_absolute():
        baselines = (root / baselines).resolve()
    require = tuple(values["hostperf_require"] or ())
    envs = tuple(values["hostperf_envs"])
    missing = [r for r in require if r not in envs]
    if missing:
        raise pytest.UsageError(
            f"--hostperf-require names {', '.join(missing)} but --hostperf-envs is {','.join(envs)}; "
            f"add them: --hostperf-envs={','.join(envs + tuple(missing))}")
    if config.getoption("benchmark_disable", False) or config.getoption("benchmark_skip", False):
        raise pytest.UsageError("--hostperf measures benchmarks; drop --benchmark-disable/--benchmark-skip")

    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    return Settings(
        project_dir=root, envs=envs, baselines_dir=baselines, save=bool(config.getoption("hostperf_save")),
        tolerance=values["hostperf_tolerance"], alpha=values["hostperf_alpha"], require=require,
        max_overhead=values["hostperf_max_overhead"] or {}, timeout_s=values["hostperf_timeout"],
        history=values["hostperf_history"], session_noise=values["hostperf_session_noise"],
        blocks=values["hostperf_blocks"], image=values["hostperf_image"], vm_image=values["hostperf_vm_image"],
        network=bool(config.getoption("hostperf_network")),
        requirements=tuple(config.getini("hostperf_requirements")),
        json_path=path(values["hostperf_json"]), markdown_path=path(values["hostperf_markdown"]),
        ssh_config=path(values["hostperf_ssh_config"]), docker_cpus=values["hostperf_docker_cpus"],
        ssh_python=values["hostperf_ssh_python"],
    )


class HostperfPlugin:
    """The controller's hooks, registered only with ``--hostperf``."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.session = HostperfSession(settings, self._progress, create_backend)
        self.groups: dict[str, list[pytest.Item]] = {}
        self._install_cleanup()

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
