"""Every topology of issue #14 in one pytest session, with real Docker, QEMU and NFS.

``example_project``'s small-file test (a cache of small files) runs natively, in a
container, in a VM on its three shares (virtiofs, 9p, NFS) and in a
container on a Docker engine inside a VM (bind mounts over virtiofs, 9p and NFS, and a
volume on the VM's disk): the Docker Desktop / colima / Lima shapes, built here from
Debian parts. Checked: each item's file system as the test saw it from inside, the
facts a user recognises their set-up by, and that nothing is left afterwards.

The subject is the mechanism, not this host's TCG speed: the overhead gate is opened
wide (its one remaining say, the example's own marker, is tolerated and nothing else) and
the benchmark runs one round per item (one block) to keep CI short.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from pytest_hostperf.environments import nfs
from pytest_hostperf.environments.qemu import find_qemu, session_root
from pytest_hostperf.fingerprint import collect_mounts

pytestmark = [pytest.mark.qemu, pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example_project"
ENVS = "native,docker,qemu,docker@qemu"
MOUNTS = "host,bind,volume,share,share-9p,share-nfs,bind-virtiofs,bind-9p,bind-nfs"
#: What each VM item's test must have run on, as /proc/mounts says inside.
VM_FILE_SYSTEMS = {
    "qemu-share": "virtiofs", "qemu-share-9p": "9p", "qemu-share-nfs": "nfs4",
    "docker@qemu-bind-virtiofs": "virtiofs", "docker@qemu-bind-9p": "9p", "docker@qemu-bind-nfs": "nfs4",
    "docker@qemu-volume": "ext4",   # the engine VM's data disk
}
#: One timed round per item (plus pytest-benchmark's calibration call): the report's
#: medians and mount facts are what is checked, not their spread.
LEAN = ["--benchmark-max-time=0.000001", "--benchmark-min-rounds=1", "--benchmark-warmup=off", "--hostperf-blocks=1",
        "--hostperf-confirm=0", "--hostperf-max-overhead=qemu:tcg=100000,docker@qemu:tcg=100000,"
        "qemu:kvm=100000,docker@qemu:kvm=100000,docker=100000"]


@pytest.fixture(scope="module", autouse=True)
def everything_installed(engine: Any) -> None:
    problems = [p for p in (None if find_qemu() else "qemu-system-x86_64 is not installed", nfs.unavailable_reason())
                if p]
    if problems:
        if os.environ.get("HOSTPERF_REQUIRE_QEMU"):
            pytest.fail("HOSTPERF_REQUIRE_QEMU is set but: " + "; ".join(problems))
        pytest.skip("; ".join(problems))


def _command(tmp_path: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--hostperf", f"--hostperf-envs={ENVS}",
            f"--hostperf-require={ENVS}", f"--hostperf-mounts={MOUNTS}", "-k", "small_file",
            f"--hostperf-baselines={tmp_path / 'baselines'}", f"--hostperf-json={tmp_path / name}.json", *LEAN]


def _session_processes(session: str) -> list[str]:
    """qemu, virtiofsd, nfs-ganesha and agents of a session, by the names and paths it gives them."""
    marks = (f"hostperf-{session}", f"{session_root()}/{session}", f"{nfs.state_root()}/{session[:24]}")
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if any(mark in cmdline for mark in marks):
            found.append(f"{process.pid}: {cmdline[:160]}")
    return found


def _session_leftovers(session: str, engine: Any) -> list[str]:
    found = _session_processes(session)
    found += [str(p) for p in session_root().glob(f"{session}*")]
    found += [str(p) for p in nfs.state_root().glob(f"{session[:24]}-*")] if nfs.state_root().exists() else []
    found += [str(p) for p in Path(tempfile.gettempdir()).glob(f"hostperf-{session}-*")]
    label = {"label": f"io.hostperf.session={session}"}
    found += [f"container {c.name}" for c in engine.containers.list(all=True, filters=label)]
    found += [f"volume {v.name}" for v in engine.volumes.list(filters=label)]
    return found


def test_every_topology_in_one_session_and_nothing_left(tmp_path: Path, engine: Any) -> None:
    # CI time: one session, one file-heavy test (the small-file cache; sqlite is the same
    # mechanism), one round per item. What a SIGKILLed session leaves is covered by the
    # pieces' own tests (test_nfs_export: ganesha; test_qemu_plugin: VMs; faults: docker).
    started = time.monotonic()
    done = subprocess.run(_command(tmp_path, "run"), cwd=EXAMPLE, capture_output=True, text=True, timeout=2400,
                          check=False)
    took = time.monotonic() - started
    report = json.loads((tmp_path / "run.json").read_text())
    rows = {r["item"].split("::")[-1]: r for r in report["results"]}
    assert len(rows) == 10 and all(r["outcome"] == "passed" for r in rows.values()), done.stdout[-6000:]
    # The one failure allowed is the overhead gate's, a judgement of this host's TCG speed
    # (the example's marker budgets small files on qemu-share at 100x native, which a loaded
    # 2-core CI machine exceeds): the mechanisms below are the subject.
    over_budget = [item for item, r in rows.items() if r["verdict"] == "overhead"]
    summary = done.stdout.strip().splitlines()[-1]
    failed = re.search(r"(\d+) failed", summary)
    assert (done.returncode == 0 and not over_budget) or (
        done.returncode == 1 and failed and int(failed.group(1)) == len(over_budget)), \
        done.stdout[-6000:] + done.stderr[-3000:]
    for test in ("test_small_file_cache",):
        for target, fstype in VM_FILE_SYSTEMS.items():
            row = rows[f"{test}[{target}]"]
            assert row["outcome"] == "passed" and row["median_s"] > 0, (target, row["reason"])
            (info,) = row["mount_info"].values()
            assert info["fstype"] == fstype, (target, info)
        host_fs = {name: info["fstype"] for name, info in
                   collect_mounts({"tmp": tempfile.gettempdir(), "docker": engine.info()["DockerRootDir"]}).items()}
        for target, where in (("native", "tmp"), ("docker-bind", "tmp"), ("docker-volume", "docker")):
            (info,) = rows[f"{test}[{target}]"]["mount_info"].values()
            assert info["fstype"] == host_fs[where], (target, info, host_fs)

    small = {target: rows[f"test_small_file_cache[{target}]"] for target in VM_FILE_SYSTEMS}
    # The share's server and options are recorded with each item (what the baselines split on).
    assert small["qemu-share-nfs"]["mount_info"]["share-nfs"]["outside"]["server"] == nfs.ganesha_version()
    assert "vers=4.2" in small["docker@qemu-bind-nfs"]["mount_info"]["bind-nfs"]["options"]
    assert small["docker@qemu-bind-9p"]["mount_info"]["bind-9p"]["outside"]["security_model"] == "mapped-xattr"
    # An engine in a VM, recognisable as one: the container runs in a VM, the engine's
    # kernel is the VM's (as -linuxkit gives Docker Desktop away), the accelerator is known.
    container_vm = small["docker@qemu-volume"]["fingerprint"]
    outside = container_vm["outside"]
    assert container_vm["env_kind"] == "container-in-vm"
    assert outside["engine"]["kernel"] == outside["engine_in_vm"]["kernel"] != os.uname().release
    assert outside["engine_in_vm"]["accelerator"] in ("tcg", "kvm")
    expected_vendor = "QEMU TCG" if outside["engine_in_vm"]["accelerator"] == "tcg" else "KVM"
    assert expected_vendor in str(container_vm["hypervisor"]["vendor"]), container_vm["hypervisor"]
    print(f"one session over every topology: {took:.0f} s; docker@qemu engine ready in "
          f"{outside['engine_in_vm'].get('startup_s')} s (boot {outside['engine_in_vm'].get('boot_s')} s)")

    session = report["session_id"]
    assert _session_leftovers(session, engine) == []
