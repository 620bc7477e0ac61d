from pathlib import Path

import hp_srclayout

PROJECT = Path(__file__).resolve().parent.parent


def test_checksum(benchmark):
    # The module must be the project's own file, in whatever environment this runs.
    assert Path(hp_srclayout.__file__).resolve() == PROJECT / "src/hp_srclayout/__init__.py", hp_srclayout.__file__
    assert hp_srclayout.ORIGIN == "hostperf test project: srclayout"
    assert benchmark(hp_srclayout.checksum, 2000) > 0
