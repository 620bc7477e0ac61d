"""What the controller accepts from an agent: its answers, validated before anything uses them.

An agent runs arbitrary test code next to our protocol, in an environment we do not
control, so an answer is checked like any input (as pyperf's manager checks what its
workers dump): a wrong type, a NaN or zero timing or a missing field becomes a
:class:`MalformedAnswer` that fails the one item, never the session. Pure: stdlib only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from pytest_hostperf.model import Outcome


class MalformedAnswer(ValueError):
    """An agent answer that cannot be what the protocol says; the message names the field."""


@dataclasses.dataclass(frozen=True)
class RunAnswer:
    """The agent's answer to one ``run`` request."""

    outcome: Outcome
    message: str
    reports: tuple[Mapping[str, Any], ...]
    samples: tuple[float, ...]      # empty: the test did not call the benchmark fixture
    iterations: int
    duration_s: float
    mount_info: Mapping[str, Any]
    #: Modules this run imported for the first time, as :mod:`pytest_hostperf.agent.origins` reports them.
    modules: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)


def parse_run_answer(answer: Mapping[str, Any]) -> RunAnswer:
    """Validate a ``result`` event; raises :class:`MalformedAnswer`."""
    try:
        outcome = Outcome(answer.get("outcome"))
    except ValueError:
        raise MalformedAnswer(f"outcome is {answer.get('outcome')!r}; expected one of "
                              f"{', '.join(o.value for o in Outcome)}") from None
    reports = answer.get("reports") or []
    if not isinstance(reports, list) or not all(isinstance(r, dict) for r in reports):
        raise MalformedAnswer("reports must be a list of serialized test reports")
    samples = timings(answer.get("samples") or [], "samples") if outcome is Outcome.PASSED else ()
    iterations = answer.get("iterations") or 1
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise MalformedAnswer(f"iterations is {iterations!r}; expected a whole number >= 1")
    duration = answer.get("duration_s") or 0.0
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration):
        raise MalformedAnswer(f"duration_s is {duration!r}; expected a number of seconds")
    mount_info = answer.get("mount_info") or {}
    if not isinstance(mount_info, dict):
        raise MalformedAnswer("mount_info must be an object")
    return RunAnswer(outcome, str(answer.get("message") or ""), tuple(reports), samples, iterations,
                     float(duration), mount_info, module_report(answer.get("modules")))


def module_report(value: Any) -> dict[str, Mapping[str, Any]]:
    """An agent's module report (``{top-level name: {origin, path, ...}}``); absent is empty."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, dict) for k, v in value.items()):
        raise MalformedAnswer("modules must map module names to objects")
    return value


def timings(values: Any, field: str) -> tuple[float, ...]:
    """A list of positive finite seconds; anything else is a :class:`MalformedAnswer`."""
    if not isinstance(values, list):
        raise MalformedAnswer(f"{field} is {type(values).__name__}; expected a list of seconds")
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MalformedAnswer(f"{field}[{index}] is {value!r}; expected a number of seconds")
        if not (math.isfinite(value) and value > 0):
            raise MalformedAnswer(f"{field}[{index}] is {value!r}; a timing must be positive and finite")
    return tuple(float(v) for v in values)
