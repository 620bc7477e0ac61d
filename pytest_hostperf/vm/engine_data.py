"""The docker@qemu data disk (``/var/lib/docker`` of the engine in the VM), made on the host.

Loading an image into the engine inside a TCG guest is slow (164 MB took 778 s here,
on a loaded host), and a fresh CI machine pays it for every image. The same Debian
``dockerd`` that runs in the VM can fill the data directory on the host in seconds:
a private, short-lived dockerd (its own data root, exec root and socket; no bridge, no
iptables, no containers: it only loads images) takes ``docker save`` from the host's
engine, is stopped, and ``mke2fs -d`` turns its data root into the ext4 disk the VM
mounts at ``/var/lib/docker``. overlay2 layers are plain directories; their whiteouts
(0:0 character devices) and opaque-directory xattrs are copied by ``mke2fs -d``.

Only used when the host's dockerd is the version installed in the VM disk (the
on-disk layout is the engine's own); otherwise the caller loads the images through
the VM's engine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from pytest_hostperf.environments import labels
from pytest_hostperf.environments.process import spawn_logged, stop_process, tail_file
from pytest_hostperf.progress import SILENT, Reporter

__all__ = ["DataDiskError", "fill_on_host", "host_dockerd_version"]


class DataDiskError(Exception):
    """The data disk could not be made on the host; carries the private dockerd's log."""


def host_dockerd_version() -> Optional[str]:
    """``20.10.24+dfsg1`` for Debian's dockerd on the host, None without one."""
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        return None
    try:
        out = subprocess.run([dockerd, "--version"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"version (\S+?),", out)
    return match.group(1) if match else None


def fill_on_host(image: Path, host_client: Any, tags: Sequence[str], size_mb: int,
                 reporter: Reporter = SILENT, timeout: float = 120.0, session_id: str = "image-build") -> None:
    """Write ``image``: an ext4 disk whose root is a dockerd data root holding ``tags``."""
    import docker

    # The socket path must stay short (108 bytes), so the private dirs go to /tmp; the
    # owner file lets the temp dir sweep remove them if this process is killed.
    private = Path(tempfile.mkdtemp(prefix=f"{labels.TEMP_PREFIX}dockerd-"))
    labels.write_owner_file(private, session_id)
    data_root = image.parent / "data-root"
    data_root.mkdir()
    sock = private / "docker.sock"
    # Its own network namespace: with --bridge=none dockerd deletes any docker0 it sees at
    # start-up, and in the host's namespace that is the host engine's bridge (seen here: every
    # container with a network failed to start afterwards until dockerd was restarted).
    if shutil.which("unshare") is None:
        shutil.rmtree(private, ignore_errors=True)
        shutil.rmtree(data_root, ignore_errors=True)
        raise DataDiskError("filling the engine VM's data disk on the host needs unshare (apt-get install "
                            "util-linux): a private dockerd in the host's network namespace would delete "
                            "the host engine's docker0 bridge")
    argv = ["unshare", "--net", "--", "dockerd", f"--data-root={data_root}", f"--exec-root={private / 'exec'}",
            f"--pidfile={private / 'dockerd.pid'}", f"--host=unix://{sock}",
            "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
            "--storage-driver=overlay2", "--log-level=warn"]
    proc = spawn_logged(argv, private / "dockerd.log", die_with_parent=True)
    try:
        client = _wait_private_engine(proc, sock, timeout, private / "dockerd.log")
        for tag in tags:
            reporter.step(f"loading {tag} into the engine VM's data disk (on the host)")
            client.images.load(host_client.images.get(tag).save(named=True))
        client.close()
    except docker.errors.DockerException as exc:
        raise DataDiskError(f"the private dockerd could not load {', '.join(tags)}: {exc}\n"
                            + tail_file(private / "dockerd.log", 15)) from None
    finally:
        stop_process(proc, grace=20.0)   # SIGTERM first: dockerd stops containerd and flushes its db
        shutil.rmtree(private, ignore_errors=True)
    # Engine scratch space: nothing a later engine needs.
    for scratch in ("tmp", "runtimes"):
        shutil.rmtree(data_root / scratch, ignore_errors=True)
    made = subprocess.run(["mke2fs", "-q", "-t", "ext4", "-L", "hostperf-docker", "-d", str(data_root),
                           "-F", str(image), f"{size_mb}M"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env={**os.environ, "E2FSPROGS_FAKE_TIME": "0"}, check=False)
    shutil.rmtree(data_root, ignore_errors=True)
    if made.returncode != 0:
        raise DataDiskError(f"mke2fs -d could not write {image}: {made.stdout.strip()[-400:]}")


def _wait_private_engine(proc: subprocess.Popen[bytes], sock: Path, timeout: float, log: Path) -> Any:
    import docker

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if sock.exists():
            try:
                client = docker.DockerClient(base_url=f"unix://{sock}", timeout=600)
                client.ping()
                return client
            except (OSError, docker.errors.DockerException):
                pass
        time.sleep(0.1)
    raise DataDiskError(f"the private dockerd did not start (exit status {proc.poll()}):\n"
                        + tail_file(log, 15))
