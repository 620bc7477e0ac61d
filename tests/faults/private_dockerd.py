"""A Docker engine of the test's own, to kill mid-session (never the machine's shared one).

``dockerd`` with its own data root, exec root (its own containerd), socket and pid file,
no bridge and no iptables rules, in a network namespace of its own: with
``--bridge=none`` dockerd deletes any ``docker0`` it sees at start-up, and in the host's
namespace that is the shared engine's bridge (it happened once while this suite was
written: every networked container on the machine failed until it was recreated). The
hostperf images are copied into it from the shared engine (``docker save | docker
load``): no build, no registry.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence


class PrivateDockerd:
    """One private engine: start, kill (SIGKILL, as a crash would), start again, remove."""

    def __init__(self) -> None:
        # Short: containerd's sockets live under the exec root (unix socket paths < 108 bytes).
        self.root = Path(tempfile.mkdtemp(prefix="hpd-", dir="/tmp"))
        (self.root / "daemon.json").write_text("{}\n")   # not /etc/docker/daemon.json: its "hosts" would clash
        self.url = f"unix://{self.root}/docker.sock"
        self.process: subprocess.Popen[bytes] | None = None
        self.host_links: set[str] = set()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def argv(self) -> list[str]:
        # unshare execs dockerd: the pid is dockerd's own.
        return ["unshare", "--net", "--", "dockerd", f"--config-file={self.root}/daemon.json",
                f"--data-root={self.root}/data",
                f"--exec-root={self.root}/exec", f"--host={self.url}", f"--pidfile={self.root}/docker.pid",
                "--bridge=none", "--iptables=false", "--ip6tables=false"]

    def start(self, timeout: float = 90) -> None:
        # After a SIGKILL of dockerd alone, its containerd can outlive it for a while, and
        # the next dockerd then times out starting its own ("timeout waiting for containerd
        # to start", seen once in CI): what is left of this engine goes first.
        self._end_leftover_processes()
        self.host_links = set(os.listdir("/sys/class/net"))
        with open(self.root / "dockerd.log", "ab") as log:
            self.process = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the private dockerd did not start: {self.log_tail()}")
            time.sleep(0.2)

    def _end_leftover_processes(self, timeout: float = 20) -> None:
        import psutil

        mine = str(self.root)
        leftovers = []
        for process in psutil.process_iter(["cmdline"]):
            if any(mine in arg for arg in process.info["cmdline"] or []):
                leftovers.append(process)
        for process in leftovers:
            try:
                process.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(leftovers, timeout=timeout)

    def answers(self) -> bool:
        try:
            self.client().ping()
            return True
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            return False

    def client(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.url, version="auto", timeout=30)

    def load_images(self, shared: Any, tags: Sequence[str]) -> None:
        """Copy ``tags`` from the shared engine (``docker save | docker load``)."""
        saving = subprocess.Popen(["docker", "save", *tags], stdout=subprocess.PIPE)
        loading = subprocess.run(["docker", "-H", self.url, "load"], stdin=saving.stdout, capture_output=True,
                                 timeout=600, check=False)
        assert saving.stdout is not None
        saving.stdout.close()
        if saving.wait(timeout=60) != 0 or loading.returncode != 0:
            raise RuntimeError(f"copying {tags} into the private engine failed: {loading.stderr.decode()}")

    def kill(self) -> None:
        """SIGKILL the engine (its containerd goes with it; container shims stay)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """Stop the engine, then remove its containers' mounts and the whole root."""
        if self.process is not None and self.process.poll() is None:
            if self.answers():
                client = self.client()
                for container in client.containers.list(all=True):
                    container.remove(force=True)
            # A throwaway engine with no container left: SIGKILL its process group (dockerd
            # and its containerd) rather than wait ~30 s for an orderly shutdown.
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=30)
        # dockerd leaves its data root bind-mounted on itself (and overlays after a crash).
        prefix = str(self.root) + "/"
        points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        # Other people's containers come and go (veth*); anything else must still be there.
        gone = {link for link in self.host_links - set(os.listdir("/sys/class/net")) if not link.startswith("veth")}
        assert not gone, f"the private dockerd removed the host's network interfaces {sorted(gone)}"

    def log_tail(self) -> str:
        try:
            return (self.root / "dockerd.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""


def dockerd_available() -> str | None:
    """Why a private dockerd cannot run here, or None."""
    if shutil.which("dockerd") is None:
        return "no dockerd binary (apt-get install docker.io)"
    if shutil.which("unshare") is None:
        return "no unshare (apt-get install util-linux): dockerd must not run in the host's network namespace"
    if os.geteuid() != 0:
        return "a private dockerd needs root"
    return None
