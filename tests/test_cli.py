"""The ``hostperf`` command as a user runs it (a subprocess, real engines)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def hostperf(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_hostperf.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=env, check=False)


def test_help_lists_every_subcommand() -> None:
    done = hostperf("--help")
    assert done.returncode == 0
    for command in ("doctor", "compare", "image", "sweep"):
        assert command in done.stdout


def test_doctor_reports_each_environment_with_a_reason() -> None:
    done = hostperf("doctor")
    assert done.returncode == 0
    lines = {line.split()[1]: line for line in done.stdout.splitlines() if line.startswith("[")}
    assert set(lines) == {"native", "docker", "qemu", "docker@qemu", "ssh", "instructions"}
    assert lines["native"].startswith("[ok]") and "CPython" in lines["native"]
    # Where --hostperf-measure=time,instructions counts, without running valgrind.
    assert "native: valgrind" in lines["instructions"] and "qemu:" in lines["instructions"]
    if shutil.which("valgrind"):
        assert lines["instructions"].startswith("[ok]"), lines["instructions"]
    if os.environ.get("HOSTPERF_REQUIRE_DOCKER"):
        assert lines["docker"].startswith("[ok]") and "Docker Engine" in lines["docker"]
    if os.environ.get("HOSTPERF_REQUIRE_QEMU"):
        assert lines["qemu"].startswith("[ok]") and "qemu-system-x86_64" in lines["qemu"]
        # The share axis: what share-9p and share-nfs need, and whether this machine has it.
        assert "9p" in lines["qemu"] and "nfs" in lines["qemu"] and "virtiofs" in lines["qemu"]


def test_doctor_explains_a_missing_engine(tmp_path: Path) -> None:
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/none.sock")
    done = hostperf("doctor", "--strict", env=env)
    assert done.returncode == 1
    docker_line = next(line for line in done.stdout.splitlines() if " docker " in line)
    assert docker_line.startswith("[--]") and "none.sock" in docker_line


def test_pytest_help_documents_every_option(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    text = result.stdout.str()
    for option in ("--hostperf ", "--hostperf-envs", "--hostperf-save", "--hostperf-baselines", "--hostperf-json",
                   "--hostperf-markdown", "--hostperf-tolerance", "--hostperf-alpha", "--hostperf-require",
                   "--hostperf-max-overhead", "--hostperf-timeout", "--hostperf-image", "--hostperf-vm-image",
                   "--hostperf-ssh-config", "--hostperf-network", "--hostperf-strict", "--hostperf-accept",
                   "--hostperf-accept-reason", "--hostperf-session-noise", "--hostperf-confirm", "--hostperf-mounts"):
        assert option in text
        assert option.strip() in (ROOT / "README.md").read_text()
