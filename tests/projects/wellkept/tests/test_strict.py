import hp_wellkept

TEXT = "the quick brown fox jumps over the lazy dog " * 50


def test_histogram(benchmark, hostperf_dir):
    (hostperf_dir / "text").write_text(TEXT)  # a file the test must close itself, or it is an error here
    assert benchmark(hp_wellkept.histogram, TEXT)["o"] == 200
