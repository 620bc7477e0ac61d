"""The ssh environment: the agent on an existing machine reached with OpenSSH.

* :mod:`.client`: ssh command lines, one-shot commands, the probe of the target's Python;
* :mod:`.transport`: the agent's stdin/stdout over one ssh connection;
* :mod:`.environment`: :class:`SshEnvironment`: shipping, the agent, cleaning up.
"""

from __future__ import annotations

from pytest_hostperf.agent.protocol import TOKEN_VAR
from pytest_hostperf.environments.ssh.client import SshClient, interpreter_word, shell_command
from pytest_hostperf.environments.ssh.environment import SshEnvironment
from pytest_hostperf.environments.ssh.transport import SshTransport

__all__ = ["TOKEN_VAR", "SshClient", "SshEnvironment", "SshTransport", "interpreter_word", "shell_command"]
