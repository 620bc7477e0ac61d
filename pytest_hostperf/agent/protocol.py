"""The wire protocol between the controller (inside pytest) and an agent.

One message per line: a fixed prefix, then a JSON object. The prefix lets both sides
skip noise on channels that carry other output too (a VM serial port, an SSH banner).
Only plain JSON values cross the boundary, as in pytest-xdist.

Controller -> agent ("op"):
  {"op": "run", "nodeid": str, "mount": str, "mount_path": str|null,
   "benchmark_options": {..}, "target": {"env": str, "mount": str}}
  {"op": "count", "nodeid": str, "mount": str, "mount_path": str|null, "target": {..},
   "target_instructions": int (optional)}   only to an agent started under callgrind
   (pytest_hostperf.counting.counting_argv): the test runs once more, benchmark(...)
   counts instructions per call instead of timing (agent/count_benchmark.py)
  {"op": "reference", "rounds": int}   time the built-in reference workload (host drift)
  a "run" with "hold": true holds the item: "holding", then "half" ops until "release" (agent/hold.py)
  {"op": "ping"}
  {"op": "shutdown"}
Agent -> controller ("event"):
  {"event": "ready", "protocol": int, "fingerprint": {..}, "collected": [nodeid, ..],
   "collect_errors": [str, ..], "modules": {top-level name: origin, ..}}   (see agent.origins)
  {"event": "result", "nodeid": str, "outcome": "passed"|"failed"|"skipped"|"error",
   "reports": [serialized TestReport, ..], "samples": [float, ..] | null,
   "iterations": int|null, "duration_s": float, "modules": {..} (only modules first imported by this run),
   "held_halves": int (a held run: the halves it served)}
     a "count" result also has "instructions": {"per_call": float, "noise": float,
     "calls_per_block": int, "probe": int, "blocks": [int, int], "noop": int,
     "duration_s": float} | null, "instructions_reason": str (when null), and
     "software": {..} (agent/count_fingerprint.py); a process that cannot count answers
     outcome "skipped" with only the reason
  {"event": "reference", "samples": [float, ..]}
  {"event": "pong"}
  {"event": "fatal", "message": str}
Inside a VM, two more markers travel on the agent's port before the agent exists: the
guest bootstrap's hello (:data:`BOOT_MARKER`) and the controller's launch message
(:data:`LAUNCH_PREFIX`); see :mod:`pytest_hostperf.agent.boot`.

This module is stdlib-only: it is imported inside every environment (and copied onto
VM disks for the guest bootstrap).
"""

from __future__ import annotations

import json
from typing import Any, Final

PROTOCOL_VERSION: Final = 1
PREFIX: Final = b"@@hostperf@@ "
#: The guest bootstrap's first line on the VM's agent port, then a JSON object.
BOOT_MARKER: Final = b"@@hostperf-boot@@ "
#: The controller's one line to the guest bootstrap: what to mount and how to start the agent.
LAUNCH_PREFIX: Final = b"@@hostperf-launch@@ "
#: Name of the virtio-serial port that carries the protocol in and out of a VM.
AGENT_PORT_NAME: Final = "hostperf.agent"
#: Environment variable that marks an agent process, so a killer can find exactly it.
TOKEN_VAR: Final = "HOSTPERF_AGENT_TOKEN"
#: The longest line a reader accepts (a result with many samples is ~100 KB); beyond
#: it the other side is broken or hostile, and buffering more would only eat memory.
MAX_LINE_BYTES: Final = 64 * 1024 * 1024


class ProtocolError(Exception):
    """A line that claims to be a protocol message but cannot be decoded."""


def encode(message: dict[str, Any]) -> bytes:
    """One message as a single prefixed line (JSON never contains a raw newline)."""
    return PREFIX + json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any] | None:
    """The message carried by ``line``, or None when the line is other output."""
    start = line.find(PREFIX)
    if start < 0:
        return None
    try:
        message = json.loads(line[start + len(PREFIX):])
    except ValueError as exc:
        raise ProtocolError(f"undecodable protocol line: {line[:200]!r}") from exc
    if not isinstance(message, dict):
        raise ProtocolError(f"protocol message is not an object: {line[:200]!r}")
    return message
