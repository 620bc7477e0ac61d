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
import re
import sys
import sysconfig
from types import ModuleType
from typing import Any, Iterable

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
        self._owners = _Owners()

    def mark_harness(self) -> None:
        """Call when collection starts: what is imported by now is pytest and its plugins."""
        self.harness = frozenset(_top_level(sys.modules))

    def mark_seen(self) -> None:
        """Take every module imported by now as reported: the next report has only newer ones."""
        self._seen = set(sys.modules)

    def report(self) -> dict[str, ModuleEntry]:
        """Entries for the top-level modules that are new, or grew submodules, since the last call."""
        names = set(sys.modules)
        changed = {name.partition(".")[0] for name in names - self._seen}
        self._seen = names
        wanted = [top for top in sorted(changed) if _reportable(top) and (top not in self.startup or self._own(top))]
        return {top: self.describe(top) for top in wanted}

    def describe(self, top: str) -> ModuleEntry:
        """One module's origin: see the module docstring."""
        location = _location(sys.modules.get(top))
        entry: ModuleEntry = {"harness": top in self.harness}
        if location is None:  # not reported (see _reportable), but describable
            entry["origin"] = "builtin"
            return entry
        if self._own(top):
            # No distribution: an editable install's metadata is from install time, the code is now.
            entry["origin"] = "project"
            entry["path"] = _relative(location, self.project_root)
            entry["files"] = self._project_files(top)
        else:
            entry["origin"] = "site-packages" if _installed(location) else "other"
            entry["path"] = _install_relative(location)
            owner = self._owners.owner(top, location)
            if owner is not None:
                entry["distribution"], entry["version"] = owner
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

    def _own(self, top: str) -> bool:
        location = _location(sys.modules.get(top))
        return location is not None and _inside(location, self.project_root) and not _installed(location)


class _Owners:
    """Which installed distribution a top-level module belongs to, read from its own site dir.

    ``importlib.metadata.packages_distributions()`` parses every distribution's metadata:
    1.4 s on a host with ~200 of them, on the agent's start-up path. Here only the
    directory the module was loaded from is searched, likely names first, reading the
    plain ``top_level.txt``/``RECORD`` files; only the owner's metadata is parsed.
    """

    def __init__(self) -> None:
        self._tops: dict[str, dict[str, str]] = {}    # site dir -> {top-level name: metadata dir}
        self._unread: dict[str, list[str]] = {}       # site dir -> metadata dirs not read yet
        self._owners: dict[str, tuple[str, str] | None] = {}  # metadata dir -> (name, version)

    def owner(self, top: str, location: str) -> tuple[str, str] | None:
        site = _site_dir(top, location)
        tops = self._tops.setdefault(site, {})
        if site not in self._unread:
            try:
                names = [n for n in os.listdir(site) if n.endswith((".dist-info", ".egg-info"))]
            except OSError:
                names = []
            # Likely owners first: "msgpack-1.1.0.dist-info" for msgpack, "pytest-9.0.3.dist-info" for _pytest.
            guess = _canonical(top.lstrip("_"))
            self._unread[site] = sorted(names, key=lambda n: (not _canonical(n).startswith(guess), n))
        pending = self._unread[site]
        while top not in tops and pending:
            directory = os.path.join(site, pending.pop(0))
            for name in _declared_tops(directory):
                tops.setdefault(name, directory)
        found = tops.get(top)
        if found is None:
            return None
        if found not in self._owners:
            dist = importlib.metadata.Distribution.at(found)
            owner: str | None = dist.metadata["Name"] if dist.metadata else None
            self._owners[found] = (str(owner), str(dist.version)) if owner else None
        return self._owners[found]


def _declared_tops(directory: str) -> set[str]:
    """Top-level names a distribution installed: its ``top_level.txt``, else its file list."""
    for listing, split in (("top_level.txt", None), ("RECORD", ","), ("installed-files.txt", None)):
        try:
            with open(os.path.join(directory, listing), encoding="utf-8", errors="replace") as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue
        if split is None and listing == "top_level.txt":
            return {line.strip() for line in lines if line.strip()}
        paths = [line.split(",")[0] if split else line for line in lines]
        return {p.split("/")[0].split(".")[0] for p in paths if p and not p.startswith("..")}
    return set()


def _reportable(top: str) -> bool:
    if top == _OWN or top.startswith("__") or top in _stdlib_names():
        return False
    location = _location(sys.modules.get(top))
    # No file: built into the interpreter or made at run time (cython_runtime, __mp_main__),
    # nothing to compare. In the interpreter's own library: stdlib the name list misses (3.9).
    return location is not None and not _in_stdlib(location)


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


def _site_dir(top: str, location: str) -> str:
    """The directory a top-level module or package was loaded from (its ``sys.path`` entry)."""
    parts = location.split(os.sep)
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] == top or parts[index].split(".")[0] == top:
            return os.sep.join(parts[:index]) or os.sep
    return os.path.dirname(location)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def _stdlib_names() -> frozenset[str]:
    names = getattr(sys, "stdlib_module_names", None)  # 3.10+
    return frozenset(names) if names else frozenset(sys.builtin_module_names)


@functools.cache
def _stdlib_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple({os.path.realpath(paths["stdlib"]), os.path.realpath(paths["platstdlib"])})


def _in_stdlib(path: str) -> bool:
    return any(_inside(path, d) for d in _stdlib_dirs()) and not _installed(path)
