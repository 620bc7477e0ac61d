"""Same code in every environment: each agent's module report, checked against native's.

Every agent reports where the modules the tests imported came from (at ``ready``, then a
delta with each result: :mod:`pytest_hostperf.agent.origins`). A ratio to native means
something only when both sides ran the same code with the same dependency versions, so
an environment whose merged report differs from the reference (:func:`compare_modules`:
the project's code shadowed by an installed copy, other file content, another version
of a dependency, a pure-Python fallback instead of a C extension) fails its items with
a reason naming the module and both origins.

The reference is native's report, completed by the controller's own view for modules
native has not reported (the controller is the same interpreter and collected the same
test files; it is all there is when native is not in the session).
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable

from pytest_hostperf.provenance import ModuleMismatch, Report, compare_modules, merge

#: The environment every other one is compared with.
REFERENCE_ENV = "native"


class CodeCheck:
    """The module reports of one session's environments and their differences from native."""

    def __init__(self, controller_view: Callable[[], Report] | None = None) -> None:
        self._controller_view = controller_view
        self._view: Report | None = None
        self._reports: dict[str, dict[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()  # agents start in prestart threads

    def started(self, env: str, modules: Report) -> None:
        """A (re)started agent's full report from its ``ready``: it replaces what was known."""
        with self._lock:
            self._reports[env] = merge({}, modules)

    def ran(self, env: str, modules: Report) -> None:
        """What one run imported for the first time (its result's delta)."""
        if modules:
            with self._lock:
                self._reports[env] = merge(self._reports.get(env, {}), modules)

    def modules(self, env: str) -> dict[str, dict[str, Any]]:
        """The environment's merged report so far."""
        with self._lock:
            return dict(self._reports.get(env, {}))

    def mismatches(self, env: str) -> list[ModuleMismatch]:
        """Modules of ``env`` that differ from the reference (none for native itself)."""
        if env == REFERENCE_ENV or env not in self._reports:
            return []
        return compare_modules(self.reference(), self.modules(env))

    def reason(self, env: str) -> str:
        """One line for a failed item, naming every module that differs; '' when none does."""
        return "; ".join(m.reason(env) for m in self.mismatches(env))

    def reference(self) -> dict[str, dict[str, Any]]:
        if self._view is None:
            self._view = self._controller_view() if self._controller_view else {}
        return merge(self._view, self.modules(REFERENCE_ENV))

    def report(self, env: str) -> dict[str, Any] | None:
        """The report's ``code`` entry of an environment: its modules and their mismatches."""
        if env not in self._reports:
            return None
        return {"modules": self.modules(env), "mismatches": [dataclasses.asdict(m) for m in self.mismatches(env)]}
