"""Which (environment, mount) targets a test runs on, and the marker that narrows them.

Pure: the plugin hands in the marker's kwargs and what the test uses.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Mapping, Sequence

from pytest_hostperf.options import BUILTIN, MOUNTS, Kinds, parse_budgets, parse_envs, parse_fraction

MARKER_KEYS = ("envs", "mounts", "max_overhead", "tolerance")


class MarkerError(ValueError):
    """A ``@pytest.mark.hostperf(...)`` argument the plugin cannot use."""


@dataclasses.dataclass(frozen=True)
class Target:
    """One place a test runs: an environment and (for tests using hostperf_dir) a mount."""

    env: str
    mount: str | None   # None: the test does not use hostperf_dir
    #: Whether the kind offers one mount only (then the id omits it); None: look it up in
    #: the built-in kinds. Set by :func:`plan_targets` for plugin kinds.
    single_mount: bool | None = dataclasses.field(default=None, compare=False)

    @property
    def kind(self) -> str:
        return self.env.split(":", 1)[0]

    @property
    def id(self) -> str:
        single = self.single_mount if self.single_mount is not None else len(MOUNTS.get(self.kind, ())) == 1
        if self.mount is None or single:
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


def parse_marker(kwargs: Mapping[str, Any], args: Sequence[Any] = (), kinds: Kinds = BUILTIN) -> MarkerSettings:
    if args:
        raise MarkerError("takes keyword arguments only, e.g. @pytest.mark.hostperf(envs=['native', 'docker'])")
    unknown = sorted(set(kwargs) - set(MARKER_KEYS))
    if unknown:
        raise MarkerError(f"unknown argument(s) {', '.join(unknown)}; allowed: {', '.join(MARKER_KEYS)}")
    try:
        envs = _names(kwargs["envs"], "envs") if "envs" in kwargs else None
        if envs is not None:
            envs = parse_envs(",".join(envs), kinds)
        mounts = _names(kwargs["mounts"], "mounts") if "mounts" in kwargs else None
        if mounts is not None:
            known = {m for kind in kinds.values() for m in kind.all_mounts}
            bad = [m for m in mounts if m not in known]
            if bad:
                raise MarkerError(f"mounts: unknown mount(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        overhead = kwargs.get("max_overhead")
        if overhead is not None:
            if isinstance(overhead, (int, float)) and not isinstance(overhead, bool):
                overhead = {kind: overhead for kind in kinds if kind != "native"}
            overhead = parse_budgets(overhead, kinds)
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


def plan_targets(session_envs: Sequence[str], settings: MarkerSettings, uses_dir: bool,
                 kinds: Kinds = BUILTIN, session_mounts: Sequence[str] | None = None) -> list[Target]:
    """The targets of one test, in environment order then mount order.

    The mounts: the marker's ``mounts=``, else the session's ``--hostperf-mounts``, else
    each kind's default ones; a mount a kind offers only on request must be named.
    """
    envs = [e for e in session_envs if settings.envs is None or e in settings.envs
            or e.split(":", 1)[0] in settings.envs]
    targets: list[Target] = []
    for env in envs:
        kind = env.split(":", 1)[0]
        if not uses_dir and settings.mounts is None:
            targets.append(Target(env, None))
            continue
        offered = kinds[kind]
        asked = settings.mounts if settings.mounts is not None else session_mounts
        wanted = list(offered.mounts) if asked is None else [m for m in offered.all_mounts if m in asked]
        # An environment that offers none of the requested mounts still runs on its
        # default mount: "compare my bind mount" should not silently drop native.
        for mount in wanted or offered.mounts[:1]:
            targets.append(Target(env, mount, len(offered.all_mounts) == 1))
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
