"""The wire protocol between the controller (inside pytest) and an agent.

One message per line: a fixed prefix, then a JSON object. The prefix lets both sides
skip noise on channels that carry other output too (a VM serial port, an SSH banner).
Only plain JSON values cross the boundary, as in pytest-xdist.

Controller -> agent ("op"):
  {"op": "run", "nodeid": str, "mount": str, "mount_path": str|null,
   "benchmark_options": {..}, "target": {"env": str, "mount": str}}
  {"op": "reference", "rounds": int}   time the built-in reference workload (host drift)
  {"op": "ping"}
  {"op": "shutdown"}
Agent -> controller ("event"):
  {"event": "ready", "protocol": int, "fingerprint": {..}, "collected": [nodeid, ..],
   "collect_errors": [str, ..], "modules": {top-level name: origin, ..}}   (see agent.origins)
  {"event": "result", "nodeid": str, "outcome": "passed"|"failed"|"skipped"|"error",
   "reports": [serialized TestReport, ..], "samples": [float, ..] | null,
   "iterations": int|null, "duration_s": float, "modules": {..} (only modules first imported by this run)}
  {"event": "reference", "samples": [float, ..]}
  {"event": "pong"}
  {"event": "fatal", "message": str}
This module is stdlib-only: it is imported inside every environment.
"""

from __future__ import annotations

import json
from typing import Any, Final

PROTOCOL_VERSION: Final = 1
PREFIX: Final = b"@@hostperf@@ "


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
