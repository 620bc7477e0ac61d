"""The project's import roots: where its own code is imported from, as the controller sees it.

Natively the code under test comes from wherever the controller's interpreter finds it:
the rootdir, ``src/`` through an editable install, a ``pythonpath`` ini entry. Inside a
container or VM the project is mounted somewhere else and the image's site-packages may
hold a released distribution of the same name (``pluggy``, ``iniconfig``: pytest's own
dependencies). The agent puts these roots, mapped into its mount of the project, at the
front of ``sys.path`` before it imports pytest, so every environment runs the project's
own code.

:func:`import_roots` is pure (strings in, relative paths out); :func:`editable_installs`
and :func:`controller_import_roots` read the controller's environment to feed it.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.metadata
import json
import os
import sys
from pathlib import Path
from typing import Iterable, Mapping, Sequence
from urllib.parse import unquote, urlparse

#: Directory names that hold installed distributions, never project code.
_INSTALL_DIRS = frozenset({"site-packages", "dist-packages"})


@dataclasses.dataclass(frozen=True)
class EditableInstall:
    """A distribution installed in development mode (PEP 610 ``dir_info.editable``)."""

    distribution: str
    source_dir: str                 # the checkout it was installed from
    import_dirs: tuple[str, ...]    # directories it puts on the import path
    #: Packages a finder maps to a directory of another name (``package_dir={"pkg": "lib"}``):
    #: no sys.path entry can reproduce that, so they cannot become import roots.
    unmappable: Mapping[str, str] = dataclasses.field(default_factory=dict)


def import_roots(project_root: str, sys_path: Sequence[str], *, cwd: str,
                 editable_dirs: Sequence[str] = (), pythonpath: Sequence[str] = (),
                 exclude: Sequence[str] = ()) -> tuple[str, ...]:
    """The project's import roots, relative to ``project_root`` (``"."`` for the root), in order.

    ``pythonpath`` (pytest's ini entries, which pytest puts first), then ``sys_path``, then
    ``editable_dirs`` (directories that editable installs put on the path or map packages
    from): each entry inside the project tree counts once, at its first place. Entries
    under an ``exclude`` prefix (the controller's own ``sys.prefix``: a ``.venv`` inside
    the project) or in a ``site-packages`` directory are installations, not project code.
    Relative entries are taken against ``cwd`` (``""`` on ``sys.path`` means the cwd).
    """
    root = _absolute(project_root, cwd)
    excluded = [_absolute(prefix, cwd) for prefix in exclude]
    roots: list[str] = []
    for entry in (*pythonpath, *sys_path, *editable_dirs):
        path = _absolute(entry or ".", cwd)
        if not _inside(path, root) or any(_inside(path, prefix) for prefix in excluded):
            continue
        relative = os.path.relpath(path, root)
        if _INSTALL_DIRS.intersection(Path(relative).parts):
            continue
        posix = Path(relative).as_posix()
        if posix not in roots:
            roots.append(posix)
    return tuple(roots)


def editable_installs(distributions: Iterable[importlib.metadata.Distribution] | None = None
                      ) -> list[EditableInstall]:
    """Every editable install visible to this interpreter and the directories it imports from.

    A distribution is editable when its ``direct_url.json`` says so (PEP 610). Its import
    directories come from the files it installed: path lines of its ``.pth`` files (pip's
    legacy develop mode, flit, hatch, poetry, pdm, setuptools' lenient mode for a src
    layout), the real directories behind a setuptools strict-mode link tree, and the parent
    directory of every package that a setuptools ``__editable__`` finder maps (lenient
    mode for layouts a path entry cannot express, such as a flat layout).
    """
    found: list[EditableInstall] = []
    for dist in distributions if distributions is not None else importlib.metadata.distributions():
        source = editable_source(dist)
        if source is None:
            continue
        dirs: list[str] = []
        unmappable: dict[str, str] = {}
        for file in dist.files or ():
            name = file.name
            if name.endswith(".pth"):
                for directory in _pth_directories(Path(str(dist.locate_file(file)))):
                    dirs += _link_tree_sources(Path(directory)) or [directory]
            elif name.startswith("__editable__") and name.endswith("_finder.py"):
                for package, location in _finder_mapping(Path(str(dist.locate_file(file)))).items():
                    if Path(location).name == package.split(".")[-1]:
                        dirs.append(str(Path(location).parent))
                    else:
                        unmappable[package] = location
        found.append(EditableInstall(str(dist.metadata["Name"]), source, tuple(dict.fromkeys(dirs)), unmappable))
    return found


def editable_source(dist: importlib.metadata.Distribution) -> str | None:
    """The checkout an editable install points at, from its ``direct_url.json``; else None."""
    info = direct_url(dist)
    dir_info = info.get("dir_info")
    if not isinstance(dir_info, dict) or not dir_info.get("editable"):
        return None
    return file_url_path(str(info.get("url", "")))


def direct_url(dist: importlib.metadata.Distribution) -> dict[str, object]:
    """The distribution's PEP 610 ``direct_url.json`` (empty when installed from an index)."""
    try:
        text = dist.read_text("direct_url.json")
        data = json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def file_url_path(url: str) -> str | None:
    """``file:///a/b%20c`` -> ``/a/b c``; None for any other scheme."""
    parsed = urlparse(url)
    return unquote(parsed.path) if parsed.scheme == "file" else None


class ImportRootError(ValueError):
    """The project's code is imported in a way no import root can reproduce elsewhere."""


def controller_import_roots(project_root: Path, pythonpath: Sequence[Path] = (),
                            installs: Sequence[EditableInstall] | None = None) -> tuple[str, ...]:
    """:func:`import_roots` for this interpreter: its sys.path, editable installs and prefix.

    ``project_root`` is pytest's rootdir; ``pythonpath`` its ``pythonpath`` ini entries
    (``config.getini("pythonpath")``); ``installs`` default to :func:`editable_installs`.
    Paths are resolved so a symlinked checkout matches. Raises :class:`ImportRootError`
    when an editable install maps a package of the project to a directory of another name.
    """
    installs = editable_installs() if installs is None else installs
    root = str(project_root.resolve())
    for install in installs:
        for package, location in install.unmappable.items():
            if _inside(os.path.realpath(location), root):
                raise ImportRootError(
                    f"package {package!r} of {install.distribution} is installed editable from {location}, a "
                    f"directory of another name; no import root can reproduce that inside docker, qemu or ssh: "
                    "name the directory like the package (a src/ or flat layout), so that a directory on "
                    "sys.path holds it")
    editable = [d for install in installs for d in install.import_dirs]
    prefixes = {sys.prefix, sys.exec_prefix, sys.base_prefix}

    def resolved(entries: Iterable[object]) -> list[str]:
        return [str(Path(str(e) or ".").resolve()) for e in entries]

    return import_roots(root, resolved(sys.path), cwd=os.getcwd(), editable_dirs=resolved(editable),
                        pythonpath=resolved(pythonpath), exclude=resolved(prefixes))


def _pth_directories(path: Path) -> list[str]:
    """Directory lines of a ``.pth`` file (``import`` lines and comments are not paths)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    base = path.parent
    return [str(base / line.strip()) for line in lines
            if line.strip() and not line.startswith(("#", "import ", "import\t"))]


def _link_tree_sources(directory: Path) -> list[str]:
    """Where the files of a setuptools strict-mode link tree really are (it holds symlinks).

    ``build/__editable__.<name>-<version>-<tag>/pkg/mod.py -> src/pkg/mod.py``: the tree's
    symlinks point at absolute host paths that do not exist in a container, so the roots
    are the directories those files live in, found through one file of each package.
    Empty when ``directory`` is not such a tree.
    """
    if not directory.name.startswith("__editable__.") or not directory.is_dir():
        return []
    sources: list[str] = []
    for entry in sorted(directory.iterdir()):
        sample = next((f for f in sorted(entry.rglob("*.py")) if f.is_symlink()), None) if entry.is_dir() \
            else entry if entry.is_symlink() else None
        if sample is None:
            continue
        depth = len(sample.relative_to(directory).parts)  # pkg/sub/mod.py -> 3 levels below the root
        real = sample.resolve()
        sources.append(str(real.parents[depth - 1]))
    return list(dict.fromkeys(sources))


def _finder_mapping(path: Path) -> dict[str, str]:
    """The ``MAPPING`` literal of a setuptools ``__editable__`` finder, read without importing it."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return {}
    for node in tree.body:
        targets: list[ast.expr]
        assigned: ast.expr | None
        if isinstance(node, ast.Assign):
            targets, assigned = node.targets, node.value
        elif isinstance(node, ast.AnnAssign):
            targets, assigned = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "MAPPING" for t in targets) and assigned is not None:
            try:
                value = ast.literal_eval(assigned)
            except ValueError:
                return {}
            return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
    return {}


def _absolute(path: str, cwd: str) -> str:
    return os.path.normpath(os.path.join(cwd, path))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
