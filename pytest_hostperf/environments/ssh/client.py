"""Running commands on an ssh target with the OpenSSH client, and probing its Python.

The OpenSSH binary is driven with argv lists only; the one string that ssh hands to the
remote login shell is built from :func:`shlex.quote`-d words (so the remote side must
have a POSIX shell).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

from pytest_hostperf.agent import probe as probe_module
from pytest_hostperf.environments.base import EnvironmentFailure
from pytest_hostperf.environments.process import tail_lines

#: Oldest Python the agent code supports (pyproject's requires-python).
MIN_PYTHON: Final = (3, 9)

CONFIG_HINTS: Final = (
    "`ssh HOST true` must work in this shell without a password or a prompt; "
    "for Lima: limactl show-ssh --format=config NAME >> ~/.ssh/config, "
    "colima: colima ssh-config >> ~/.ssh/config, "
    "Vagrant: vagrant ssh-config >> ~/.ssh/config (or pass the file with --hostperf-ssh-config)"
)


def shell_command(*words: str) -> str:
    """A simple command for the remote shell, every word :func:`shlex.quote`-d."""
    return " ".join(shlex.quote(w) for w in words)


def interpreter_word(path: str) -> str:
    """The interpreter as a shell word; a leading ``~/`` still means the remote home.

    Used only before the home is known (the probe); afterwards the path is made absolute.
    """
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def module_source(module: Any) -> str:
    """A stdlib-only module's source, to run (``python -c``) where nothing is shipped yet."""
    return Path(module.__file__).read_text()


class SshClient:
    """One ssh target: its command lines, one-shot commands, and what failures mean."""

    def __init__(self, name: str, host: str, ssh_config: Path | None = None, ssh_binary: str = "ssh",
                 connect_timeout: int = 10) -> None:
        self.name = name           # the environment's name, for error messages
        self.host = host
        self.ssh_config = ssh_config
        self.ssh_binary = ssh_binary
        self.connect_timeout = connect_timeout

    def argv(self, command: str) -> list[str]:
        """The ssh command line running ``command`` (already shell-quoted) on the host."""
        # -T: no pty (a pty would echo input and mangle bytes); -e none: fully transparent.
        argv = [self.ssh_binary, "-T", "-e", "none",
                "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
                # a dead network must end the agent channel, not hang it until the test timeout
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
                # forwardings from the user's config would be set up (and fail) per connection
                "-o", "ClearAllForwardings=yes",
                # never become a ControlPersist master: it would outlive us holding our pipes
                # (an existing master of the user's is still used, which only makes us faster)
                "-o", "ControlMaster=no"]
        if self.ssh_config is not None:
            argv += ["-F", str(self.ssh_config)]
        return [*argv, "--", self.host, command]

    def run(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        binary = shutil.which(self.ssh_binary)
        if binary is None:
            raise EnvironmentFailure(self.name, f"no ssh client ({self.ssh_binary!r} is not on PATH)",
                                     hint="apt-get install openssh-client (macOS and Windows ship one)")
        try:
            return subprocess.run(  # noqa: S603 - argv list, never a shell
                self.argv(command), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=timeout, start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            raise EnvironmentFailure(self.name, f"ssh {self.host} did not finish within {timeout:.0f} s",
                                     hint="is the machine up and its sshd answering? " + CONFIG_HINTS,
                                     log_tail=tail_lines(err, 8)) from None

    def probe(self, python: str, timeout: float) -> dict[str, Any]:
        """What the target's ``python`` is; EnvironmentFailure that tells apart why it cannot run the agent."""
        if self.ssh_config is not None and not self.ssh_config.is_file():
            raise EnvironmentFailure(self.name, f"the ssh config file {self.ssh_config} does not exist",
                                     hint="check --hostperf-ssh-config")
        result = self.run(interpreter_word(python) + " " + shell_command("-c", module_source(probe_module)),
                          timeout=timeout)
        stderr = result.stderr or ""
        if result.returncode == 255:
            raise self.connection_failure(stderr)
        if result.returncode == 127 or (result.returncode != 0 and "not found" in stderr):
            raise EnvironmentFailure(
                self.name, f"there is no {python!r} on {self.host} (exit code {result.returncode})",
                hint=f"install Python >= {'.'.join(map(str, MIN_PYTHON))} there (apt-get install python3) "
                     "or make it reachable on the PATH of non-interactive ssh sessions "
                     f"(check: ssh {self.host} {python} -V), or give its full path",
                log_tail=tail_lines(stderr, 8))
        info = None
        for line in (result.stdout or "").splitlines():
            if line.startswith(probe_module.PROBE_MARK):
                try:
                    info = json.loads(line[len(probe_module.PROBE_MARK):])
                except ValueError:
                    info = None
        if result.returncode != 0 or not isinstance(info, dict):
            raise EnvironmentFailure(
                self.name, f"probing {python!r} on {self.host} failed (exit code {result.returncode})",
                hint=f"run it by hand: ssh {self.host} {python} -c 'import pytest, pytest_benchmark'",
                log_tail=tail_lines(stderr + "\n" + (result.stdout or ""), 8))
        version = tuple(info.get("version") or ())
        if version < MIN_PYTHON:
            raise EnvironmentFailure(
                self.name, f"{python!r} on {self.host} is Python {'.'.join(map(str, version))}; "
                           f"the agent needs {'.'.join(map(str, MIN_PYTHON))} or newer",
                hint="install a newer python3 there and point the ssh environment at it")
        missing = [name.replace("_", "-") for name, found in (info.get("modules") or {}).items() if not found]
        if missing:
            errors = info.get("import_errors") or {}
            raise EnvironmentFailure(
                self.name, f"{info.get('executable') or python} on {self.host} cannot import "
                           f"{' and '.join(missing)}",
                hint=f"on the target: {python} -m pip install pytest pytest-benchmark "
                     f"(for example: ssh {self.host} {python} -m pip install --user pytest pytest-benchmark)",
                log_tail="\n".join(f"{k}: {v}" for k, v in errors.items()))
        if not info.get("home"):
            raise EnvironmentFailure(self.name, f"cannot tell the home directory on {self.host}",
                                     hint="the remote user needs a home directory (for ~/.cache)")
        return info

    def connection_failure(self, stderr: str) -> EnvironmentFailure:
        text = stderr.lower()
        tail = tail_lines(stderr, 8)
        if "could not resolve hostname" in text or "name or service not known" in text:
            what = f"ssh does not know the host {self.host!r}"
            if self.ssh_config is not None:
                what += f" (looked in {self.ssh_config})"
        elif "permission denied" in text or "too many authentication failures" in text:
            what = f"ssh {self.host} was refused: authentication failed (BatchMode: no password prompts)"
        elif "host key verification failed" in text or "remote host identification has changed" in text:
            what = f"ssh {self.host} refused the host key"
        elif any(s in text for s in ("connection refused", "timed out", "no route to host", "network is unreachable",
                                     "connection closed", "connection reset")):
            what = f"cannot reach {self.host!r} (is the machine up and its sshd running?)"
        else:
            what = f"ssh {self.host} failed (exit code 255)"
        return EnvironmentFailure(self.name, what, hint=CONFIG_HINTS, log_tail=tail)
