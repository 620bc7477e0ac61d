"""Which invocation options agents get (pytest_hostperf.forwarding): pure, reference answers by hand."""

from __future__ import annotations

import pytest

from pytest_hostperf.forwarding import forwarded_options


@pytest.mark.parametrize(("args", "expected"), [
    # a conftest's own option, warnings filters, ini overrides and plugins hold inside
    (["--size=77", "-W", "error::ResourceWarning", "-o", "xfail_strict=true", "-p", "myplugin"],
     ["--size=77", "-W", "error::ResourceWarning", "-o", "xfail_strict=true", "-p", "myplugin"]),
    (["--size", "77", "tests/test_a.py"], ["--size", "77"]),
    (["--timeout=5", "--import-mode=importlib", "--strict-markers"],
     ["--timeout=5", "--import-mode=importlib", "--strict-markers"]),
    # selection, stopping and output are the controller's
    (["-x", "-v", "-k", "cpu and not io", "-m", "slow", "--maxfail=2", "-rA", "--tb", "short", "-vx", "-qq"], []),
    (["--lf", "--junitxml", "out.xml", "--durations=5", "--co", "--pdb", "-s", "--capture=no"], []),
    # hostperf's and pytest-benchmark's options, with or without '=' values, and the flags among them
    (["--hostperf", "--hostperf-envs", "native,docker", "--hostperf-save", "--benchmark-max-time=0.5",
      "--benchmark-json", "out.json", "--size=3"], ["--size=3"]),
    # the agent runs xdist with -n 0 and gets randomly's seed explicitly; a conftest may read -p myplugin
    (["-n", "0", "-n4", "--dist=load", "-p", "no:randomly", "-p", "xdist", "-pno:cacheprovider", "--randomly-seed",
      "last"], []),
    # the rootdir, the ini file and the basetemp are the agent's own; everything after -- is a path
    (["--rootdir=/x", "-c", "tox.ini", "--basetemp", "/tmp/b", "--", "-weird-file.py"], []),
])
def test_forwarded_options(args: list[str], expected: list[str]) -> None:
    assert forwarded_options("", args, ["tests/test_a.py"]) == expected


def test_addopts_come_first_and_test_paths_are_dropped_wherever_they_are() -> None:
    assert forwarded_options("-W error --size=5", ["tests", "--size=6", "tests/test_b.py::test_x"],
                             ["tests", "tests/test_b.py::test_x"]) == ["-W", "error", "--size=5", "--size=6"]


def test_pytest_randomlys_seed_is_forwarded_when_it_is_active() -> None:
    assert forwarded_options("", ["-p", "randomly"], [], randomly_seed=123) == [
        "-p", "randomly", "--randomly-seed=123"]
