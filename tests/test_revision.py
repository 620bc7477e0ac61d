"""pytest_hostperf.revision against real throwaway git repositories (no submodules)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path, PurePosixPath

import pytest

from pytest_hostperf import revision
from pytest_hostperf.environments import labels
from pytest_hostperf.revision import RevisionError

ROOT = Path(__file__).resolve().parent.parent


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(autouse=True)
def isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user or system git config, an identity for commits, no repository above tmp_path."""
    config = tmp_path / "gitconfig"
    config.write_text("[user]\n\tname = Test\n\temail = test@example.invalid\n[init]\n\tdefaultBranch = main\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """main: v1 (COST = 1, tagged), v2 (COST = 2, adds app/); working tree: COST = 3, uncommitted."""
    path = tmp_path / "repo"
    (path / "pkg").mkdir(parents=True)
    (path / "tests").mkdir()
    git(path, "init", "-q")
    (path / "pkg" / "cost.py").write_text("COST = 1\n")
    (path / "tests" / "test_cost.py").write_text("from pkg.cost import COST\n")
    (path / ".gitattributes").write_text("tests/ export-ignore\n*.txt text eol=lf\n")
    (path / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (path / "run.sh").chmod(0o755)
    os.symlink("pkg/cost.py", path / "cost-link")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "v1")
    git(path, "tag", "v1")
    (path / "pkg" / "cost.py").write_text("COST = 2\n")
    (path / "app").mkdir()
    (path / "app" / "conftest.py").write_text("APP = 2\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "v2")
    (path / "pkg" / "cost.py").write_text("COST = 3\n")
    return path


def _state(path: Path) -> tuple[str, ...]:
    """What the user sees of their repository: status, worktrees, HEAD, refs, and the index's bytes.

    The index is read first and status takes no optional lock: a plain `git status`
    would itself rewrite the index (refreshing its stat data).
    """
    index = hashlib.sha256((path / ".git" / "index").read_bytes()).hexdigest()
    return (git(path, "--no-optional-locks", "status", "--porcelain"), git(path, "worktree", "list", "--porcelain"),
            git(path, "rev-parse", "HEAD"), git(path, "for-each-ref"), index,
            " ".join(sorted(p.name for p in (path / ".git").iterdir())))


# -- resolving ---------------------------------------------------------------------------------

def test_resolves_head_branch_tag_and_short_sha_to_full_sha(repo: Path):
    head, first = git(repo, "rev-parse", "HEAD"), git(repo, "rev-parse", "v1^{commit}")
    assert revision.resolve(repo, "HEAD").sha == head
    assert revision.resolve(repo, "main").sha == head
    assert revision.resolve(repo, "v1").sha == first
    assert revision.resolve(repo, first[:8]).sha == first
    assert revision.resolve(repo, "HEAD~1").sha == first
    r = revision.resolve(repo, "v1")
    assert r.repo == repo and r.project_subdir == PurePosixPath(".") and r.rev == "v1"
    assert len(r.sha) == 40 and r.label == f"v1 ({first[:12]})"


def test_resolves_a_remote_branch_in_a_clone(repo: Path, tmp_path: Path):
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", f"file://{repo}", str(clone))
    assert revision.resolve(clone, "origin/main").sha == git(repo, "rev-parse", "HEAD")


def test_rootdir_in_a_subdirectory_keeps_its_relative_path(repo: Path):
    r = revision.resolve(repo / "app", "HEAD")
    assert r.repo == repo and r.project_subdir == PurePosixPath("app")
    with pytest.raises(RevisionError) as caught:
        revision.resolve(repo / "app", "v1")  # app/ came with v2
    assert "app/ does not exist at v1" in str(caught.value)
    assert "fix: compare against a revision" in str(caught.value)


def test_not_a_git_repository_says_the_fix(tmp_path: Path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(RevisionError) as caught:
        revision.resolve(plain, "HEAD")
    message = str(caught.value)
    assert f"{plain} is not a git repository" in message
    assert "git init && git add -A && git commit" in caught.value.fix


def test_missing_project_directory_is_named(tmp_path: Path):
    with pytest.raises(RevisionError, match="does not exist"):
        revision.resolve(tmp_path / "nowhere", "HEAD")


@pytest.mark.parametrize("rev", ["no-such-branch", "v9", "0123456789abcdef0123456789abcdef01234567", "HEAD~5"])
def test_unknown_revision_says_the_fix(repo: Path, rev: str):
    with pytest.raises(RevisionError) as caught:
        revision.resolve(repo, rev)
    assert f"{rev!r} does not name a commit in {repo}" in str(caught.value)
    assert "git fetch origin" in caught.value.fix and caught.value.rev == rev


def test_a_tree_is_not_a_commit(repo: Path):
    tree = git(repo, "rev-parse", "HEAD^{tree}")
    with pytest.raises(RevisionError, match="does not name a commit"):
        revision.resolve(repo, tree)


@pytest.mark.parametrize("rev", ["", "  ", "--output=/tmp/x", "-h", "HEAD\nmain"])
def test_option_like_or_empty_revisions_are_refused(repo: Path, rev: str):
    with pytest.raises(RevisionError, match="is not a git revision"):
        revision.resolve(repo, rev)


def test_shallow_clone_missing_the_revision_names_the_fetch(repo: Path, tmp_path: Path):
    shallow = tmp_path / "shallow"
    git(tmp_path, "clone", "-q", "--depth=1", f"file://{repo}", str(shallow))
    assert git(shallow, "rev-parse", "--is-shallow-repository") == "true"
    assert revision.resolve(shallow, "HEAD").sha == git(repo, "rev-parse", "HEAD")
    first = git(repo, "rev-parse", "v1^{commit}")
    cases = {
        first: f"git fetch --depth=1 origin {first}",
        "HEAD~1": "git fetch --deepen=2",
        "origin/release": "git fetch --depth=50 origin +refs/heads/release:refs/remotes/origin/release",
        "v1": "git fetch --depth=50 origin v1",
    }
    for rev, fetch in cases.items():
        with pytest.raises(RevisionError) as caught:
            revision.resolve(shallow, rev)
        assert "shallow clone" in caught.value.message
        assert fetch in caught.value.fix and "git fetch --unshallow" in caught.value.fix
    # The fix works: after it the revision resolves.
    git(shallow, "fetch", "-q", "--deepen=2")
    assert revision.resolve(shallow, "HEAD~1").sha == first


# -- materialising -----------------------------------------------------------------------------

def test_materialized_tree_is_revs_and_leaves_the_repository_untouched(repo: Path, tmp_path: Path):
    before = _state(repo)
    r = revision.resolve(repo, "v1")
    with revision.materialize(r, parent=tmp_path / "checkouts") as checkout:
        tree = checkout.root
        assert (tree / "pkg" / "cost.py").read_text() == "COST = 1\n"  # REV's, not HEAD's or the working tree's
        assert (tree / "tests" / "test_cost.py").is_file()  # export-ignore does not drop tests
        assert os.access(tree / "run.sh", os.X_OK)
        assert os.readlink(tree / "cost-link") == "pkg/cost.py"
        assert not (tree / "app").exists() and not (tree / ".git").exists()
        assert checkout.project_dir == tree
        record = json.loads((checkout.workdir / labels.OWNER_FILE).read_text())
        assert record[labels.PID] == str(os.getpid()) and record["sha"] == r.sha
        assert sorted(p.name for p in checkout.workdir.iterdir()) == [labels.OWNER_FILE, "tree"]
        assert _state(repo) == before
    assert not checkout.workdir.exists()
    assert _state(repo) == before
    assert (repo / "pkg" / "cost.py").read_text() == "COST = 3\n"


def test_subdirectory_project_is_found_at_the_same_place(repo: Path, tmp_path: Path):
    r = revision.resolve(repo / "app", "HEAD")
    with revision.materialize(r, parent=tmp_path / "checkouts") as checkout:
        assert checkout.project_dir == checkout.root / "app"
        assert (checkout.project_dir / "conftest.py").read_text() == "APP = 2\n"
        assert (checkout.root / "pkg" / "cost.py").read_text() == "COST = 2\n"


def test_checkout_is_removed_on_error_even_with_read_only_files(repo: Path, tmp_path: Path):
    r = revision.resolve(repo, "HEAD")
    with pytest.raises(KeyboardInterrupt), revision.materialize(r, parent=tmp_path / "checkouts") as checkout:
        (checkout.root / "pkg").chmod(0o500)  # as a test at REV might leave it
        raise KeyboardInterrupt
    assert not checkout.workdir.exists()


def test_checkouts_live_in_a_private_directory(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    assert revision.checkouts_root().parent == tmp_path
    with revision.materialize(revision.resolve(repo, "HEAD")) as checkout:
        assert checkout.workdir.parent == revision.checkouts_root()
        assert revision.checkouts_root().stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("unsafe", ["open", "symlink"])
def test_a_parent_directory_others_could_write_is_refused(repo: Path, tmp_path: Path, unsafe: str):
    parent = tmp_path / "shared"
    if unsafe == "open":
        parent.mkdir(mode=0o777)
        parent.chmod(0o777)
    else:
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        parent.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RevisionError, match="is not a private directory") as caught:
        revision.materialize(revision.resolve(repo, "HEAD"), parent=parent)
    assert "TMPDIR" in caught.value.fix


# -- sweeping ----------------------------------------------------------------------------------

KILLED_SESSION = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pytest_hostperf import revision
    checkout = revision.materialize(revision.resolve(Path(sys.argv[1]), "HEAD"), parent=Path(sys.argv[2]))
    print(checkout.workdir, flush=True)
    time.sleep(600)
""")


