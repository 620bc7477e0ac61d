"""Where the modules the tests imported came from, reported by the agent in every environment.

For each top-level module in ``sys.modules`` (stdlib and the agent's own package left
out): its distribution and version, whether it is the project's own code (a file under
the project root) or an installation (site-packages), the file it was loaded from, the
compiled extensions it loaded, and for the project's own modules a hash of every file.
The controller compares each environment's report with native's
(:func:`pytest_hostperf.provenance.compare_modules`): the same numbers must come from the
same code. Stdlib only: this runs inside every environment.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import importlib.metadata
import os
import sys
import sysconfig
from types import ModuleType
from typing import Any, Iterable, Mapping

#: Shipped with the agent, never installed: identical everywhere by construction.
_OWN = "pytest_hostperf"
#: Directory names of installations (as opposed to the project's tree).
_INSTALL_DIRS = ("site-packages", "dist-packages")

ModuleEntry = dict[str, Any]


class ImportTracker:
    """Reports top-level modules once, then only what each run added (a delta)."""

    def __init__(self, project_root: str, startup: Iterable[str] = ()) -> None:
        self.project_root = os.path.realpath(project_root)
        #: Imported before the agent ran (``.pth`` hooks such as setuptools' ``_distutils_hack``
        #: or an editable finder): the interpreter's set-up, not the tests' code.
        self.startup = frozenset(_top_level(startup))
        self.harness: frozenset[str] = frozenset()
        self._seen: set[str] = set()
        self._distributions: Mapping[str, list[str]] | None = None

    def mark_harness(self) -> None:
        """Call when collection starts: what is imported by now is pytest and its plugins."""
        self.harness = frozenset(_top_level(sys.modules))

    def report(self) -> dict[str, ModuleEntry]:
        """Entries for the top-level modules that are new, or grew submodules, since the last call."""
        names = set(sys.modules)
        changed = {name.partition(".")[0] for name in names - self._seen}
        self._seen = names
        entries = {top: self.describe(top) for top in sorted(changed) if _reportable(top)}
        return {top: entry for top, entry in entries.items()
                if top not in self.startup or entry["origin"] == "project"}

    def describe(self, top: str) -> ModuleEntry:
        """One module's origin: see the module docstring."""
        module = sys.modules.get(top)
        location = _location(module)
        entry: ModuleEntry = {"harness": top in self.harness}
        dists = self._dists_of(top)
        if dists:
            entry["distribution"] = dists[0]
            entry["version"] = _version(dists[0])
        if location is None:
            entry["origin"] = "builtin"
            return entry
        if _inside(location, self.project_root) and not _installed(location):
            entry["origin"] = "project"
            entry["path"] = _relative(location, self.project_root)
            entry["files"] = self._project_files(top)
        else:
            entry["origin"] = "site-packages" if _installed(location) else "other"
            entry["path"] = _install_relative(location)
        compiled = sorted(name for name, mod in _family(top) if _is_extension(mod))
        if compiled:
            entry["compiled"] = compiled
        return entry

    def _project_files(self, top: str) -> dict[str, str]:
        files: dict[str, str] = {}
        for _, module in _family(top):
            location = _location(module)
            if location and os.path.isfile(location) and _inside(location, self.project_root):
                files[_relative(location, self.project_root)] = _digest(location)
        return dict(sorted(files.items()))

    def _dists_of(self, top: str) -> list[str]:
        if self._distributions is None:
            self._distributions = _packages_distributions()
        return list(self._distributions.get(top, []))


def _reportable(top: str) -> bool:
    if top in ("__main__", _OWN) or top in _stdlib_names() or top.startswith("_frozen"):
        return False
    module = sys.modules.get(top)
    location = _location(module)
    # A module of the interpreter's own library that the name list does not know (3.9).
    return not (location and _in_stdlib(location))


def _top_level(names: Iterable[str]) -> set[str]:
    return {name.partition(".")[0] for name in names}


def _family(top: str) -> list[tuple[str, ModuleType]]:
    prefix = top + "."
    return [(name, module) for name, module in list(sys.modules.items())
            if module is not None and (name == top or name.startswith(prefix))]


def _location(module: ModuleType | None) -> str | None:
    """The module's file, or a namespace package's first directory; None for builtins."""
    if module is None:
        return None
    file = getattr(module, "__file__", None)
    if file:
        return os.path.realpath(file)
    paths = list(getattr(module, "__path__", None) or [])
    return os.path.realpath(paths[0]) if paths else None


def _is_extension(module: ModuleType) -> bool:
    file = getattr(module, "__file__", None) or ""
    return file.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def _installed(path: str) -> bool:
    parts = path.split(os.sep)
    return any(name in parts for name in _INSTALL_DIRS)


def _install_relative(path: str) -> str:
    """``/venv/lib/python3.11/site-packages/pluggy/__init__.py`` -> ``site-packages/pluggy/__init__.py``."""
    parts = path.split(os.sep)
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] in _INSTALL_DIRS:
            return "/".join(parts[index:])
    return path


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _relative(path: str, root: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()[:16]


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _packages_distributions() -> Mapping[str, list[str]]:
    """Top-level import name -> distribution names (``packages_distributions`` is 3.10+)."""
    finder = getattr(importlib.metadata, "packages_distributions", None)
    if finder is not None:
        return finder()  # type: ignore[no-any-return]
    mapping: dict[str, list[str]] = {}
    for dist in importlib.metadata.distributions():
        text = dist.read_text("top_level.txt") or ""
        names = text.split() or {str(f).split("/")[0].split(".")[0] for f in dist.files or ()}
        for name in names:
            mapping.setdefault(name, []).append(str(dist.metadata["Name"]))
    return mapping


@functools.lru_cache(maxsize=None)
def _stdlib_names() -> frozenset[str]:
    names = getattr(sys, "stdlib_module_names", None)  # 3.10+
    return frozenset(names) if names else frozenset(sys.builtin_module_names)


@functools.lru_cache(maxsize=None)
def _stdlib_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple({os.path.realpath(paths["stdlib"]), os.path.realpath(paths["platstdlib"])})


def _in_stdlib(path: str) -> bool:
    return any(_inside(path, d) for d in _stdlib_dirs()) and not _installed(path)
