"""The code under test of the well-kept test project."""

import msgpack

#: Tells the project's own module from anything else of the same name.
ORIGIN = "hostperf test project: wellkept"


def checksum(count: int) -> int:
    return sum((i * 7919) % 104729 for i in range(count))


def round_trip(records: list) -> list:
    return msgpack.unpackb(msgpack.packb(records))


def histogram(text: str) -> dict:
    counts: dict = {}
    for char in text:
        counts[char] = counts.get(char, 0) + 1
    return counts
