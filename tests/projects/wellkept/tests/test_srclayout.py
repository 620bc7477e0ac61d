from pathlib import Path

import hp_wellkept

PROJECT = Path(__file__).resolve().parent.parent


def test_checksum(benchmark):
    # The module must be the project's own file, in whatever environment this runs.
    assert Path(hp_wellkept.__file__).resolve() == PROJECT / "src/hp_wellkept/__init__.py", hp_wellkept.__file__
    assert hp_wellkept.ORIGIN == "hostperf test project: wellkept"
    assert benchmark(hp_wellkept.checksum, 2000) > 0
