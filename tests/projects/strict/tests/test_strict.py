from pathlib import Path

import hp_strict

PROJECT = Path(__file__).resolve().parent.parent
TEXT = "the quick brown fox jumps over the lazy dog " * 50


def test_histogram(benchmark, hostperf_dir):
    assert Path(hp_strict.__file__).resolve() == PROJECT / "src/hp_strict/__init__.py", hp_strict.__file__
    (hostperf_dir / "text").write_text(TEXT)  # a file the test must close itself, or it is an error here
    assert benchmark(hp_strict.histogram, TEXT)["o"] == 200
