"""The per-session nfs-ganesha server: real processes, real RPC, real sweep.

The guest side (a VM mounting the export) is in ``test_qemu_shares.py``; here the host
side: the server answers NFSv4 on 127.0.0.1 only, stops with its session, and a sweep
removes what a SIGKILLed session left.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from pytest_hostperf.environments import labels, nfs
from pytest_hostperf.environments.base import EnvironmentFailure

if nfs.unavailable_reason():
    # CI (HOSTPERF_REQUIRE_QEMU) must run these: a missing server is a failure there.
    if os.environ.get("HOSTPERF_REQUIRE_QEMU"):
        pytest.fail(f"HOSTPERF_REQUIRE_QEMU is set but {nfs.unavailable_reason()}", pytrace=False)
    pytest.skip(f"{nfs.unavailable_reason()} (scripts/setup.sh installs it)", allow_module_level=True)


def _nfs_null_call(port: int) -> int:
    """NFSv4 NULL procedure over TCP (ONC RPC record marking); returns the accept status."""
    xid = 0x5EED
    call = struct.pack(">IIIIII", xid, 0, 2, 100003, 4, 0) + struct.pack(">IIII", 0, 0, 0, 0)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(struct.pack(">I", 0x80000000 | len(call)) + call)
        header = conn.recv(4)
        reply = conn.recv(struct.unpack(">I", header)[0] & 0x7FFFFFFF)
    rxid, mtype, reply_stat = struct.unpack_from(">III", reply)
    assert (rxid, mtype, reply_stat) == (xid, 1, 0), reply   # our call, a reply, accepted
    return struct.unpack_from(">I", reply, 20)[0]   # after the verifier: accept_stat (0 = SUCCESS)


def test_serves_nfs4_on_loopback_then_stops(tmp_path: Path) -> None:
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    with nfs.NfsExport(export_dir, "test-serve", root=tmp_path / "state") as export:
        assert export.port is not None and export.state is not None
        assert _nfs_null_call(export.port) == 0
        listeners = [c for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == export.port]
        assert listeners and all(c.laddr.ip in ("127.0.0.1", "::ffff:127.0.0.1") for c in listeners), listeners
        config = (export.state / "ganesha.conf").read_text()
        for setting in ("Clients = 127.0.0.1", "PrivilegedPort = false", "Squash = All_Squash", "Protocols = 4"):
            assert setting in config
        mount = export.guest_mount("/mnt/x")
        assert mount["fstype"] == "nfs4" and "addr=10.0.2.100" in mount["options"]
        assert nfs.guest_forward(export.port) == f"guestfwd=tcp:10.0.2.100:2049-tcp:127.0.0.1:{export.port}"
        state, port = export.state, export.port
    assert not state.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    # root owned the export dir: guest users are squashed to nobody, who must own it
    assert export_dir.stat().st_uid == nfs.NOBODY


def test_not_a_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentFailure) as info:
        nfs.NfsExport(tmp_path / "missing", "test-missing", root=tmp_path / "state").start()
    assert str(tmp_path / "missing") in str(info.value) and "not a directory" in str(info.value)


def test_sweep_stops_the_server_of_a_dead_session(tmp_path: Path) -> None:
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    root = tmp_path / "state"
    export = nfs.NfsExport(export_dir, "test-sweep", root=root)
    export.start()
    try:
        server = psutil.Process(json.loads((export.state / "owner.json").read_text())["server_pid"])
        assert nfs.sweep_stale(root) == []   # our session is alive: nothing is touched
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        owner_file = export.state / "owner.json"
        owner = json.loads(owner_file.read_text())
        owner.update({labels.PID: str(dead.pid), labels.STARTED: ""})
        owner_file.write_text(json.dumps(owner))
        assert nfs.sweep_stale(root) == [export.state]
        server.wait(10)
        assert not export.state.exists()
    finally:
        export.stop()


def test_server_dies_with_a_killed_controller_and_the_sweep_cleans_up(tmp_path: Path) -> None:
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    root = tmp_path / "state"
    controller = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import json, sys, time
            from pathlib import Path
            from pytest_hostperf.environments import nfs
            export = nfs.NfsExport(Path({str(export_dir)!r}), "test-killed", root=Path({str(root)!r}))
            export.start()
            print(json.dumps({{"state": str(export.state), "port": export.port}}), flush=True)
            time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(nfs.__file__).parents[2])})
    try:
        started = json.loads(controller.stdout.readline())
        server = psutil.Process(json.loads((Path(started["state"]) / "owner.json").read_text())["server_pid"])
        controller.send_signal(signal.SIGKILL)
        controller.wait(10)
        server.wait(15)   # PR_SET_PDEATHSIG: the server does not outlive its controller
        assert Path(started["state"]).exists()   # ... but its state dir is left for the sweep
        assert nfs.sweep_stale(root) == [Path(started["state"])]
        assert not Path(started["state"]).exists()
    finally:
        if controller.poll() is None:
            controller.kill()


def test_a_state_root_others_can_write_is_refused_and_not_swept(tmp_path: Path) -> None:
    """Root writes the server's config there: a root anybody can write is never used or trusted."""
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    root = tmp_path / "state"
    root.mkdir(mode=0o777)
    root.chmod(0o777)
    planted = root / "planted"
    planted.mkdir()
    with pytest.raises(EnvironmentFailure, match="writable by others") as info:
        nfs.NfsExport(export_dir, "test-unsafe", root=root).start()
    assert str(root) in str(info.value)
    assert nfs.sweep_stale(root) == [] and planted.exists()


def test_sweep_leaves_a_reused_pid_alone(tmp_path: Path) -> None:
    """A dead session's record naming a pid that now runs something else: that process lives."""
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    state = root / "dead-session"
    state.mkdir()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        labels.write_owner_file(state, "dead-session", "owner.json", server_pid=bystander.pid)
        record = json.loads((state / "owner.json").read_text())
        record.update({labels.PID: str(dead.pid), labels.STARTED: ""})
        (state / "owner.json").write_text(json.dumps(record))
        assert nfs.sweep_stale(root) == [state]
        assert bystander.poll() is None   # its command line does not name that state's config
    finally:
        bystander.kill()
        bystander.wait()
