"""The pytest plugin that turns a pytest session into a hostperf agent.

Like an xdist worker: pytest collects the test files once, then instead of running
everything, ``pytest_runtestloop`` waits for requests and runs one item per request
through the normal runtest protocol (fixtures, pytest-benchmark calibration, rounds and
timer, all untouched). Reports travel back serialized, together with the raw samples
that pytest-benchmark measured.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import pytest

from pytest_hostperf.agent import protocol, reference
from pytest_hostperf.agent.channel import AgentChannel
from pytest_hostperf.agent.count_benchmark import BenchmarkCounting
from pytest_hostperf.agent.hold import HeldItem, hold_fixture
from pytest_hostperf.agent.origins import ImportTracker
from pytest_hostperf.fixtures import CURRENT_ENV_KEY, HostperfEnv
from pytest_hostperf.sampling import thin

#: Cap on samples sent back per run, evenly spaced in time: the bootstrap uses at most
#: 2000 per side, baselines keep 200, and encoding them is the agent's main per-test cost
#: in a software-emulated VM (5000 samples cost ~45 ms there, 1000 a fifth of that).
MAX_SAMPLES = 1000
#: Cap on each captured-output section a report carries back (head and tail kept): a
#: test that prints hundreds of MB would otherwise make a result line longer than the
#: protocol accepts (protocol.MAX_LINE_BYTES), and the item would read as a crashed agent.
MAX_SECTION_CHARS = 256 * 1024


class AgentWorker:
    def __init__(self, channel: AgentChannel, env: str, project_root: str = ".",
                 startup_modules: Iterable[str] = ()) -> None:
        self.channel = channel
        self.env = env
        self.imports = ImportTracker(project_root, startup_modules)
        self.announced = False
        self.collect_errors: list[str] = []
        self._reports: list[Any] = []
        self._measurement: dict[str, Any] | None = None
        self._fixed: tuple[int, int] | None = None  # (iterations, rounds) of a fixed-work run
        self._held: HeldItem | None = None          # a run that serves halves (agent/hold.py)
        self._fingerprint: dict[str, Any] = {}
        self._counting = BenchmarkCounting()  # idle until a "count" request (agent under callgrind)

    # -- pytest hooks -------------------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        # Shipped (not installed) into environments: register the fixtures ourselves
        # unless the installed plugin already did.
        import pytest_hostperf.fixtures as fixtures

        if not config.pluginmanager.is_registered(fixtures) and not config.pluginmanager.has_plugin("hostperf"):
            config.pluginmanager.register(fixtures, "hostperf-fixtures")  # its pytest_configure runs now

    @pytest.hookimpl(tryfirst=True)
    def pytest_load_initial_conftests(self, early_config: pytest.Config) -> None:
        # pytest and the plugins it loaded are in by now; the project's conftests are not:
        # what they import (the code under test, its dependencies) must be compared too.
        self.imports.mark_harness()

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.collect_errors.append(f"{report.nodeid}: {report.longreprtext}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        report.sections = [(title, cap_section(content)) for title, content in report.sections]
        self._reports.append(report)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Any:
        if self._fixed is not None:
            _fix_work(item, *self._fixed)
        if self._held is not None:
            hold_fixture(item, self._held)   # after _fix_work: pedantic keeps its fixed rounds
        self._counting.attach(item)
        try:
            return (yield)
        finally:
            self._measurement = self._counting.detach(item) or _benchmark_measurement(item)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        items = {item.nodeid: item for item in session.items}
        # A counting agent (under callgrind) forks its zygote here, before anything reads
        # the machine's changing state (/proc) into the heap; any other agent: no-op.
        # The zygote takes the import report's state as sent with "ready": each count then
        # reports only what its own run imported (describing every module again in each
        # child cost 0.22 s a count under valgrind).
        self._counting.start(lambda request: self._run(session, items, request),
                             lambda: session._setupstate.teardown_exact(None), self.imports.mark_seen)
        _warm_timer_precision(session.config)
        self._fingerprint = _inside_fingerprint({})
        self.channel.send({
            "event": "ready",
            "protocol": protocol.PROTOCOL_VERSION,
            "env": self.env,
            "fingerprint": self._fingerprint,
            "collected": sorted(items),
            "collect_errors": self.collect_errors,
            "modules": self.imports.report(),
        })
        self.announced = True
        while True:
            request = self.channel.receive()
            if request is None or request.get("op") == "shutdown":
                break
            if request.get("op") == "ping":
                self.channel.send({"event": "pong"})
            elif request.get("op") == "reference":
                self.channel.send({"event": "reference", "samples": reference.measure(int(request.get("rounds", 30)))})
            elif request.get("op") == "run":
                self.channel.send(self._run(session, items, request))
                if self._held is not None and self._held.closing:
                    break   # shut down while an item was held
            elif request.get("op") == "count":
                self.channel.send(self._counting.answer(request))
            else:
                self.channel.send({"event": "fatal", "message": f"unknown request {request!r}"})
        session._setupstate.teardown_exact(None)  # higher-scoped fixtures kept warm until now
        self.channel.send({"event": "bye"})
        return True

    # -- running one request ------------------------------------------------------------

    def _run(self, session: pytest.Session, items: dict[str, pytest.Item], request: dict[str, Any]) -> dict[str, Any]:
        nodeid = request["nodeid"]
        self._held = None
        item = items.get(nodeid)
        if item is None:
            return {"event": "result", "nodeid": nodeid, "outcome": "error", "reports": [],
                    "message": f"test {nodeid!r} was not collected inside environment {self.env!r}"
                               + (f"; collection errors: {self.collect_errors}" if self.collect_errors else "")}
        mount_path = request.get("mount_path")
        mounts = {request.get("mount", "host"): mount_path} if mount_path else {}
        session.config.stash[CURRENT_ENV_KEY] = HostperfEnv(
            self.env, request.get("mount", "host"), mount_path, self._fingerprint)
        benchmark_session = getattr(session.config, "_benchmarksession", None)
        saved_options = dict(benchmark_session.options) if benchmark_session else {}
        if benchmark_session:
            benchmark_session.options.update(request.get("benchmark_options") or {})
        self._reports = []
        self._measurement = None
        try:
            self._fixed = _fixed_work(request.get("fixed"))
        except ValueError as exc:
            return {"event": "result", "nodeid": nodeid, "outcome": "error", "reports": [], "message": str(exc)}
        self._held = HeldItem(self.channel, nodeid, request.get("cpu")) if request.get("hold") else None
        self._counting.arm(request)
        started = time.perf_counter()
        # Higher-scoped fixtures stay set up between requests: tear down only what the
        # item's own chain does not need (another module's fixtures), and after the run
        # only the function itself (nextitem is the item's parent node, not an item;
        # pytest's SetupState only calls listchain() on it).
        session._setupstate.teardown_exact(item.parent)  # type: ignore[arg-type]
        try:
            item.ihook.pytest_runtest_protocol(item=item, nextitem=item.parent)
        finally:
            duration = time.perf_counter() - started
            if benchmark_session:
                benchmark_session.options.clear()
                benchmark_session.options.update(saved_options)
                benchmark_session.benchmarks.clear()  # we keep the samples; pytest-benchmark need not
        reports = [session.config.hook.pytest_report_to_serializable(config=session.config, report=r)
                   for r in self._reports]
        outcome = "passed"
        for report in self._reports:
            if report.failed:
                outcome = "failed"
                break
            if report.skipped:
                outcome = "skipped"
        result: dict[str, Any] = {"event": "result", "nodeid": nodeid, "outcome": outcome,
                                  "reports": reports, "duration_s": duration}
        result.update(self._measurement or {"samples": None, "iterations": None})
        if self._held is not None:
            result["held_halves"] = self._held.halves
        if mounts:
            result["mount_info"] = _inside_fingerprint(mounts).get("mounts", {})
        imported = self.imports.report()  # only modules this run imported for the first time
        if imported:
            result["modules"] = imported
        return result


def _fixed_work(fixed: Any) -> tuple[int, int] | None:
    """``{"iterations": N, "rounds": R}`` as (N, R); None for a normal run."""
    if fixed is None:
        return None
    values = (fixed.get("iterations"), fixed.get("rounds", 1)) if isinstance(fixed, dict) else ()
    counts = [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 1]
    if len(counts) != 2:
        raise ValueError(f"fixed work must be {{'iterations': N, 'rounds': R}} with whole numbers >= 1, got {fixed!r}")
    return counts[0], counts[1]


def _fix_work(item: pytest.Item, iterations: int, rounds: int) -> None:
    """Make the item's benchmark fixture time ``rounds`` rounds of ``iterations`` calls, uncalibrated.

    pytest-benchmark picks ``rounds = max(ceil(max_time / duration), min_rounds)`` after
    calibrating; a calibration that answers at once with our iterations, ``max_time`` 0
    and ``min_rounds`` R leave exactly R rounds of N calls, timed by its own timer. A test
    that calls ``benchmark.pedantic`` chose its own iterations: it runs R rounds of those,
    without its warm-up rounds (the controller warms each side up once).
    """
    fixture = (getattr(item, "funcargs", None) or {}).get("benchmark")
    if fixture is None or not callable(getattr(fixture, "_calibrate_timer", None)):
        return
    loops = range(iterations)
    fixture._calibrate_timer = lambda runner: (1.0, iterations, loops)
    fixture._max_time = 0.0
    fixture._min_rounds = rounds
    fixture._warmup = False
    pedantic = getattr(fixture, "_raw_pedantic", None)
    if callable(pedantic):
        def fixed_pedantic(*args: Any, **kwargs: Any) -> Any:
            return pedantic(*args, **{**kwargs, "rounds": rounds, "warmup_rounds": 0})

        fixture._raw_pedantic = fixed_pedantic


def cap_section(content: str, limit: int = MAX_SECTION_CHARS) -> str:
    """``content`` with its middle cut to at most ``limit`` characters, saying how much was cut."""
    if len(content) <= limit:
        return content
    keep = limit // 2
    cut = len(content) - 2 * keep
    return f"{content[:keep]}\n[hostperf cut {cut} characters of captured output here]\n{content[-keep:]}"


def _benchmark_measurement(item: pytest.Item) -> dict[str, Any] | None:
    """Raw per-round timings (seconds per iteration) from pytest-benchmark's fixture."""
    funcargs = getattr(item, "funcargs", None) or {}
    fixture = funcargs.get("benchmark")
    metadata = getattr(fixture, "stats", None)
    stats = getattr(metadata, "stats", None)
    data = list(getattr(stats, "data", None) or [])
    if not data:
        return None
    return {"samples": thin(data, MAX_SAMPLES), "iterations": getattr(metadata, "iterations", 1),
            "rounds": len(data)}


