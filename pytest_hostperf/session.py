"""The controller's session: environments, agents, measurements, verdicts, baselines.

No pytest import: the plugin feeds it plain data (node ids, targets, options) and turns
its results back into reports. Environments start on first use and stay warm; a dead or
hung agent fails the request that hit it and is restarted for the next one.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pytest_hostperf import fingerprint as fp
from pytest_hostperf.baselines import BaselineError, BaselineFile, BaselineStore, Measurement
from pytest_hostperf.environments.base import (
    AgentClient,
    AgentDied,
    AgentTimeout,
    Environment,
    EnvironmentContext,
    EnvironmentFailure,
)
from pytest_hostperf.progress import Reporter
from pytest_hostperf.stats import (
    RatioEstimate,
    SessionSummary,
    between_session_sd,
    compare_to_history,
    ratio_of_medians,
    summarize,
)
from pytest_hostperf.report import format_seconds
from pytest_hostperf.settings import Settings
from pytest_hostperf.targets import Target, budget_for
from pytest_hostperf.verdict import Judgement, Policy, Verdict, host_slowdown, judge

Progress = Callable[[str], None]

#: pytest-benchmark options forwarded to every agent (plain values only).
#: Rounds of the reference workload per test and environment (~1 ms each natively).
REFERENCE_ROUNDS = 15
#: A reference timed this recently (the previous test's "after") serves as the next
#: test's "before": nothing but the controller's bookkeeping ran in between.
REFERENCE_REUSE_S = 0.5
#: Pause before re-measuring a regression (--hostperf-confirm): longer than most of a
#: shared machine's slow phases (median ~0.1 s, longest ~2 s measured here).
CONFIRM_PAUSE_S = 1.0

FORWARDED_BENCHMARK_OPTIONS = ("max_time", "min_rounds", "min_time", "calibration_precision",
                               "disable_gc", "warmup", "warmup_iterations")


@dataclasses.dataclass
class Request:
    """One item to measure: a test (as the agent knows it) on one target."""

    item_id: str
    test: str
    target: Target
    tolerance: float | None = None
    max_overhead: Mapping[str, float] | None = None


@dataclasses.dataclass
class Result:
    """What one item produced; the plugin turns it into reports, the reporters into rows."""

    request: Request
    outcome: str = "pending"          # passed / failed / skipped / error
    reports: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    message: str = ""                 # why it failed or was skipped (environment level)
    samples: list[float] = dataclasses.field(default_factory=list)
    iterations: int = 1
    summary: SessionSummary | None = None
    judgement: Judgement | None = None
    orchestration_s: list[float] = dataclasses.field(default_factory=list)
    # The host's reference workload, timed right before and right after this test: a
    # hiccup of the machine during the test shows in one of them.
    reference: SessionSummary | None = None
    reference_after: SessionSummary | None = None
    mount_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    env_fingerprint: dict[str, Any] = dataclasses.field(default_factory=dict)
    fingerprint_id: str | None = None
    baseline_path: str | None = None
    attempt_medians: list[float] = dataclasses.field(default_factory=list)  # when re-measured

    @property
    def verdict(self) -> Verdict | None:
        return self.judgement.verdict if self.judgement else None


class EnvRuntime:
    """One environment for the whole session and the state of its agent."""

    def __init__(self, backend: Environment) -> None:
        self.backend = backend
        self.client: AgentClient | None = None
        self.lock = threading.Lock()  # the prestart thread and the first test may race
        self.failure: EnvironmentFailure | None = None
        self.fingerprint: dict[str, Any] = {}
        self.match: dict[str, Any] = {}
        self.fingerprint_id: str | None = None
        self.baseline: BaselineFile | None = None
        self.baseline_error: BaselineError | None = None
        self.startup_s: float | None = None
        self.last_reference: tuple[float, SessionSummary] | None = None  # (monotonic time, timing)


class HostperfSession:
    def __init__(self, settings: Settings, progress: Progress,
                 backend_factory: Callable[[str, EnvironmentContext], Environment]) -> None:
        self.settings = settings
        self.progress = progress
        self.session_id = uuid.uuid4().hex[:12]
        self.work_dir = Path(tempfile.mkdtemp(prefix=f"hostperf-{self.session_id}-"))
        self.context = EnvironmentContext(settings, self.session_id, self.work_dir, Reporter(progress))
        self.store = BaselineStore(settings.baselines_dir)
        self._factory = backend_factory
        self.runtimes: dict[str, EnvRuntime] = {}
        self._runtimes_lock = threading.Lock()
        self.results: dict[str, Result] = {}
        self.comparisons = 1
        self.test_files: tuple[str, ...] = ()
        self.pytest_args: tuple[str, ...] = ()
        self.benchmark_options: dict[str, Any] = {}
        self._prestarts: list[tuple[threading.Thread, threading.Event]] = []
        self._prestarted_envs: set[str] = set()
        self._session_over = threading.Event()

    # -- environments ---------------------------------------------------------------------

    def runtime(self, env: str) -> EnvRuntime:
        with self._runtimes_lock:
            return self._runtime(env)

    def _runtime(self, env: str) -> EnvRuntime:
        if env not in self.runtimes:
            try:
                backend = self._factory(env, self.context)
            except EnvironmentFailure as exc:
                runtime = EnvRuntime(_Unavailable(env))
                runtime.failure = exc
                self.runtimes[env] = runtime
                return runtime
            self.runtimes[env] = EnvRuntime(backend)
        return self.runtimes[env]

    def prestart(self, envs: Sequence[str]) -> None:
        """Start agents in the background while pytest and the controller finish starting.

        Agent start-up is another process (or a VM), so it overlaps with the controller's
        own imports and collection on a second core; the first test waits for every
        prestart so far (see :meth:`run_group`). Called once early for ``native`` (from
        the invocation's arguments) and once after collection for the rest.
        """
        envs = [env for env in envs if env not in self._prestarted_envs]
        if not envs:
            return
        self._prestarted_envs.update(envs)
        done = threading.Event()

        def start_all() -> None:
            try:
                for env in envs:
                    try:
                        self.agent(env)
                    except Exception:  # noqa: BLE001 - reported when the first test uses it
                        pass
            finally:
                done.set()
            # Stay alive until the session ends: a child started with PR_SET_PDEATHSIG
            # (the qemu backend's VMs) is killed when the *thread* that started it exits.
            self._session_over.wait()

        thread = threading.Thread(target=start_all, name=f"hostperf-prestart-{'-'.join(envs)}", daemon=True)
        thread.start()
        self._prestarts.append((thread, done))

    def preload_statistics(self) -> None:
        """Import scipy.special (~0.25 s) in the background; the first verdict needs it.

        Called after collection, while the main thread only waits for agents: earlier it
        would hold the GIL against pytest's own collection.
        """
        imported = threading.Event()

        def load() -> None:
            try:
                importlib.import_module("scipy.special")
            finally:
                imported.set()

        importer = threading.Thread(target=load, name="hostperf-import", daemon=True)
        importer.start()
        self._prestarts.append((importer, imported))

    def wait_for_prestarts(self) -> None:
        for _, done in list(self._prestarts):
            done.wait()

    def agent(self, env: str) -> AgentClient:
        """The warm agent of ``env``, started on first use; raises EnvironmentFailure."""
        runtime = self.runtime(env)
        with runtime.lock:
            return self._agent_locked(env, runtime)

    def _agent_locked(self, env: str, runtime: EnvRuntime) -> AgentClient:
        if runtime.failure is not None:
            raise runtime.failure
        if runtime.client is not None:
            return runtime.client
        backend = runtime.backend
        started = time.monotonic()
        try:
            backend.check()
            launch = backend.launch_for(self.settings.project_dir, self.test_files, self.pytest_args)
            transport = backend.start_agent(launch)
            client = AgentClient(env, transport)
            try:
                hello = client.wait_ready(backend.agent_start_timeout())
            except AgentTimeout:
                tail = transport.log_tail()
                transport.close()
                raise EnvironmentFailure(env, f"the agent did not report ready within "
                                              f"{backend.agent_start_timeout():.0f} s",
                                         hint="look at the last output below; a missing Python package "
                                              "in the environment is the usual cause", log_tail=tail) from None
            except AgentDied as exc:
                tail = transport.log_tail()
                transport.close()
                raise EnvironmentFailure(env, f"the agent exited while starting ({exc})",
                                         hint="the environment needs python3 with pytest and pytest-benchmark; "
                                              "see the last output below", log_tail=tail) from None
        except EnvironmentFailure as exc:
            runtime.failure = exc
            backend.stop()
            raise
        except Exception as exc:  # noqa: BLE001 - an image build, a VM disk, an engine API error...
            runtime.failure = EnvironmentFailure(env, f"could not be started: {type(exc).__name__}: {exc}",
                                                 hint="run `hostperf doctor`; the error above names the step")
            backend.stop()
            raise runtime.failure from exc
        runtime.client = client
        runtime.startup_s = time.monotonic() - started
        if not runtime.fingerprint:
            self._identify(runtime, hello)
            self.progress(f"hostperf: {env} ready in {runtime.startup_s:.1f} s: {fp.summary(runtime.fingerprint)}")
        return client

    def _identify(self, runtime: EnvRuntime, hello: Mapping[str, Any]) -> None:
        runtime.fingerprint = dict(hello.get("fingerprint") or {})
        runtime.fingerprint["outside"] = dict(runtime.backend.describe())
        runtime.match = fp.match_view(runtime.fingerprint, runtime.backend.match_facts())
        runtime.fingerprint_id = fp.fingerprint_id(runtime.match)
        try:
            runtime.baseline = self.store.load(runtime.backend.name, runtime.fingerprint_id)
        except BaselineError as exc:
            runtime.baseline_error = exc

    def _restart(self, env: str) -> None:
        runtime = self.runtimes[env]
        if runtime.client is not None:
            runtime.client.transport.close()
            runtime.client = None

    def stop_all(self) -> None:
        """Stop every environment; safe to call twice and from signal handlers."""
        # Stop first (it kills a VM that is still booting in the prestart thread, which then
        # fails fast), wait for that thread, then stop again what it may have created since.
        self._session_over.set()
        self._stop_backends()
        if self._prestarts:
            for thread, _ in self._prestarts:
                thread.join(timeout=60)
            self._prestarts = []
            self._stop_backends()
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def _stop_backends(self) -> None:
        for runtime in list(self.runtimes.values()):
            if runtime.client is not None:
                runtime.client.shutdown(timeout=5)
                runtime.client = None
            try:
                runtime.backend.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                self.progress(f"hostperf: stopping {runtime.backend.name} failed: {exc}")

    # -- measuring ------------------------------------------------------------------------

    def run_group(self, requests: Sequence[Request]) -> None:
        """Measure all targets of one test, interleaved in blocks so drift hits all alike."""
        pending = [r for r in requests if r.item_id not in self.results]
        if not pending:
            return
        # Measure nothing while an environment is still booting on the other core.
        self.wait_for_prestarts()
        for request in pending:
            self.results[request.item_id] = Result(request)
        self._assign_references(pending, self._time_reference(pending), after=False)
        blocks = self.settings.blocks if len({r.target.env for r in pending}) > 1 else 1
        options = dict(self.benchmark_options)
        if blocks > 1 and "max_time" in options:
            options["max_time"] = float(options["max_time"]) / blocks
        for _ in range(blocks):
            for request in pending:
                result = self.results[request.item_id]
                if result.outcome in ("failed", "skipped", "error"):
                    continue
                self._run_once(request, result, options)
        self._assign_references(pending, self._time_reference(pending, after=True), after=True)
        for request in pending:
            self._judge(self.results[request.item_id])
        for request in pending:
            self._confirm(request, dict(self.benchmark_options))

    def _confirm(self, request: Request, options: Mapping[str, Any]) -> None:
        """Re-measure a regression after a pause, up to ``confirm`` times; judge the fastest.

        Baselines hold typical sessions. On a shared host a test can run while the
        machine is slow for a moment (here: pure Python runs up to 1.6x slower in phases
        of milliseconds to seconds that come from outside the VM;
        ``benchmarks/machine_noise.py``), and that reads as a regression. A real
        regression is slow in every attempt; a moment's slowness is gone in one of them.
        A proven change that the host guard blamed on the machine is re-measured too: if
        the machine is back to speed and the test is still slow, it is the code.
        """
        first = self.results[request.item_id]
        attempts = [first]
        chosen = first
        while _worth_re_measuring(chosen) and len(attempts) <= self.settings.confirm:
            time.sleep(CONFIRM_PAUSE_S)
            retry = Result(request)
            retry.reference = self._time_reference([request], fresh=True).get(request.target.env)
            self._run_once(request, retry, options)
            if retry.outcome != "passed" or not retry.samples:
                break  # the first attempt's verdict stands; a flaky re-run is not evidence
            retry.reference_after = self._time_reference([request], fresh=True).get(request.target.env)
            self._judge(retry, to_native=first.judgement.to_native if first.judgement else None)
            attempts.append(retry)
            chosen = _fastest_trusted(attempts)
        if len(attempts) == 1 or chosen.judgement is None:
            return
        medians = ", ".join(format_seconds(a.summary.median_s) for a in attempts if a.summary)
        chosen.judgement = dataclasses.replace(
            chosen.judgement,
            reason=f"{chosen.judgement.reason} [re-measured {len(attempts) - 1}x after a pause: medians "
                   f"{medians}; judged on the fastest]")
        chosen.attempt_medians = [a.summary.median_s for a in attempts if a.summary]
        chosen.orchestration_s = [v for a in attempts for v in a.orchestration_s]
        self.results[request.item_id] = chosen

    def _assign_references(self, requests: Sequence[Request], timings: Mapping[str, SessionSummary],
                           after: bool) -> None:
        for request in requests:
            summary = timings.get(request.target.env)
            if summary is None:
                continue
            if after:
                self.results[request.item_id].reference_after = summary
            else:
                self.results[request.item_id].reference = summary

    def _time_reference(self, requests: Sequence[Request], after: bool = False,
                        fresh: bool = False) -> dict[str, SessionSummary]:
        """Time the reference workload in each environment right before (after) this test.

        Its ratio to the reference saved with the baseline tells whether the host itself
        is off its usual speed now; a failure here is left to the test run to report.
        A "before" reuses the previous test's "after" when it is recent, unless ``fresh``.
        """
        timings: dict[str, SessionSummary] = {}
        for env in dict.fromkeys(r.target.env for r in requests):
            runtime = self.runtimes.get(env)
            if not self.settings.save and (runtime is None or runtime.baseline is None):
                continue  # nothing to compare it with and nothing to save it for
            summary = self._recent_reference(runtime) if not (after or fresh) else None
            if summary is None:
                try:
                    answer = self.agent(env).request({"op": "reference", "rounds": REFERENCE_ROUNDS}, "reference",
                                                     self.settings.timeout_s, "timing the reference workload")
                    summary = summarize(answer["samples"])
                except (EnvironmentFailure, AgentDied, AgentTimeout, KeyError, ValueError):
                    continue
                self.runtimes[env].last_reference = (time.monotonic(), summary)
            timings[env] = summary
        return timings

    @staticmethod
    def _recent_reference(runtime: EnvRuntime | None) -> SessionSummary | None:
        if runtime is None or runtime.last_reference is None:
            return None
        measured_at, summary = runtime.last_reference
        return summary if time.monotonic() - measured_at <= REFERENCE_REUSE_S else None

    def _run_once(self, request: Request, result: Result, options: Mapping[str, Any]) -> None:
        env = request.target.env
        try:
            client = self.agent(env)
        except EnvironmentFailure as exc:
            result.outcome = "skipped" if env.split(":")[0] not in self._required_kinds() else "error"
            result.message = str(exc)
            return
        runtime = self.runtimes[env]
        mount = request.target.mount
        mount_path = self._mount_path(runtime, mount)
        message = {"op": "run", "nodeid": request.test, "mount": mount or "", "mount_path": mount_path,
                   "benchmark_options": dict(options)}
        started = time.perf_counter()
        try:
            answer = client.request(message, "result", self.settings.timeout_s, f"running {request.test}")
        except AgentTimeout:
            self._restart(env)
            result.outcome = "failed"
            result.message = (f"environment {env!r}: {request.test} did not finish within "
                              f"{self.settings.timeout_s:.0f} s (--hostperf-timeout); the agent was "
                              "stopped and will be restarted for the next test")
            return
        except (AgentDied, EnvironmentFailure) as exc:
            tail = client.transport.log_tail()
            self._restart(env)
            result.outcome = "failed"
            result.message = (f"environment {env!r}: the agent crashed while running {request.test} ({exc})"
                              + ("\n  last output:\n" + "\n".join("    " + l for l in tail.splitlines()[-15:])
                                 if tail else ""))
            return
        wall = time.perf_counter() - started
        result.orchestration_s.append(max(0.0, wall - float(answer.get("duration_s") or 0.0)))
        result.reports = list(answer.get("reports") or [])
        result.env_fingerprint = runtime.fingerprint
        result.fingerprint_id = runtime.fingerprint_id
        if answer.get("mount_info"):
            result.mount_info = dict(answer["mount_info"])
        if answer.get("outcome") != "passed":
            result.outcome = str(answer.get("outcome"))
            result.message = str(answer.get("message") or "")
            return
        result.outcome = "passed"
        if answer.get("samples"):
            result.samples.extend(float(x) for x in answer["samples"])
            result.iterations = int(answer.get("iterations") or 1)
        else:
            result.message = "the test ran but did not call the benchmark fixture; nothing was measured"

    def _mount_path(self, runtime: EnvRuntime, mount: str | None) -> str | None:
        if mount is None:
            return None
        for candidate in runtime.backend.mounts():
            if candidate.name == mount:
                return candidate.path
        return None

    def _required_kinds(self) -> set[str]:
        return {e.split(":")[0] for e in self.settings.require}

    # -- judging --------------------------------------------------------------------------

    def _judge(self, result: Result, to_native: RatioEstimate | None = None) -> None:
        if result.outcome != "passed" or not result.samples:
            return
        request = result.request
        runtime = self.runtimes[request.target.env]
        result.summary = summarize(result.samples)
        tolerance = request.tolerance if request.tolerance is not None else self.settings.tolerance
        accelerator = str(runtime.fingerprint.get("outside", {}).get("accelerator") or "") or None
        budget = budget_for(request.target, accelerator, request.max_overhead, self.settings.max_overhead,
                            _default_budgets())
        policy = Policy(tolerance, self.settings.alpha, self.comparisons, self.settings.session_noise,
                        budget if request.target.kind != "native" else None)
        # A re-measurement keeps the first attempt's ratio: only that one was interleaved.
        to_native = to_native or self._ratio_to_native(result, policy.confidence)
        if runtime.baseline_error is not None:
            result.judgement = Judgement(Verdict.NO_BASELINE, str(runtime.baseline_error), to_native=to_native)
            return
        mount_key = request.target.mount or "-"
        history = runtime.baseline.history(request.test, mount_key) if runtime.baseline else []
        if runtime.baseline is not None:
            result.baseline_path = str(runtime.baseline.path)
        note = self._mount_mismatch(result, history)
        if note:
            result.judgement = Judgement(Verdict.NO_BASELINE, note, to_native=to_native)
            return
        saved_references = [s for s in (reference_summary(h.context) for h in history) if s is not None]
        result.judgement = judge(result.summary, [h.summary() for h in history], policy, to_native,
                                 baseline_name=_baseline_label(runtime),
                                 host_slowdown=host_slowdown(
                                     [s for s in (result.reference, result.reference_after) if s is not None],
                                     saved_references),
                                 host_noise=between_session_sd(saved_references))
        if not history and runtime.fingerprint_id:
            others = [p.name for p in self.store.files_for(request.target.env)
                      if p != self.store.path_for(request.target.env, runtime.fingerprint_id)]
            if others:
                result.judgement = dataclasses.replace(
                    result.judgement,
                    reason=f"no baseline for fingerprint {runtime.fingerprint_id}; other machines' baselines: "
                           f"{', '.join(others[:3])} (run `hostperf compare` to see what differs)")

    def _mount_mismatch(self, result: Result, history: Sequence[Any]) -> str:
        if not history or not result.mount_info:
            return ""
        now = next(iter(result.mount_info.values()), {}).get("fstype")
        then = history[-1].context.get("fstype")
        if now and then and now != then:
            return (f"baseline was measured on a {then} mount, this run is on {now}; not comparable "
                    "(save a new baseline with --hostperf-save if the change is intended)")
        return ""

    def _ratio_to_native(self, result: Result, confidence: float) -> RatioEstimate | None:
        target = result.request.target
        if target.kind == "native":
            return None
        native = next((r for r in self.results.values()
                       if r.request.test == result.request.test and r.request.target.kind == "native"
                       and r.samples and r.outcome == "passed"), None)
        if native is None:
            return None
        return ratio_of_medians(result.samples, native.samples, confidence)

    # -- after the run --------------------------------------------------------------------

    def save_baselines(self) -> list[Path]:
        """Append this session's measurements to each environment's baseline file."""
        written: list[Path] = []
        for env, runtime in self.runtimes.items():
            if runtime.fingerprint_id is None:
                continue
            measurements = [
                Measurement(r.request.test, r.request.target.mount or "-", r.summary, r.iterations, r.samples,
                            _context(r))
                for r in self.results.values()
                if r.request.target.env == env and r.summary is not None
            ]
            if not measurements:
                continue
            written.append(self.store.save(runtime.backend.name, runtime.fingerprint_id, runtime.match,
                                           runtime.fingerprint, measurements, self.session_id,
                                           self.settings.history))
        return written

    def orchestration_median_ms(self, env: str | None = None) -> float | None:
        values = [v for r in self.results.values() for v in r.orchestration_s
                  if env is None or r.request.target.env == env]
        return statistics.median(values) * 1000 if values else None


def _context(result: Result) -> dict[str, Any]:
    """What is saved beside a measurement: the mount's filesystem and the host reference."""
    context: dict[str, Any] = {}
    if result.mount_info:
        context["fstype"] = next(iter(result.mount_info.values()), {}).get("fstype")
    if result.reference is not None:
        context["reference"] = dataclasses.asdict(result.reference)
    return context


def reference_summary(context: Mapping[str, Any]) -> SessionSummary | None:
    data = context.get("reference")
    if not isinstance(data, Mapping):
        return None
    try:
        return SessionSummary(float(data["median_s"]), float(data["log_median_se"]), int(data["rounds"]))
    except (KeyError, TypeError, ValueError):
        return None


def _fastest_trusted(attempts: Sequence[Result]) -> Result:
    """The fastest attempt measured while the machine was at speed, else the fastest."""
    trusted = [a for a in attempts if not (a.judgement and a.judgement.blamed_on_host)]
    return min(trusted or attempts, key=lambda a: a.summary.median_s if a.summary else math.inf)


def _worth_re_measuring(result: Result) -> bool:
    judgement = result.judgement
    return judgement is not None and (judgement.verdict is Verdict.REGRESSION or judgement.blamed_on_host)


def _baseline_label(runtime: EnvRuntime) -> str:
    return f"{runtime.backend.name}-{runtime.fingerprint_id}"


def _default_budgets() -> Mapping[str, float]:
    from pytest_hostperf.options import DEFAULT_MAX_OVERHEAD

    return DEFAULT_MAX_OVERHEAD


class _Unavailable(Environment):
    """Stands in for a backend that could not even be constructed."""

    def __init__(self, name: str) -> None:
        self.name = name

    def check(self) -> None:
        return None

    def mounts(self) -> Sequence[Any]:
        return ()

    def start_agent(self, launch: Any) -> Any:  # pragma: no cover - never reached: failure is set
        raise NotImplementedError

    def stop(self) -> None:
        return None


