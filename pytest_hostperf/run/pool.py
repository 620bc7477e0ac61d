"""The environment pool: one backend per environment, its agent started once and kept warm.

Like pytest-xdist's node manager: the pool starts agents (in the background when asked,
so a VM boots while pytest collects), identifies each environment once from its agent's
``ready`` message, restarts an agent that died (the next :meth:`EnvironmentPool.agent`
call starts a fresh one: the backend replaces a dead container or VM), and stops
everything at the end. It knows nothing of measuring or judging.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable, Mapping, Sequence

from pytest_hostperf import fingerprint as fp
from pytest_hostperf import provenance
from pytest_hostperf.environments.base import (
    AgentClient,
    AgentDied,
    AgentLaunch,
    AgentTimeout,
    Environment,
    EnvironmentContext,
    EnvironmentFailure,
    Mount,
    Transport,
)
from pytest_hostperf.progress import Reporter
from pytest_hostperf.run.answers import MalformedAnswer, module_report
from pytest_hostperf.run.codecheck import CodeCheck

#: Makes the backend of an environment name (the ``pytest_hostperf_make_environment`` hook).
BackendFactory = Callable[[str, EnvironmentContext], Environment]


@dataclasses.dataclass(frozen=True)
class AgentArgs:
    """What every agent collects (test files, arguments that shape collection) and imports from."""

    test_files: tuple[str, ...]
    pytest_args: tuple[str, ...] = ()
    #: The project's import roots, relative to the project (see :mod:`pytest_hostperf.importroots`).
    import_roots: tuple[str, ...] = ()


class EnvironmentState:
    """One environment for the whole session: its backend, its agent, what it really is."""

    def __init__(self, name: str, backend: Environment) -> None:
        self.name = name
        self.backend = backend
        self.client: AgentClient | None = None
        self.lock = threading.Lock()  # the prestart thread and the first test may race
        self.failure: EnvironmentFailure | None = None
        self.fingerprint: dict[str, Any] = {}
        self.match: dict[str, Any] = {}
        self.fingerprint_id: str | None = None
        self.startup_s: float | None = None
        self.starts = 0  # agents started; more than one means a restart after a death

    @property
    def identified(self) -> bool:
        return self.fingerprint_id is not None

    @property
    def accelerator(self) -> str | None:
        outside = self.fingerprint.get("outside", {})
        return str(outside.get("accelerator") or "") or None if isinstance(outside, Mapping) else None

    def mount_path(self, mount: str | None) -> str | None:
        if mount is None:
            return None
        return next((m.path for m in self.backend.mounts() if m.name == mount), None)


class EnvironmentPool:
    """Starts, identifies, restarts and stops the session's environments."""

    def __init__(self, context: EnvironmentContext, factory: BackendFactory, code: CodeCheck | None = None) -> None:
        self.context = context
        self._factory = factory
        #: Where each environment's modules came from, and how they differ from native's.
        self.code = code or CodeCheck()
        self._states: dict[str, EnvironmentState] = {}
        self._states_lock = threading.Lock()
        self._prestarts: list[tuple[threading.Thread, threading.Event]] = []
        self._prestarted: set[str] = set()
        self._session_over = threading.Event()

    @property
    def reporter(self) -> Reporter:
        return self.context.reporter

    def state(self, env: str) -> EnvironmentState:
        """The environment's state, its backend made on first use (a failure is kept, not raised)."""
        with self._states_lock:
            if env not in self._states:
                try:
                    backend = self._factory(env, self.context)
                except EnvironmentFailure as exc:
                    state = EnvironmentState(env, _Unavailable(env))
                    state.failure = exc
                    self._states[env] = state
                    return state
                self._states[env] = EnvironmentState(env, backend)
            return self._states[env]

    def states(self) -> list[EnvironmentState]:
        with self._states_lock:
            return list(self._states.values())

    # -- agents ---------------------------------------------------------------------------

    def agent(self, env: str, args: AgentArgs) -> AgentClient:
        """The warm agent of ``env``, started on first use; raises :class:`EnvironmentFailure`."""
        state = self.state(env)
        with state.lock:
            if state.failure is not None:
                raise state.failure
            if state.client is None:
                self._start(state, args)
            assert state.client is not None
            return state.client

    def restart(self, env: str) -> None:
        """Drop a dead or hung agent; the next :meth:`agent` call starts a fresh one."""
        state = self.state(env)
        with state.lock:
            if state.client is not None:
                state.client.transport.close()
                state.client = None

    def prestart(self, envs: Sequence[str], args: AgentArgs) -> None:
        """Start agents in a background thread while pytest and the controller finish starting.

        Agent start-up is another process (or a VM), so it overlaps with the controller's
        own imports and collection on a second core; measuring waits for every prestart
        (:meth:`wait_for_prestarts`). A failure is kept and reported by the first test.
        """
        envs = [env for env in envs if env not in self._prestarted]
        if not envs:
            return
        self._prestarted.update(envs)
        # VMs boot for a minute or more under TCG: each gets its own thread, started once
        # the others (which may build the project image the VMs are made from) are up.
        vms = [env for env in envs if boots_a_vm(env)]

        def start(names: Sequence[str]) -> None:
            for env in names:
                try:
                    self.agent(env, args)
                except Exception:  # noqa: BLE001 - kept in the state, reported by the first test
                    pass

        def start_all() -> None:
            start([env for env in envs if env not in vms])
            for env in vms:
                self.in_background(lambda env=env: start([env]), f"hostperf-prestart-{env}",  # type: ignore[misc]
                                   keep_alive=True)

        self.in_background(start_all, f"hostperf-prestart-{'-'.join(envs)}", keep_alive=True)

    def in_background(self, work: Callable[[], None], name: str, keep_alive: bool = False) -> None:
        """Run ``work`` in a daemon thread that :meth:`wait_for_prestarts` waits for.

        ``keep_alive``: the thread lives on until the session ends, because a child
        started with PR_SET_PDEATHSIG (the qemu backend's VMs) dies with the *thread*
        that started it.
        """
        done = threading.Event()

        def run() -> None:
            try:
                work()
            finally:
                done.set()
            if keep_alive:
                self._session_over.wait()

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self._prestarts.append((thread, done))

    def wait_for_prestarts(self) -> None:
        # A prestart may start more of them (one per VM): wait until none is pending.
        while pending := [done for _, done in list(self._prestarts) if not done.is_set()]:
            for done in pending:
                done.wait()

    def _start(self, state: EnvironmentState, args: AgentArgs) -> None:
        backend = state.backend
        started = time.monotonic()
        try:
            backend.check()
            launch = dataclasses.replace(
                backend.launch_for(self.context.settings.project_dir, args.test_files, args.pytest_args),
                import_roots=args.import_roots)  # relative: the same in every backend's mount of the project
            client, hello = _connect(state.name, backend, launch)
            modules = _ready_modules(state.name, client, hello)
        except EnvironmentFailure as exc:
            state.failure = exc
            backend.stop()
            raise
        except Exception as exc:  # noqa: BLE001 - an image build, a VM disk, an engine API error...
            state.failure = EnvironmentFailure(state.name, f"could not be started: {type(exc).__name__}: {exc}",
                                               hint="run `hostperf doctor`; the error above names the step")
            backend.stop()
            raise state.failure from exc
        state.client = client
        state.starts += 1
        self.code.started(state.name, modules)
        elapsed = time.monotonic() - started
        if not state.identified:
            state.startup_s = elapsed
            _identify(state, hello, modules)
            self.reporter.step(f"{state.name} ready in {elapsed:.1f} s: {fp.summary(state.fingerprint)}")
        else:
            self.reporter.step(f"{state.name}: agent restarted in {elapsed:.1f} s")

    # -- the end ----------------------------------------------------------------------------

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

    def _stop_backends(self) -> None:
        for state in self.states():
            if state.client is not None:
                state.client.shutdown(timeout=5)
                state.client = None
            try:
                state.backend.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                self.reporter.warn(f"stopping {state.name} failed: {exc}")


