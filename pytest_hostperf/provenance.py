"""Same code everywhere: compare an environment's imported modules with native's. Pure.

Each agent reports where the modules the tests imported came from
(:mod:`pytest_hostperf.agent.origins`). A ratio to native only means something when both
sides ran the same code with the same dependencies, so:

* a module that is the project's own natively must be the project's own inside too
  (``shadowed``: a same-named distribution in the image won), with the same content in
  every file both sides loaded (``content``);
* a module from an installation must be the same distribution and version (``version``),
  with the same compiled extensions loaded (``compiled``: a C extension natively, its
  pure-Python fallback inside);
* a module that is the project's own inside but an installation natively is a mismatch
  too (``not-project``): native then measured installed code.

Modules only one side imported are not compared (a later run may import them); pytest and
its plugins (``harness``) are compared only when asked. :func:`match_key` is the part
that belongs in the environment fingerprint, so baselines split when a dependency changes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final, Mapping

Report = Mapping[str, Mapping[str, Any]]

SHADOWED: Final = "shadowed"
NOT_PROJECT: Final = "not-project"
CONTENT: Final = "content"
VERSION: Final = "version"
COMPILED: Final = "compiled"


@dataclasses.dataclass(frozen=True)
class ModuleMismatch:
    """One module that differs between native and another environment."""

    module: str
    kind: str        # SHADOWED, NOT_PROJECT, CONTENT, VERSION or COMPILED
    native: str      # where it came from natively, in words
    other: str       # where it came from in the other environment
    detail: str = ""

    def reason(self, env: str) -> str:
        """One line for a failed item: the module, both origins and what differs."""
        text = f"module {self.module!r} differs from native ({self.kind}): native {self.native}; {env} {self.other}"
        return f"{text}; {self.detail}" if self.detail else text


def merge(report: Report, update: Report) -> dict[str, dict[str, Any]]:
    """A report with a later delta applied (the agent sends only new or grown modules)."""
    merged = {name: dict(entry) for name, entry in report.items()}
    merged.update({name: dict(entry) for name, entry in update.items()})
    return merged


def compare_modules(native: Report, other: Report, include_harness: bool = False) -> list[ModuleMismatch]:
    """Every module both reports hold whose code or version differs, by module name."""
    mismatches: list[ModuleMismatch] = []
    for name in sorted(set(native) & set(other)):
        mine, theirs = native[name], other[name]
        if not include_harness and mine.get("harness") and theirs.get("harness") \
                and "project" not in (mine.get("origin"), theirs.get("origin")):
            continue
        found = _difference(name, mine, theirs)
        if found is not None:
            mismatches.append(found)
    return mismatches


def _difference(name: str, native: Mapping[str, Any], other: Mapping[str, Any]) -> ModuleMismatch | None:
    here, there = describe_origin(native), describe_origin(other)
    native_project, other_project = native.get("origin") == "project", other.get("origin") == "project"
    if native_project and not other_project:
        return ModuleMismatch(name, SHADOWED, here, there,
                              "an installed distribution shadows the project's own code there")
    if other_project and not native_project:
        return ModuleMismatch(name, NOT_PROJECT, here, there, "native ran an installed copy, not the project's tree")
    if native_project:
        theirs = other.get("files") or {}
        changed = [path for path, digest in (native.get("files") or {}).items()
                   if path in theirs and theirs[path] != digest]
        if changed:
            return ModuleMismatch(name, CONTENT, here, there, "different content: " + ", ".join(changed[:5]))
        return None
    if (native.get("distribution"), native.get("version")) != (other.get("distribution"), other.get("version")):
        return ModuleMismatch(name, VERSION, here, there)
    if sorted(native.get("compiled") or []) != sorted(other.get("compiled") or []):
        return ModuleMismatch(name, COMPILED, here, there,
                              f"compiled extensions native {native.get('compiled') or 'none'}, "
                              f"there {other.get('compiled') or 'none'}")
    return None


def describe_origin(entry: Mapping[str, Any]) -> str:
    """``the project's src/pluggy/__init__.py`` or ``site-packages/pluggy/__init__.py (pluggy 1.5.0)``."""
    dist = entry.get("distribution")
    release = f" ({dist} {entry.get('version') or '?'})" if dist else ""
    origin = entry.get("origin")
    if origin == "project":
        return f"the project's {entry.get('path')}"
    if origin == "builtin":
        return f"built in{release}"
    return f"{entry.get('path')}{release}"


def match_key(report: Report) -> dict[str, str]:
    """The modules the tests imported, as a fingerprint match key: baselines split on it.

    The project's own modules count as ``project`` whatever their content (a change of
    the project's code is what a baseline is there to catch); every other module the
    tests imported counts by distribution and version, so a dependency upgrade starts a
    new baseline instead of reading as the project's regression. pytest and its plugins
    are left out.
    """
    key: dict[str, str] = {}
    for name, entry in sorted(report.items()):
        if entry.get("origin") == "project":
            key[name] = "project"
        elif not entry.get("harness"):
            key[name] = f"{entry.get('distribution') or '?'}=={entry.get('version') or '?'}"
    return key
