from pathlib import Path

import cpuinfo

PROJECT = Path(__file__).resolve().parent.parent
FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 " * 20


def test_parse_flags(benchmark):
    # py-cpuinfo from site-packages would have no ORIGIN and live elsewhere.
    assert Path(cpuinfo.__file__).resolve() == PROJECT / "src/cpuinfo/__init__.py", cpuinfo.__file__
    assert getattr(cpuinfo, "ORIGIN", None) == "hostperf test project: wellkept (cpuinfo)"
    assert "sse2" in benchmark(cpuinfo.parse_flags, FLAGS)
