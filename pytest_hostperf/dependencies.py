"""The image's requirements: what the controller's environment has installed, pinned.

The same test body must meet the same dependency versions in every environment, so by
default the image gets every distribution installed next to the controller at its exact
version (``name==version``; wheels for the image's platform are downloaded on the host
and installed offline), minus:

* the project itself: distributions installed from a directory inside the project tree
  (``pip install -e .`` or ``pip install .``); its code reaches every environment through
  the mounted tree and the import roots (:mod:`pytest_hostperf.importroots`);
* pytest-hostperf and what only it needs (docker, scipy, psutil, ...): the agent is
  shipped, and the controller's libraries have no business in the measured environment
  (pytest and pytest-benchmark, which the agent runs on, always stay);
* installer tooling (pip, setuptools, wheel) unless something kept requires it;
* what the user excludes (ini ``hostperf_requirements_exclude``: names or globs; pytest
  and pytest-benchmark stay, so ``*`` leaves only them and ``hostperf_requirements``).

``hostperf_requirements`` adds lines; a line naming a distribution that is already
pinned replaces the pin (``numpy<2`` instead of ``numpy==2.1.3``). A distribution that
cannot be fetched by name and version (installed from a VCS URL, a local archive or a
directory outside the project) is listed in :attr:`DependencyPlan.problems` with the fix.

:func:`plan_requirements` is pure (it takes :class:`Installed` records);
:func:`installed_distributions` reads them from ``importlib.metadata``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib.metadata
import os
import re
from typing import Iterable, Mapping, Sequence

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement

from pytest_hostperf.importroots import direct_url, file_url_path

#: The distribution of this plugin; it and what only it needs stay out of the image.
OWN_DISTRIBUTION = "pytest-hostperf"
#: Installed by every venv and by pip itself; the image has its own.
TOOLING = ("pip", "setuptools", "wheel", "distribute")
#: What the agent itself runs on: always in the image, at the controller's versions.
AGENT_NEEDS = ("pytest", "pytest-benchmark")


@dataclasses.dataclass(frozen=True)
class Installed:
    """One installed distribution, as far as choosing requirements needs it."""

    name: str
    version: str
    requires: tuple[str, ...] = ()          # Requires-Dist lines
    direct_url: Mapping[str, object] = dataclasses.field(default_factory=dict)  # PEP 610, {} from an index


@dataclasses.dataclass(frozen=True)
class DependencyPlan:
    """Requirements for the image and why everything else was left out."""

    requirements: tuple[str, ...]
    excluded: Mapping[str, str]       # distribution -> why it is not in the image
    problems: tuple[str, ...] = ()    # distributions that cannot be fetched as pinned, with the fix


class RequirementError(ValueError):
    """A ``hostperf_requirements``/``_exclude`` entry that is not a valid requirement or name."""


def canonical(name: str) -> str:
    """PEP 503 normalized name: ``Foo_Bar.baz`` -> ``foo-bar-baz``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions(paths: Sequence[str] | None = None) -> list[Installed]:
    """The distributions importable from ``paths`` (default: this interpreter's sys.path)."""
    found: dict[str, Installed] = {}
    dists = importlib.metadata.distributions(path=list(paths)) if paths is not None \
        else importlib.metadata.distributions()
    for dist in dists:
        name = dist.metadata["Name"]
        if not name or canonical(name) in found:
            continue  # the first on the path wins, as for imports
        found[canonical(name)] = Installed(str(name), str(dist.version), tuple(dist.requires or ()),
                                           direct_url(dist))
    return list(found.values())


def plan_requirements(installed: Iterable[Installed], project_root: str, extra: Sequence[str] = (),
                      exclude: Sequence[str] = (), marker_env: Mapping[str, str] | None = None) -> DependencyPlan:
    """The image's requirements for a project at ``project_root``: see the module docstring.

    ``marker_env`` evaluates environment markers of Requires-Dist lines (default: this
    interpreter's, the one that decided what got installed).
    """
    dists = {canonical(d.name): d for d in installed}
    env: dict[str, str] = dict(marker_env) if marker_env is not None else {
        key: str(value) for key, value in default_environment().items()}
    graph = {name: _needs(dist, dists, env) for name, dist in dists.items()}
    own = canonical(OWN_DISTRIBUTION)
    project = {name for name, dist in dists.items() if _installed_from_project(dist, project_root)}
    # Whatever hostperf does not need is the user's; what it needs stays only when something
    # of the user's, the project or the agent needs it too (cycles included).
    hostperf_needs = _closure({own}, graph)
    users = {name for name in dists if name not in hostperf_needs and name not in project and name not in TOOLING}
    roots = users | {n for p in project for n in graph[p]} | set(AGENT_NEEDS)
    keep = _closure(roots, graph) - project - {own}
    excluded = {name: _why_left_out(name, project, own) for name in dists if name not in keep}
    patterns = [_exclude_pattern(entry) for entry in exclude if entry.strip()]
    for name in sorted(keep - set(AGENT_NEEDS)):  # the agent cannot run without these
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            keep.discard(name)
            excluded[name] = "named in hostperf_requirements_exclude"
    lines = {name: f"{dists[name].name}=={dists[name].version}" for name in keep}
    problems = {name: _fetch_problem(dists[name]) for name in keep}
    for entry in (e.strip() for e in extra):
        if entry and not entry.startswith("#"):
            name = _requirement_name(entry)
            lines[name] = entry        # adds, or replaces the pin
            problems.pop(name, None)   # the user said how to get it
    for name, problem in problems.items():
        if problem:
            del lines[name]
    return DependencyPlan(tuple(sorted(lines.values(), key=str.lower)), dict(sorted(excluded.items())),
                          tuple(problem for _, problem in sorted(problems.items()) if problem))


