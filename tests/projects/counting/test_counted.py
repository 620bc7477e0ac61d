"""Benchmarks whose instruction counts have known relations (tests/test_instructions_agent.py)."""

import itertools
import time

import pytest


def loop(n):
    # The same work every iteration: no int above 256 is created (CPython caches those),
    # so twice the iterations cost exactly twice the loop.
    total, x = 0, 3
    for _ in itertools.repeat(None, n):
        total ^= x * 7 % 13
    return total + 1


@pytest.fixture(scope="module")
def after_heavy_setup():
    loop(300_000)  # ~100x a counted call: it would show if fixtures were counted
    return 2000


@pytest.mark.parametrize("n", [2000, 4000])
def test_loop(benchmark, n):
    assert benchmark(loop, n) > 0


def test_loop_after_heavy_fixture(benchmark, after_heavy_setup):
    assert benchmark(loop, after_heavy_setup) > 0


def test_pedantic_setup_is_not_counted(benchmark):
    def setup():
        loop(300_000)
        return (2000,), {}

    assert benchmark.pedantic(loop, setup=setup, rounds=3) > 0


def test_sleep(benchmark):
    benchmark(time.sleep, 0.002)


def test_fails_after_counting(benchmark):
    assert benchmark(loop, 2000) < 0


def test_never_calls_benchmark(benchmark):
    assert benchmark is not None


def test_dict_build(benchmark):
    # Allocation-heavy: the first call after a garbage collection sorts the freed chunks
    # into the allocator's bins and counted 6.5% more than later calls (a biased block A).
    assert len(benchmark(lambda k: {f"key{i}": i for i in range(k)}, 5000)) == 5000
