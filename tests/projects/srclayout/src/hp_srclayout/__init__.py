"""The code under test of the src-layout test project."""

#: Tells the project's own module from anything else of the same name.
ORIGIN = "hostperf test project: srclayout"


def checksum(count: int) -> int:
    return sum((i * 7919) % 104729 for i in range(count))