def check_entries(extra: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
    """Raise :class:`RequirementError` for a ``hostperf_requirements``/``_exclude`` line that is no
    requirement or name (checked when the session is configured, long before an image is built)."""
    for entry in (e.strip() for e in extra):
        if entry and not entry.startswith("#"):
            _requirement_name(entry)
    for entry in exclude:
        if entry.strip():
            _exclude_pattern(entry)


def _why_left_out(name: str, project: set[str], own: str) -> str:
    if name in project:
        return "the project itself (its code comes from the mounted tree)"
    if name == own:
        return "pytest-hostperf itself (the agent is shipped)"
    if name in TOOLING:
        return "installer tooling that nothing kept requires"
    return f"needed only by {OWN_DISTRIBUTION}"


def _needs(dist: Installed, dists: Mapping[str, Installed], env: Mapping[str, str]) -> set[str]:
    """Names this distribution requires here, with what the extras it asks for add."""
    names: set[str] = set()
    for requirement in _parsed(dist.requires):
        if not _applies(requirement, env, ""):
            continue
        name = canonical(requirement.name)
        names.add(name)
        target = dists.get(name)
        for extra in requirement.extras if target else ():
            names |= {canonical(r.name) for r in _parsed(target.requires)  # type: ignore[union-attr]
                      if r.marker and _applies(r, env, extra) and not _applies(r, env, "")}
    return names


def _parsed(lines: Iterable[str]) -> list[Requirement]:
    parsed = []
    for line in lines:
        try:
            parsed.append(Requirement(line))
        except InvalidRequirement:
            continue  # a broken line in someone's metadata: pip does not honour it either
    return parsed


def _applies(requirement: Requirement, env: Mapping[str, str], extra: str) -> bool:
    return requirement.marker is None or bool(requirement.marker.evaluate({**env, "extra": extra}))


def _closure(roots: Iterable[str], graph: Mapping[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    pending = [name for name in roots if name in graph]
    while pending:
        name = pending.pop()
        if name not in seen:
            seen.add(name)
            pending += [n for n in graph[name] if n in graph and n not in seen]
    return seen


def _installed_from_project(dist: Installed, project_root: str) -> bool:
    info = dist.direct_url
    if "dir_info" not in info:
        return False
    path = file_url_path(str(info.get("url", "")))
    if path is None:
        return False
    root = os.path.realpath(project_root)
    path = os.path.realpath(path)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _fetch_problem(dist: Installed) -> str:
    """Why ``name==version`` may not be downloadable, or "" when it came from an index."""
    info = dist.direct_url
    if not info:
        return ""
    where = str(info.get("url", "?"))
    kind = "a VCS checkout" if "vcs_info" in info else "a directory" if "dir_info" in info else "an archive"
    return (f"{dist.name}=={dist.version} was installed from {kind} ({where}), not from a package index, so the "
            f"image cannot download it: add a requirement pip can fetch (a released version or a wheel URL) to "
            f"hostperf_requirements, or name {dist.name} in hostperf_requirements_exclude")


def _requirement_name(entry: str) -> str:
    try:
        return canonical(Requirement(entry).name)
    except InvalidRequirement as exc:
        raise RequirementError(f"hostperf_requirements entry {entry!r} is not a requirement ({exc}); "
                               "write one per line like 'numpy==1.26.4' or 'msgpack>=1'") from None


def _exclude_pattern(entry: str) -> str:
    text = entry.strip()
    if not re.fullmatch(r"[A-Za-z0-9*?\[\]._-]+", text):
        raise RequirementError(f"hostperf_requirements_exclude entry {entry!r} is not a distribution name; "
                               "write one name (or glob, like 'types-*') per line")
    return canonical(text) if not any(c in text for c in "*?[") else text.lower().replace("_", "-")
