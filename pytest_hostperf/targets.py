"""Which (environment, mount) targets a test runs on, and the marker that narrows them.

Pure: the plugin hands in the marker's kwargs and what the test uses.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Mapping, Sequence

from pytest_hostperf.options import MOUNTS, parse_budgets, parse_envs, parse_fraction

MARKER_KEYS = ("envs", "mounts", "max_overhead", "tolerance")


class MarkerError(ValueError):
    """A ``@pytest.mark.hostperf(...)`` argument the plugin cannot use."""


@dataclasses.dataclass(frozen=True)
class Target:
    env: str
    mount: str | None   # None: the test does not use hostperf_dir

    @property
    def kind(self) -> str:
        return self.env.split(":", 1)[0]

    @property
    def id(self) -> str:
        if self.mount is None or len(MOUNTS[self.kind]) == 1:
            return self.env
        return f"{self.env}-{self.mount}"

    def __str__(self) -> str:  # used by pytest when it builds ids
        return self.id


@dataclasses.dataclass(frozen=True)
class MarkerSettings:
    envs: tuple[str, ...] | None = None
    mounts: tuple[str, ...] | None = None
    max_overhead: Mapping[str, float] | None = None
    tolerance: float | None = None


def parse_marker(kwargs: Mapping[str, Any], args: Sequence[Any] = ()) -> MarkerSettings:
    if args:
        raise MarkerError("takes keyword arguments only, e.g. @pytest.mark.hostperf(envs=['native', 'docker'])")
    unknown = sorted(set(kwargs) - set(MARKER_KEYS))
    if unknown:
        raise MarkerError(f"unknown argument(s) {', '.join(unknown)}; allowed: {', '.join(MARKER_KEYS)}")
    try:
        envs = _names(kwargs["envs"], "envs") if "envs" in kwargs else None
        if envs is not None:
            envs = parse_envs(",".join(envs))
        mounts = _names(kwargs["mounts"], "mounts") if "mounts" in kwargs else None
        if mounts is not None:
            known = {m for ms in MOUNTS.values() for m in ms}
            bad = [m for m in mounts if m not in known]
            if bad:
                raise MarkerError(f"mounts: unknown mount(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        overhead = kwargs.get("max_overhead")
        if overhead is not None:
            if isinstance(overhead, (int, float)) and not isinstance(overhead, bool):
                overhead = {kind: overhead for kind in ("docker", "qemu", "ssh")}
            overhead = parse_budgets(overhead)
        tolerance = parse_fraction(kwargs["tolerance"]) if "tolerance" in kwargs else None
    except argparse.ArgumentTypeError as exc:
        raise MarkerError(str(exc)) from None
    return MarkerSettings(envs, mounts, overhead, tolerance)


def _names(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise MarkerError(f"{key} must be a list of names, got {value!r}")
    return tuple(value)


def plan_targets(session_envs: Sequence[str], settings: MarkerSettings, uses_dir: bool) -> list[Target]:
    """The targets of one test, in environment order then mount order."""
    envs = [e for e in session_envs if settings.envs is None or e in settings.envs
            or e.split(":", 1)[0] in settings.envs]
    targets: list[Target] = []
    for env in envs:
        kind = env.split(":", 1)[0]
        if not uses_dir and settings.mounts is None:
            targets.append(Target(env, None))
            continue
        offered = MOUNTS[kind]
        wanted = [m for m in offered if settings.mounts is None or m in settings.mounts]
        # An environment that offers none of the requested mounts still runs on its
        # default mount: "compare my bind mount" should not silently drop native.
        for mount in wanted or offered[:1]:
            targets.append(Target(env, mount))
    return targets


def budget_for(target: Target, accelerator: str | None, *sources: Mapping[str, float] | None) -> float | None:
    """The overhead budget for a target: most specific key of the first source that has one."""
    keys = [target.id, f"{target.kind}:{accelerator}" if accelerator else None, target.env, target.kind]
    for source in sources:
        if not source:
            continue
        for key in keys:
            if key and key in source:
                return source[key]
    return None
