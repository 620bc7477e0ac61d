"""The code under test of the strict test project."""

ORIGIN = "hostperf test project: strict"


def histogram(text: str) -> dict:
    counts: dict = {}
    for char in text:
        counts[char] = counts.get(char, 0) + 1
    return counts
