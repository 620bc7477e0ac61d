"""pytest_hostperf.baselines: the JSON files on disk (round trip, format, safety)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import multiprocessing
import os
import re
from pathlib import Path

import pytest

from pytest_hostperf.baselines import (
    SAMPLES_KEPT,
    SCHEMA_VERSION,
    BaselineError,
    BaselineSaveError,
    BaselineStore,
    EnvironmentSave,
    read_baseline,
)
from pytest_hostperf.model import Record, SessionSummary

FID = "1a2b3c4d5e6f"
MATCH = {"cpu_model": "Xeon", "kernel": "6.1"}
FINGERPRINT = {"cpu_model": "Xeon", "kernel": "6.1", "cpus": 8}
NOW = dt.datetime(2026, 11, 27, 6, 0, 0, tzinfo=dt.timezone.utc)


def measurement(test: str = "tests/test_x.py::test_a", mount: str = "-", median: float = 1e-3,
                samples=None, fstype=None) -> Record:
    samples = list(samples) if samples is not None else [median * (1 + 0.01 * i) for i in range(-2, 3)]
    return Record(test, "native", None if mount == "-" else mount, samples=tuple(samples), iterations=10,
                  summary=SessionSummary(median, 0.004, len(samples)),
                  mount_info={"/m": {"fstype": fstype}} if fstype else {})


def save(store: BaselineStore, session_id: str, measurements, env="native", fid=FID, fingerprint=None,
         **kw) -> Path:
    return store.save(env, fid, MATCH, fingerprint or FINGERPRINT, measurements, session_id, now=NOW, **kw)


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))  # includes hidden files (e.g. .name.XXXX.tmp)


# -- round trip and format -------------------------------------------------------------------

def test_save_load_round_trip(tmp_path):
    store = BaselineStore(tmp_path / "baselines")
    m1 = measurement("t::a", "-", 1.5e-3, [1.4e-3, 1.5e-3, 1.6e-3], fstype="ext4")
    m2 = measurement("t::b", "bind", 2.0e-3)
    path = save(store, "s1", [m1, m2])
    assert path == tmp_path / "baselines" / f"native-{FID}.json"
    assert store.load("docker", FID) is None
    loaded = store.load("native", FID)
    assert loaded.environment == "native"
    assert loaded.fingerprint_id == FID
    assert loaded.match == MATCH
    assert loaded.fingerprint == FINGERPRINT
    (saved,) = loaded.history("t::a", "-")
    assert saved.session_id == "s1"
    assert saved.saved_at == "2026-11-27T06:00:00+00:00"
    assert saved.median_s == 1.5e-3
    assert saved.log_median_se == 0.004
    assert saved.rounds == 3
    assert saved.iterations == 10
    assert saved.samples == (1.4e-3, 1.5e-3, 1.6e-3)
    assert saved.context == {"fstype": "ext4"}
    assert saved.summary() == SessionSummary(1.5e-3, 0.004, 3)
    assert [s.median_s for s in loaded.history("t::b", "bind")] == [2.0e-3]
    assert loaded.history("t::b", "-") == []
    assert loaded.history("nope", "-") == []


def test_environment_name_is_slugged_in_the_path(tmp_path):
    store = BaselineStore(tmp_path)
    path = save(store, "s1", [measurement()], env="ssh:user@box")
    assert path.name == f"ssh_user_box-{FID}.json"
    assert store.load("ssh:user@box", FID).environment == "ssh:user@box"


def test_file_format_sorted_indented_newline_scalar_lists_inline(tmp_path):
    store = BaselineStore(tmp_path)
    samples = [1.0e-3, 1.1e-3, 0.9e-3, 1.05e-3]
    path = save(store, "s1", [measurement("t::b", samples=samples), measurement("t::a")])
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and not text.endswith("\n\n")

    def check_sorted(pairs):
        keys = [k for k, _ in pairs]
        assert keys == sorted(keys), keys
        return dict(pairs)

    data = json.loads(text, object_pairs_hook=check_sorted)
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert data["tool"] == "pytest-hostperf"
    assert text.startswith('{\n  "benchmarks": {\n    "t::a": {\n')
    # two-space indentation throughout
    for line in text.splitlines()[1:-1]:
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 2 == 0 and indent >= 2, line
    # lists of scalars on one line
    assert '"samples": [0.001, 0.0011, 0.0009, 0.00105]' in text
    assert re.search(r'"samples": \[\s*\n', text) is None
    # lists of dicts (the session history) are expanded
    assert re.search(r'"-": \[\n\s+\{', text)
    # deterministic: saving the same data again yields the same bytes
    before = path.read_bytes()
    save(store, "s1", [measurement("t::b", samples=samples), measurement("t::a")])
    assert path.read_bytes() == before


def test_samples_are_thinned_and_rounded(tmp_path):
    store = BaselineStore(tmp_path)
    samples = [1e-3 + i * 1.234567891e-9 for i in range(1000)]
    save(store, "s1", [measurement(samples=samples)])
    (saved,) = store.load("native", FID).history("tests/test_x.py::test_a", "-")
    assert len(saved.samples) == SAMPLES_KEPT == 200
    assert saved.samples[0] == 1e-3
    assert saved.samples[1] == float(f"{samples[5]:.6g}")   # every 5th of 1000
    assert all(len(f"{x:.10g}".replace(".", "").lstrip("0").rstrip("0")) <= 6 for x in saved.samples)


def test_nonfinite_numbers_become_null(tmp_path):
    store = BaselineStore(tmp_path)
    path = save(store, "s1", [measurement()], fingerprint={"load": float("nan"), "peak": float("inf")})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert read_baseline(path).fingerprint == {"load": None, "peak": None}


# -- history ---------------------------------------------------------------------------------

def test_history_bounded_by_max_history_oldest_dropped(tmp_path):
    store = BaselineStore(tmp_path)
    for i in range(5):
        save(store, f"s{i}", [measurement(median=(1 + i) * 1e-3)], max_history=3)
    sessions = store.load("native", FID).history("tests/test_x.py::test_a", "-")
    assert [s.session_id for s in sessions] == ["s2", "s3", "s4"]
    assert [s.median_s for s in sessions] == [3e-3, 4e-3, 5e-3]


def test_max_history_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        save(BaselineStore(tmp_path), "s1", [measurement()], max_history=0)


def test_same_session_id_replaces(tmp_path):
    store = BaselineStore(tmp_path)
    save(store, "s1", [measurement(median=1e-3)])
    save(store, "s2", [measurement(median=2e-3)])
    save(store, "s1", [measurement(median=3e-3)])
    sessions = store.load("native", FID).history("tests/test_x.py::test_a", "-")
    assert sorted(s.session_id for s in sessions) == ["s1", "s2"]
    assert {s.session_id: s.median_s for s in sessions} == {"s1": 3e-3, "s2": 2e-3}


def test_other_tests_and_mounts_are_kept(tmp_path):
    store = BaselineStore(tmp_path)
    save(store, "s1", [measurement("t::a"), measurement("t::b", "bind")])
    save(store, "s2", [measurement("t::a")])
    loaded = store.load("native", FID)
    assert [s.session_id for s in loaded.history("t::a", "-")] == ["s1", "s2"]
    assert [s.session_id for s in loaded.history("t::b", "bind")] == ["s1"]


# -- atomic write ----------------------------------------------------------------------------

def test_no_temp_file_left(tmp_path):
    store = BaselineStore(tmp_path)
    save(store, "s1", [measurement()])
    save(store, "s2", [measurement()])
    assert listing(tmp_path) == [f"native-{FID}.json"]


def test_failed_rename_leaves_original_unchanged(tmp_path, monkeypatch):
    store = BaselineStore(tmp_path)
    path = save(store, "s1", [measurement()])
    before = path.read_bytes()

    def boom(src, dst, *a, **kw):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        save(store, "s2", [measurement(median=9e-3)])
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert listing(tmp_path) == [path.name]


def test_unserializable_context_leaves_original_unchanged(tmp_path):
    store = BaselineStore(tmp_path)
    path = save(store, "s1", [measurement()])
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save(store, "s2", [measurement()], fingerprint={"obj": object()})
    assert path.read_bytes() == before
    assert listing(tmp_path) == [path.name]


def test_write_failure_midway_removes_temp_file(tmp_path, monkeypatch):
    store = BaselineStore(tmp_path)
    path = save(store, "s1", [measurement()])
    before = path.read_bytes()

    def boom(fd):
        raise OSError("fsync failed")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="fsync failed"):
        save(store, "s2", [measurement()])
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert listing(tmp_path) == [path.name]


# -- concurrency -----------------------------------------------------------------------------

def _concurrent_worker(directory: str, worker: int, barrier) -> None:
    store = BaselineStore(directory)
    barrier.wait()
    for i in range(5):
        m = Record(f"t::worker{worker}", "native", samples=(1e-3,) * 20,
                   summary=SessionSummary(1e-3 * (1 + worker), 0.01, 20))
        store.save("native", FID, MATCH, FINGERPRINT, [m], f"w{worker}-s{i}")


def test_concurrent_saves_all_land(tmp_path):
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_concurrent_worker, args=(str(tmp_path), w, barrier)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    loaded = read_baseline(tmp_path / f"native-{FID}.json")
    assert sorted(loaded.benchmarks) == [f"t::worker{w}" for w in range(4)]
    for w in range(4):
        assert [s.session_id for s in loaded.history(f"t::worker{w}", "-")] == [f"w{w}-s{i}" for i in range(5)]
    assert listing(tmp_path) == [f"native-{FID}.json"]


# -- unreadable files ------------------------------------------------------------------------

def test_corrupt_json_raises_naming_file_and_fix_and_save_keeps_bytes(tmp_path):
    store = BaselineStore(tmp_path)
    path = store.path_for("native", FID)
    corrupt = b'{"tool": "pytest-hostperf", "schema_version": 1,\n  "benchmarks": {oops'
    path.write_bytes(corrupt)
    with pytest.raises(BaselineError) as info:
        store.load("native", FID)
    message = str(info.value)
    assert str(path) in message
    assert "not valid JSON" in message and "line 2" in message
    assert "git checkout" in message and "move it away" in message
    assert info.value.path == path
    with pytest.raises(BaselineError) as info:
        save(store, "s1", [measurement()])
    assert str(path) in str(info.value)
    assert path.read_bytes() == corrupt
    assert listing(tmp_path) == [path.name]


def test_foreign_json_is_rejected(tmp_path):
    path = tmp_path / f"native-{FID}.json"
    path.write_text(json.dumps({"benchmarks": [], "machine_info": {}}))  # e.g. pytest-benchmark
    with pytest.raises(BaselineError) as info:
        read_baseline(path)
    assert str(path) in str(info.value)
    assert 'no "tool": "pytest-hostperf"' in str(info.value)
    path.write_text("[1, 2, 3]\n")
    with pytest.raises(BaselineError, match="not a pytest-hostperf baseline"):
        read_baseline(path)


@pytest.mark.parametrize("version", [2, 0, None, "1"])
def test_unknown_schema_version_is_rejected(tmp_path, version):
    path = tmp_path / f"native-{FID}.json"
    data = {"tool": "pytest-hostperf", "environment": "native", "fingerprint_id": FID, "benchmarks": {}}
    if version is not None:
        data["schema_version"] = version
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineError) as info:
        read_baseline(path)
    message = str(info.value)
    assert str(path) in message
    assert f"schema_version {version!r}" in message and "reads 1" in message


def test_unexpected_structure_is_a_baseline_error(tmp_path):
    path = tmp_path / f"native-{FID}.json"
    path.write_text(json.dumps({"tool": "pytest-hostperf", "schema_version": 1, "environment": "native",
                                "fingerprint_id": FID, "benchmarks": {"t::a": {"-": [{"median_s": 1}]}}}))
    with pytest.raises(BaselineError, match="unexpected structure"):
        read_baseline(path)


@pytest.mark.parametrize("benchmarks, key, expected", [
    ([], "benchmarks", "is a list; expected an object"),
    ({"t::a": []}, "benchmarks['t::a']", "is a list; expected an object"),
    ({"t::a": {"-": {}}}, "benchmarks['t::a']['-']", "is an object; expected a list"),
    ({"t::a": {"-": [{"session_id": "s", "saved_at": "x", "median_s": 1e-3, "log_median_se": 0.01, "rounds": 5,
                      "iterations": 1, "samples": "many"}]}}, "benchmarks['t::a']['-'][0].samples",
     "is 'many'; expected a list of numbers"),
])
def test_a_container_of_the_wrong_kind_is_named(tmp_path, benchmarks, key, expected):
    """Hand edits: a string of samples used to be read letter by letter ("samples[0] is 'm'")."""
    path = tmp_path / f"native-{FID}.json"
    path.write_text(json.dumps({"tool": "pytest-hostperf", "schema_version": 1, "environment": "native",
                                "fingerprint_id": FID, "benchmarks": benchmarks}))
    with pytest.raises(BaselineError) as info:
        read_baseline(path)
    assert f"{key} {expected}" in str(info.value) and str(path) in str(info.value)


def test_merge_conflict_markers_are_named_with_the_fix(tmp_path):
    store = BaselineStore(tmp_path)
    path = save(store, "s1", [measurement()])
    text = path.read_text()
    path.write_text(f"{text}<<<<<<< HEAD\n{text}=======\n{text}>>>>>>> main\n")
    with pytest.raises(BaselineError) as info:
        read_baseline(path)
    line = len(text.splitlines()) + 1
    assert f"has unresolved git merge-conflict markers (line {line})" in str(info.value)
    assert f"git checkout --theirs -- {path}" in str(info.value)


def test_renamed_file_is_not_overwritten(tmp_path):
    store = BaselineStore(tmp_path)
    original = save(store, "s1", [measurement()], fid="aaaaaaaaaaaa")
    renamed = store.path_for("native", "bbbbbbbbbbbb")
    original.rename(renamed)
    before = renamed.read_bytes()
    with pytest.raises(BaselineError, match="renamed"):
        save(store, "s2", [measurement()], fid="bbbbbbbbbbbb")
    assert renamed.read_bytes() == before


# -- files_for -------------------------------------------------------------------------------

def test_files_for_lists_other_fingerprints_of_an_environment(tmp_path):
    store = BaselineStore(tmp_path / "b")
    assert store.files_for("native") == []          # no directory yet
    a = save(store, "s1", [measurement()], fid="aaaaaaaaaaaa")
    b = save(store, "s1", [measurement()], fid="bbbbbbbbbbbb")
    d = save(store, "s1", [measurement()], env="docker", fid="cccccccccccc")
    q = save(store, "s1", [measurement()], env="ssh:box", fid="dddddddddddd")
    (tmp_path / "b" / "native-notes.txt").write_text("not a baseline")
    assert store.files_for("native") == [a, b]
    assert store.files_for("docker") == [d]
    assert store.files_for("ssh:box") == [q]
    assert store.files_for("qemu") == []


def test_files_for_does_not_mix_ssh_hosts_sharing_a_prefix(tmp_path):
    store = BaselineStore(tmp_path)
    a = save(store, "s1", [measurement()], env="ssh:a", fid="aaaaaaaaaaaa")
    save(store, "s1", [measurement()], env="ssh:a-b", fid="bbbbbbbbbbbb")
    assert store.files_for("ssh:a") == [a]


def test_save_never_writes_a_file_it_cannot_read(tmp_path):
    store = BaselineStore(tmp_path)
    try:
        save(store, "s1", [measurement(samples=[1e-3, float("nan"), 1.1e-3])])
    except ValueError:
        pass  # refusing the measurement up front would be fine too
    store.load("native", FID)  # must not raise BaselineError


def test_save_keeps_the_file_mode(tmp_path):
    store = BaselineStore(tmp_path)
    path = save(store, "s1", [measurement()])
    path.chmod(0o644)
    save(store, "s2", [measurement()])
    assert path.stat().st_mode & 0o777 == 0o644


# -- hand-edited values (issue #8, 4) and all-or-none saves (issue #8, 5) ------------------------

@pytest.mark.parametrize("key, value", [
    ("median_s", float("nan")), ("median_s", 0.0), ("median_s", -1e-3), ("median_s", float("inf")),
    ("median_s", "fast"), ("log_median_se", float("nan")), ("log_median_se", -0.01), ("rounds", 0),
    ("samples", [1e-3, 0.0]),
])
def test_an_impossible_value_is_rejected_with_the_path_and_the_key(tmp_path, key, value):
    store = BaselineStore(tmp_path)
    path = save(store, "s1", [measurement()])
    data = json.loads(path.read_text())
    data["benchmarks"]["tests/test_x.py::test_a"]["-"][0][key] = value
    path.write_text(json.dumps(data))  # json writes NaN and Infinity as Python reads them back
    with pytest.raises(BaselineError) as info:
        read_baseline(path)
    message = str(info.value)
    assert str(path) in message and f"benchmarks['tests/test_x.py::test_a']['-'][0].{key}" in message
    before = path.read_bytes()
    with pytest.raises(BaselineError):
        save(store, "s2", [measurement()])
    assert path.read_bytes() == before


@pytest.mark.parametrize("value", [float("nan"), 0.0, -1.0])
def test_an_impossible_saved_reference_is_rejected(tmp_path, value):
    store = BaselineStore(tmp_path)
    ref = SessionSummary(1e-3, 0.01, 15)
    path = save(store, "s1", [dataclasses.replace(measurement(), references=(ref,))])
    data = json.loads(path.read_text())
    assert data["benchmarks"]["tests/test_x.py::test_a"]["-"][0]["context"]["reference"]["median_s"] == 1e-3
    data["benchmarks"]["tests/test_x.py::test_a"]["-"][0]["context"]["reference"]["median_s"] = value
    path.write_text(json.dumps(data))
    with pytest.raises(BaselineError, match=r"\[0\]\.context\.reference\.median_s"):
        read_baseline(path)


def test_save_all_writes_every_environment_or_none(tmp_path, monkeypatch):
    store = BaselineStore(tmp_path)
    first = save(store, "s1", [measurement()], env="native")
    second = save(store, "s1", [measurement()], env="docker")
    before = {p: p.read_bytes() for p in (first, second)}
    real_fsync, calls = os.fsync, []

    def full_disk_at_the_second_file(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk_at_the_second_file)
    saves = [EnvironmentSave(env, FID, MATCH, FINGERPRINT, [measurement(median=5e-3)]) for env in ("native", "docker")]
    with pytest.raises(BaselineSaveError) as info:
        store.save_all(saves, "s2", now=NOW)
    monkeypatch.undo()
    assert "No space left on device" in str(info.value) and "No baseline file was changed" in str(info.value)
    assert {p: p.read_bytes() for p in (first, second)} == before
    assert listing(tmp_path) == sorted(p.name for p in (first, second))
    store.save_all(saves, "s2", now=NOW)  # with space again, both land
    for path in (first, second):
        assert [s.session_id for s in read_baseline(path).history("tests/test_x.py::test_a", "-")] == ["s1", "s2"]


def test_a_read_only_directory_is_a_save_error_naming_it(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories; tests/test_gate.py uses a read-only mount")
    store = BaselineStore(tmp_path)
    save(store, "s1", [measurement()])
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(BaselineSaveError, match=str(tmp_path)):
            save(store, "s2", [measurement()])
    finally:
        tmp_path.chmod(0o700)