def test_sweep_removes_a_killed_sessions_checkout_and_keeps_live_ones(repo: Path, tmp_path: Path):
    parent = tmp_path / "checkouts"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    session = subprocess.Popen([sys.executable, "-c", KILLED_SESSION, str(repo), str(parent)],
                               stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert session.stdout is not None
        killed = Path(session.stdout.readline().strip())
        assert (killed / "tree" / "pkg" / "cost.py").is_file()
        mine = revision.materialize(revision.resolve(repo, "HEAD"), parent=parent)
        assert revision.sweep_stale(parent) == []  # both owners run
        session.send_signal(signal.SIGKILL)
        # Not reaped yet: a zombie, dead for the sweep.
        time.sleep(0.2)
        assert revision.sweep_stale(parent) == [killed]
        assert not killed.exists() and mine.root.is_dir()
        mine.remove()
    finally:
        session.kill()
        session.wait()


def test_sweep_tells_a_reused_pid_from_its_owner(tmp_path: Path):
    parent = tmp_path / "checkouts"
    stale = parent / "stale"
    stale.mkdir(parents=True)
    # Our own pid, but a process that started an hour before this one: the pid was reused.
    labels.write_owner_file(stale, "old-session")
    record = json.loads((stale / labels.OWNER_FILE).read_text())
    record[labels.STARTED] = "t1"  # started at another time than this process
    (stale / labels.OWNER_FILE).write_text(json.dumps(record))
    live = parent / "live"
    live.mkdir()
    labels.write_owner_file(live, "live-session")
    assert revision.sweep_stale(parent) == [stale]
    assert live.is_dir()


def test_sweep_waits_before_removing_a_directory_without_owner(tmp_path: Path):
    parent = tmp_path / "checkouts"
    fresh, old = parent / "fresh", parent / "old"
    fresh.mkdir(parents=True)
    old.mkdir()
    long_ago = time.time() - revision.UNOWNED_GRACE_SECONDS - 60
    os.utime(old, (long_ago, long_ago))
    assert revision.sweep_stale(parent) == [old]
    assert fresh.is_dir()
    assert revision.sweep_stale(tmp_path / "missing") == []


def test_a_checkout_git_cannot_write_fails_cleanly(repo: Path, tmp_path: Path):
    r = revision.resolve(repo, "v1")
    blob = git(repo, "rev-parse", "v1:pkg/cost.py")
    (repo / ".git" / "objects" / blob[:2] / blob[2:]).unlink()  # a damaged repository
    parent = tmp_path / "checkouts"
    with pytest.raises(RevisionError) as caught:
        revision.materialize(r, parent=parent)
    assert "could not write v1" in caught.value.message and "exited with" in caught.value.message
    assert list(parent.iterdir()) == []


def test_no_git_on_path_says_so(repo: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RevisionError) as caught:
        revision.resolve(repo, "HEAD")
    assert "no `git` is on PATH" in caught.value.message and "install git" in caught.value.fix
