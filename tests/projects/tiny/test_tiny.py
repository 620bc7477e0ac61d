"""A tiny benchmark project the docker/qemu tests run through the agent."""


def _work() -> int:
    return sum(i * i for i in range(1000))


def test_sum_squares(benchmark):
    assert benchmark(_work) == 332833500
