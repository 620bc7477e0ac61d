"""What KVM did since this machine booted (environments.qemu.kvm_memo), on files in tmp."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_hostperf.environments.qemu import kvm_memo
from pytest_hostperf.environments.qemu.kvm_memo import KvmOutcome


@pytest.fixture(autouse=True)
def booted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kvm_memo, "boot_id", lambda: "boot-1")


def test_an_outcome_is_kept_per_qemu_binary_until_the_machine_reboots(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert kvm_memo.recall("/usr/bin/qemu-system-x86_64", tmp_path) is None
    kvm_memo.remember("/usr/bin/qemu-system-x86_64", KvmOutcome(False, "wrote nothing within 5 s"), tmp_path)
    kvm_memo.remember("/opt/qemu/bin/qemu-system-x86_64", KvmOutcome(True), tmp_path)
    known = kvm_memo.recall("/usr/bin/qemu-system-x86_64", tmp_path)
    assert known is not None and not known.works and known.reason == "wrote nothing within 5 s" and known.at
    other = kvm_memo.recall("/opt/qemu/bin/qemu-system-x86_64", tmp_path)
    assert other is not None and other.works
    monkeypatch.setattr(kvm_memo, "boot_id", lambda: "boot-2")   # rebooted: ask again
    assert kvm_memo.recall("/usr/bin/qemu-system-x86_64", tmp_path) is None


@pytest.mark.parametrize("content", ["{not json", "[]", '{"/q": {"works": "no"}}', '{"/q": 3}'])
def test_an_unreadable_memo_means_the_probe_runs(tmp_path: Path, content: str) -> None:
    (tmp_path / "boot-1.json").write_text(content)
    assert kvm_memo.recall("/q", tmp_path) is None
    kvm_memo.remember("/q", KvmOutcome(False, "x"), tmp_path)   # replaced, not a crash
    known = kvm_memo.recall("/q", tmp_path)
    assert known is not None and not known.works


def test_without_a_boot_id_nothing_is_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kvm_memo, "boot_id", lambda: None)
    kvm_memo.remember("/q", KvmOutcome(False, "x"), tmp_path)
    assert kvm_memo.recall("/q", tmp_path) is None and not list(tmp_path.iterdir())