def _connect(env: str, backend: Environment, launch: AgentLaunch) -> tuple[AgentClient, dict[str, Any]]:
    """Start the agent and wait for its ``ready``; a failure carries the agent's last output."""
    transport: Transport = backend.start_agent(launch)
    client = AgentClient(env, transport)
    timeout = backend.agent_start_timeout()
    try:
        return client, client.wait_ready(timeout)
    except AgentTimeout:
        tail = transport.log_tail()
        transport.close()
        raise EnvironmentFailure(env, f"the agent did not report ready within {timeout:.0f} s",
                                 hint="look at the last output below; a missing Python package "
                                      "in the environment is the usual cause", log_tail=tail) from None
    except AgentDied as exc:
        tail = transport.log_tail()
        transport.close()
        raise EnvironmentFailure(env, f"the agent exited while starting ({exc})",
                                 hint="the environment needs python3 with pytest and pytest-benchmark; "
                                      "see the last output below", log_tail=tail) from None


def _ready_modules(env: str, client: AgentClient, hello: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    try:
        return module_report(hello.get("modules"))
    except MalformedAnswer as exc:
        client.transport.close()
        raise EnvironmentFailure(env, f"malformed ready message from the agent: {exc}") from None


def _identify(state: EnvironmentState, hello: Mapping[str, Any], modules: provenance.Report) -> None:
    """What the environment is, from inside (the agent) and outside (the backend).

    The dependency versions the collected tests imported are part of the match: a
    dependency upgrade starts a new baseline instead of reading as the project's change.
    """
    state.fingerprint = dict(hello.get("fingerprint") or {})
    state.fingerprint["outside"] = dict(state.backend.describe())
    imported = provenance.match_key(modules)
    if imported:
        state.fingerprint["modules"] = imported
    state.match = fp.match_view(state.fingerprint, {**state.backend.match_facts(), "modules": imported})
    state.fingerprint_id = fp.fingerprint_id(state.match)


class _Unavailable(Environment):
    """Stands in for a backend that could not even be constructed."""

    def __init__(self, name: str) -> None:
        self.name = name

    def check(self) -> None:
        return None

    def mounts(self) -> Sequence[Mount]:
        return ()

    def start_agent(self, launch: AgentLaunch) -> Transport:  # pragma: no cover - the failure is set
        raise NotImplementedError

    def stop(self) -> None:
        return None


def boots_a_vm(env: str) -> bool:
    """``qemu``, ``docker@qemu``: environments whose start-up is a VM boot."""
    from pytest_hostperf.options import BUILTIN

    kind = BUILTIN.get(env.partition(":")[0])
    return kind is not None and kind.accelerated
