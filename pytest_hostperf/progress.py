"""Progress lines: one reporter object for the session, the backends, the image builders.

Library code never prints: it tells a :class:`Reporter`, and whoever made the reporter
decides where the line goes (pytest's terminal in a session, stdout in the ``hostperf``
command, nowhere in a unit test). Stdlib only.
"""

from __future__ import annotations

from typing import Callable

Sink = Callable[[str], None]


def _discard(line: str) -> None:
    return None


class Reporter:
    """Writes ``"<prefix>: <text>"`` lines to a sink; :meth:`child` narrows the prefix.

    ``Reporter(print)`` prints ``hostperf: ...``; ``reporter.child("qemu")`` prints
    ``hostperf: qemu: ...``, so every line says which part of the tool it comes from.
    """

    def __init__(self, sink: Sink | None = None, prefix: str = "hostperf") -> None:
        self._sink: Sink = sink or _discard
        self.prefix = prefix

    def step(self, text: str) -> None:
        """A progress line: what is happening now (building, booting, ready in N s)."""
        self._sink(f"{self.prefix}: {text}")

    def warn(self, text: str) -> None:
        """Something the user should know that does not stop the session."""
        self._sink(f"{self.prefix}: WARNING: {text}")

    def child(self, name: str) -> Reporter:
        return Reporter(self._sink, f"{self.prefix}: {name}")

    def __call__(self, text: str) -> None:
        """A raw line, as the old ``progress(line)`` callables took it."""
        self._sink(text)


#: A reporter that drops everything (the default of library functions).
SILENT = Reporter()
