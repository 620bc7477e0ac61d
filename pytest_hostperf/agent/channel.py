"""The agent's end of the wire: protocol on private copies of fd 0/1.

The test body, pytest and anything they start must never write into the protocol
stream, so the real stdin/stdout are moved aside at start-up: fd 1 then points at the
agent's stderr (the environment's log) and fd 0 at /dev/null.
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO

from pytest_hostperf.agent import protocol


class AgentChannel:
    def __init__(self, reader: BinaryIO, writer: BinaryIO) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    def from_stdio(cls) -> AgentChannel:
        reader = os.fdopen(os.dup(0), "rb", buffering=0)
        writer = os.fdopen(os.dup(1), "wb", buffering=0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(2, 1)
        return cls(reader, writer)

    @classmethod
    def from_device(cls, path: str) -> AgentChannel:
        """A serial/virtio port: one file opened for reading and writing."""
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        return cls(os.fdopen(fd, "rb", buffering=0), os.fdopen(os.dup(fd), "wb", buffering=0))

    def close(self) -> None:
        """Release both ends; idempotent (an unclosed file is a ResourceWarning at exit)."""
        for stream in (self._reader, self._writer):
            try:
                stream.close()
            except OSError:
                pass

    def send(self, message: dict[str, Any]) -> None:
        # An unbuffered write may take only part of the data (a virtio port takes 32 KiB
        # at a time; a result with thousands of samples is ~100 KB): loop until all is out.
        data = memoryview(protocol.encode(message))
        while data:
            written = self._writer.write(data)
            data = data[written or 0:]
        self._writer.flush()

    def receive(self) -> dict[str, Any] | None:
        """The next request, or None when the controller closed the channel."""
        while True:
            line = self._readline()
            if not line:
                return None
            message = protocol.decode(line)
            if message is not None:
                return message

    def _readline(self) -> bytes:
        # Byte-wise on an unbuffered file: a buffered reader could swallow bytes that a
        # later select() on the same fd would then never see.
        chunks: list[bytes] = []
        while True:
            byte = self._reader.read(1)
            if not byte:
                return b"".join(chunks)
            chunks.append(byte)
            if byte == b"\n":
                return b"".join(chunks)
