"""The code under test of the compiled-dependency test project."""

import msgpack

ORIGIN = "hostperf test project: compiled"


def round_trip(records: list) -> list:
    return msgpack.unpackb(msgpack.packb(records))
