"""The programs that run inside environments, tested as the modules they now are.

The guest bootstrap, the guest init, the in-container killer and keep-alive, the ssh
probe and the leftovers listing used to be strings inside the backends; the VM, docker
and ssh tests run them for real, these tests pin their pieces down on the host.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_hostperf.agent import boot, keepalive, kill, leftovers, probe, protocol
from pytest_hostperf.environments.base import package_parent
from pytest_hostperf.vm.disk import install_guest_files
from pytest_hostperf.vm.model import GUEST_DIR, guest_files

# --------------------------------------------------------------------------- guest bootstrap


def test_mount_options_split_into_flags_and_data() -> None:
    assert boot.mount_flags("ro,trans=virtio,version=9p2000.L") == (1, "trans=virtio,version=9p2000.L")
    assert boot.mount_flags("") == (0, "")
    assert boot.mount_flags("mode=1777") == (0, "mode=1777")


def test_launch_message_is_found_after_noise_and_checked() -> None:
    read, write = os.pipe()
    launch = {"argv": ["python3", "-m", "pytest_hostperf.agent"], "mounts": []}
    os.write(write, b"console noise\n" + protocol.LAUNCH_PREFIX + json.dumps(launch).encode() + b"\n")
    assert boot.read_launch(read) == launch
    os.write(write, protocol.LAUNCH_PREFIX + b'{"argv": "not a list"}\n')
    with pytest.raises(boot.BootError, match="malformed launch message"):
        boot.read_launch(read)
    os.close(write)
    with pytest.raises(boot.BootError, match="closed before the launch message"):
        boot.read_launch(read)
    os.close(read)


def test_a_line_on_the_port_is_capped() -> None:
    read, write = os.pipe()
    os.write(write, b"x" * 100)
    with pytest.raises(boot.BootError, match="longer than 64 bytes"):
        boot.read_line(read, limit=64)
    os.close(read)
    os.close(write)


def test_the_agent_port_is_found_by_name(tmp_path: Path) -> None:
    for entry, name in (("vport1p1", "org.other"), ("vport2p1", protocol.AGENT_PORT_NAME)):
        (tmp_path / entry).mkdir()
        (tmp_path / entry / "name").write_text(name + "\n")
    assert boot.find_port(protocol.AGENT_PORT_NAME, 1, tmp_path) == "/dev/vport2p1"
    with pytest.raises(boot.BootError, match="did not appear"):
        boot.find_port("no.such.port", 0.1, tmp_path)


def test_the_vm_disk_carries_a_bootstrap_that_runs_without_site(tmp_path: Path) -> None:
    # The disk builder's layout: the bootstrap finds its files beside itself, and imports
    # nothing but the stdlib and the protocol module copied with it.
    tree = tmp_path / "rootfs"
    install_guest_files(tree, "/usr/bin/python3", ["/lib/modules/x/virtio.ko"], [])
    guest = tree / GUEST_DIR.lstrip("/")
    assert (guest / boot.PYTHON_FILE).read_text() == "/usr/bin/python3\n"
    assert (guest / boot.MODULES_LIST).read_text() == "/lib/modules/x/virtio.ko\n"
    assert os.access(guest / "init", os.X_OK)
    code = "import sys; from pytest_hostperf.agent import boot; print(boot.GUEST_DIR); print(sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-E", "-s", "-S", "-c", code], cwd=guest, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out[0] == str(guest)
    assert not [m for m in eval(out[1]) if m.split(".")[0] in ("pytest", "_pytest", "docker", "psutil")]  # noqa: S307


def test_guest_files_are_the_package_files() -> None:
    files = guest_files()
    assert files["pytest_hostperf/agent/boot.py"] == Path(boot.__file__).resolve()
    assert files["pytest_hostperf/agent/protocol.py"] == Path(protocol.__file__).resolve()
    assert all(source.is_file() for source in files.values())


def test_guest_init_is_valid_sh_and_runs_the_bootstrap_module() -> None:
    init = guest_files()["init.sh"]
    subprocess.run(["sh", "-n", str(init)], check=True)
    text = init.read_text()
    assert "-m pytest_hostperf.agent.boot" in text and f"{GUEST_DIR}/python" in text
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(init)], check=True)


# --------------------------------------------------------------------------- killer, keep-alive

SLEEPER = "import time; time.sleep(60)"


def test_kill_hits_exactly_the_processes_with_the_token() -> None:
    token = f"tok{os.getpid()}"
    marked = subprocess.Popen([sys.executable, "-c", SLEEPER], env={**os.environ, protocol.TOKEN_VAR: token})
    # The token in the arguments, or a longer token in the environment, is not a match.
    named = subprocess.Popen([sys.executable, "-c", SLEEPER, f"{protocol.TOKEN_VAR}={token}"])
    longer = subprocess.Popen([sys.executable, "-c", SLEEPER], env={**os.environ, protocol.TOKEN_VAR: token + "x"})
    try:
        deadline = time.monotonic() + 10
        while marked.pid not in kill.processes_with_token(token) and time.monotonic() < deadline:
            time.sleep(0.02)   # the environ file is readable once the child has exec'd
        assert kill.processes_with_token(token) == [marked.pid]
        subprocess.run([sys.executable, "-m", "pytest_hostperf.agent.kill", token], check=True,
                       env={**os.environ, "PYTHONPATH": str(package_parent())})
        assert marked.wait(10) == -9
        assert named.poll() is None and longer.poll() is None
    finally:
        for proc in (marked, named, longer):
            proc.kill()
            proc.wait()


def test_kill_without_a_token_is_a_usage_error() -> None:
    assert kill.main([]) == 2


def test_keepalive_opens_its_directories_and_says_ready(tmp_path: Path) -> None:
    dirs = [tmp_path / "volume", tmp_path / "layer" / "deep"]
    proc = subprocess.Popen([sys.executable, "-m", "pytest_hostperf.agent.keepalive", *map(str, dirs)],
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(package_parent())})
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().decode().strip() == keepalive.READY_MARK
        for directory in dirs:
            assert stat.S_IMODE(directory.stat().st_mode) == 0o1777
        assert proc.poll() is None   # and then it only waits
    finally:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- ssh probe, leftovers

def test_probe_source_runs_standalone_and_reports_what_the_agent_needs() -> None:
    source = Path(probe.__file__).read_text()
    assert "from __future__" not in source and "f\"" not in source   # old-Python-safe, as documented
    out = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, check=True,
                         cwd="/", env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}).stdout
    (line,) = [line for line in out.splitlines() if line.startswith(probe.PROBE_MARK)]
    info = json.loads(line[len(probe.PROBE_MARK):])
    assert info["version"][:2] == list(sys.version_info[:2]) and info["home"] == os.path.expanduser("~")
    assert info["modules"]["pytest"] == pytest.__version__


def test_leftovers_lists_owner_records_only(tmp_path: Path) -> None:
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "owner.json").write_text('{"io.hostperf.session": "s1"}')
    (tmp_path / "s2").mkdir()                                   # no record: not listed
    (tmp_path / "s3").mkdir()
    (tmp_path / "s3" / "owner.json").write_text("not json")     # unreadable: not listed
    assert leftovers.records(str(tmp_path)) == [{"dir": "s1", "owner": {"io.hostperf.session": "s1"}}]
    assert leftovers.records(str(tmp_path / "missing")) == []
