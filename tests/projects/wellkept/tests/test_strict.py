import pytest

import hp_wellkept

TEXT = "the quick brown fox jumps over the lazy dog " * 50


# One mount a host directory in each environment (the strict case is about files and
# sockets, not about every mount: the mount axis has its own tests).
@pytest.mark.hostperf(mounts=["bind", "share"])
def test_histogram(benchmark, hostperf_dir):
    (hostperf_dir / "text").write_text(TEXT)  # a file the test must close itself, or it is an error here
    assert benchmark(hp_wellkept.histogram, TEXT)["o"] == 200