def _warm_timer_precision(config: pytest.Config) -> None:
    """Let pytest-benchmark measure its timer's precision now, before ``ready``.

    It does that on first use, for a whole second; done here it overlaps the
    controller's own start-up instead of lengthening the first test. The value lands in
    pytest-benchmark's own per-timer cache, computed by its own function.
    """
    try:
        from pytest_benchmark.fixture import BenchmarkFixture
        from pytest_benchmark.timers import compute_timer_precision
    except ImportError:  # pragma: no cover - pytest-benchmark is a requirement
        return
    options = getattr(getattr(config, "_benchmarksession", None), "options", {}) or {}
    timer = getattr(options.get("timer"), "target", None)
    cache = getattr(BenchmarkFixture, "_precisions", None)
    if timer is not None and isinstance(cache, dict) and timer not in cache:
        cache[timer] = compute_timer_precision(timer)


def _inside_fingerprint(mounts: dict[str, str]) -> dict[str, Any]:
    try:
        from pytest_hostperf.fingerprint import collect_inside
    except ImportError:  # pragma: no cover - fingerprint module always ships with the agent
        return {}
    try:
        return collect_inside(mounts)
    except Exception as exc:  # noqa: BLE001 - a fingerprint problem must not stop measuring
        return {"error": f"fingerprint failed: {exc!r}"}
