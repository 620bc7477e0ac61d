"""The project under test at another git revision, for ``--hostperf-against=REV``.

:func:`resolve` finds the git repository holding the pytest rootdir (which may be a
subdirectory of it), turns REV into a full commit id and checks that the project's
directory exists there. :func:`materialize` writes REV's tree into a private temporary
directory; :class:`Checkout` removes it, and :func:`sweep_stale` removes those of
killed sessions. Every failure is a :class:`RevisionError` carrying the fix.

How the tree is written: ``git read-tree`` into an index file of our own
(``GIT_INDEX_FILE``) and ``git checkout-index --prefix``. Not ``git worktree add``: it
registers the tree in the user's ``.git/worktrees`` (shown by ``git worktree list``,
left behind as a stale entry by a killed session, impossible on a read-only clone).
Not ``git archive | tar -x``: it honours ``export-ignore`` and ``export-subst`` in
.gitattributes, and projects commonly export-ignore their tests. Reading the tree into
a private index writes nothing into the user's repository and checks files out as
``git checkout`` would (line-ending and smudge filters, executable bits, symlinks).
Submodules are not checked out (their directories stay empty), as with both others.

Git runs with argument lists only, never a shell, and never prompts.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from pytest_hostperf.environments import labels

#: Seconds allowed for one git command that reads refs; writing a large tree gets more.
GIT_TIMEOUT = 60.0
CHECKOUT_TIMEOUT = 600.0
#: A checkout without a readable owner file is left alone this long: its creator may be
#: between making the directory and writing the file.
UNOWNED_GRACE_SECONDS = 600.0


class RevisionError(Exception):
    """REV cannot be compared against; ``fix`` says what to do about it."""

    def __init__(self, message: str, fix: str, rev: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.rev = rev

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.fix}"


@dataclasses.dataclass(frozen=True)
class Revision:
    """A commit of the repository that holds the project, and where the project is in it."""

    repo: Path                       # top of the git working tree
    rev: str                         # as given (``origin/main``)
    sha: str                         # the full commit id
    project_subdir: PurePosixPath    # the pytest rootdir relative to ``repo`` ('.' at the top)

    @property
    def label(self) -> str:
        """What reports show: ``origin/main (1a2b3c4d5e6f)``."""
        return f"{self.rev} ({self.sha[:12]})" if self.rev != self.sha else self.sha[:12]


@dataclasses.dataclass
class Checkout:
    """REV's tree written to a temporary directory; :meth:`remove` (or ``with``) deletes it."""

    revision: Revision
    workdir: Path    # owned directory: its owner file and tree/
    root: Path       # the top of REV's tree (the repository's top)

    @property
    def project_dir(self) -> Path:
        """The rootdir's counterpart in REV's tree: the same path relative to the repository."""
        return self.root / self.revision.project_subdir

    def remove(self) -> None:
        _remove_tree(self.workdir)

    def __enter__(self) -> Checkout:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


def checkouts_root() -> Path:
    """The per-user directory (mode 0700) under the system temp dir that holds checkouts."""
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"pytest-hostperf-rev-{user}"


def find_repository(rootdir: Path) -> tuple[Path, PurePosixPath]:
    """The top of the git working tree holding ``rootdir``, and ``rootdir`` relative to it."""
    if not rootdir.is_dir():
        raise RevisionError(f"--hostperf-against: the project directory {rootdir} does not exist",
                            "run pytest from the project's directory")
    done = _git(["rev-parse", "--show-toplevel", "--show-prefix"], rootdir)
    if done.returncode != 0:
        error = _first_line(done.stderr)
        if "safe.directory" in done.stderr:
            raise RevisionError(f"--hostperf-against: git refuses the repository at {rootdir}: {error}",
                                f"trust it, if it is yours: git config --global --add safe.directory {rootdir}")
        raise RevisionError(
            f"--hostperf-against needs the project in a git repository, but {rootdir} is not a git "
            f"repository (git: {error})",
            "run pytest in a git checkout of the project (git clone URL), or make one here: "
            "git init && git add -A && git commit -m baseline")
    lines = done.stdout.splitlines()
    prefix = PurePosixPath(lines[1].strip("/")) if len(lines) > 1 and lines[1].strip() else PurePosixPath(".")
    return Path(lines[0]), prefix


def resolve(rootdir: Path, rev: str) -> Revision:
    """REV as a full commit id of the repository holding ``rootdir``; errors say the fix."""
    if not rev.strip() or rev.startswith("-") or any(c in rev for c in "\0\n"):
        raise RevisionError(f"--hostperf-against: {rev!r} is not a git revision",
                            "name a commit: HEAD, origin/main, a tag or a commit id", rev)
    repo, subdir = find_repository(rootdir)
    done = _git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], repo)
    if done.returncode != 0:
        shallow = _git(["rev-parse", "--is-shallow-repository"], repo).stdout.strip() == "true"
        if shallow:
            raise RevisionError(
                f"--hostperf-against: {rev} is not in this shallow clone of {repo} (it holds only the "
                "last commits, as CI checkouts do by default)", _shallow_fix(rev), rev)
        raise RevisionError(
            f"--hostperf-against: {rev!r} does not name a commit in {repo}",
            "check the name (git log --oneline -5; git branch -a; git tag); for a branch or tag of a "
            "remote, fetch it first: git fetch origin", rev)
    sha = done.stdout.strip()
    if str(subdir) != "." and _git(["cat-file", "-e", f"{sha}:{subdir}"], repo).returncode != 0:
        raise RevisionError(
            f"--hostperf-against: the project directory {subdir}/ does not exist at {rev} ({sha[:12]}) in {repo}",
            "compare against a revision that has the project at the same place in the repository", rev)
    return Revision(repo=repo, rev=rev, sha=sha, project_subdir=subdir)


