"""The wellkept test project's `cpuinfo`: it is a checkout of `py-cpuinfo`, not the release.

It keeps py-cpuinfo's one function that pytest-benchmark calls, so pytest-benchmark
still works wherever this package wins.
"""

ORIGIN = "hostperf test project: wellkept (cpuinfo)"


def get_cpu_info() -> dict:
    return {"brand_raw": ORIGIN}


def parse_flags(line: str) -> frozenset:
    return frozenset(word for word in line.split() if word.isidentifier())