def materialize(revision: Revision, parent: Path | None = None, session: str = "checkout") -> Checkout:
    """Write REV's tree into a new owned directory under ``parent`` (default :func:`checkouts_root`)."""
    parent = parent or checkouts_root()
    _private_directory(parent)
    workdir = Path(tempfile.mkdtemp(prefix=f"{revision.sha[:12]}-", dir=parent))
    try:
        labels.write_owner_file(workdir, session, repo=str(revision.repo), sha=revision.sha)
        root = workdir / "tree"
        root.mkdir()
        index_env = {"GIT_INDEX_FILE": str(workdir / "index")}
        steps = (["read-tree", revision.sha], ["checkout-index", "--all", "--force", f"--prefix={root}/"])
        for step in steps:
            done = _git(step, revision.repo, extra_env=index_env, timeout=CHECKOUT_TIMEOUT)
            if done.returncode != 0:
                raise RevisionError(
                    f"--hostperf-against: could not write {revision.label}'s files: git {step[0]} exited "
                    f"with {done.returncode}: {_first_line(done.stderr)}",
                    f"check that {revision.repo} is readable and that git can check out {revision.sha[:12]} "
                    "(git status; for Git LFS files: git lfs fetch)", revision.rev)
        (workdir / "index").unlink()
    except BaseException:
        _remove_tree(workdir)
        raise
    return Checkout(revision=revision, workdir=workdir, root=root)


def sweep_stale(parent: Path | None = None) -> list[Path]:
    """Remove the checkouts of sessions that are no longer running; return what was removed."""
    parent = parent or checkouts_root()
    try:
        entries = sorted(parent.iterdir())
    except OSError:
        return []
    removed = []
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink() and _abandoned(entry):
            _remove_tree(entry)
            removed.append(entry)
    return removed


def _abandoned(workdir: Path) -> bool:
    """Whether the session that wrote ``workdir`` is gone (the owner file of every hostperf temp dir)."""
    record = labels.read_owner_file(workdir / labels.OWNER_FILE)
    if record is None:
        try:
            return time.time() - workdir.stat().st_mtime > UNOWNED_GRACE_SECONDS
        except OSError:
            return False
    return record[1].liveness() in (labels.Liveness.DEAD, labels.Liveness.OTHER_BOOT)


def _shallow_fix(rev: str) -> str:
    unshallow = "or all history: git fetch --unshallow (actions/checkout: fetch-depth: 0)"
    remote = re.fullmatch(r"([\w.-]+)/(.+)", rev)
    if remote and remote.group(1) != "refs":
        name, branch = remote.group(1), re.sub(r"[~^].*$", "", remote.group(2))
        return (f"fetch that branch's recent history: git fetch --depth=50 {name} "
                f"+refs/heads/{branch}:refs/remotes/{name}/{branch}; {unshallow}")
    back = re.fullmatch(r".*[~^](\d*)", rev)
    if back:
        return f"deepen the history: git fetch --deepen={max(int(back.group(1) or 1), 1) + 1}; {unshallow}"
    if re.fullmatch(r"[0-9a-fA-F]{7,40}", rev):
        return f"fetch that commit: git fetch --depth=1 origin {rev}; {unshallow}"
    return f"fetch it: git fetch --depth=50 origin {rev}; {unshallow}"


def _private_directory(path: Path) -> None:
    """Create ``path`` as a 0700 directory of ours, or refuse one anybody else could write to."""
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError as error:
        raise RevisionError(f"--hostperf-against: cannot create {path}: {error}",
                            "point TMPDIR at a writable directory") from error
    # Ownership and mode bits mean nothing on Windows (every directory reads 0o777 there).
    posix = os.name == "posix"
    foreign = posix and info.st_uid != os.getuid()
    if not stat.S_ISDIR(info.st_mode) or foreign or (posix and info.st_mode & 0o077):
        raise RevisionError(
            f"--hostperf-against: {path} is not a private directory of this user (a symlink, another "
            f"user's, or open to others: mode {stat.filemode(info.st_mode)})",
            f"remove {path} if it is stale, or point TMPDIR at a directory of your own")


def _git(args: Sequence[str], cwd: Path, extra_env: dict[str, str] | None = None,
         timeout: float = GIT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    # Never prompt (a credential helper waiting for input would hang the session); take
    # no optional locks (we only read the user's repository).
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0", **(extra_env or {}))
    try:
        return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except FileNotFoundError as error:
        raise RevisionError("--hostperf-against needs git, and no `git` is on PATH",
                            "install git (apt-get install git, brew install git) or put it on PATH") from error
    except subprocess.TimeoutExpired as error:
        raise RevisionError(f"--hostperf-against: `git {' '.join(args)}` in {cwd} took over {timeout:.0f} s",
                            "check the repository (git fsck) and that nothing holds it locked") from error


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "no message"


def _remove_tree(path: Path) -> None:
    """Delete ``path`` even where tests made files or directories read-only."""
    def make_writable_and_retry(function: Callable[..., object], name: str, _: object) -> None:
        parent = os.path.dirname(name)
        for target in (parent, name):
            try:
                os.chmod(target, stat.S_IRWXU)
            except OSError:
                pass
        function(name)

    if not path.exists():
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=make_writable_and_retry)
    else:
        shutil.rmtree(path, onerror=make_writable_and_retry)
