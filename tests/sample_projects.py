"""Small pytest-benchmark projects that the end-to-end tests run through pytester."""

# One CPU-bound test (one item per environment) and one that writes files in
# hostperf_dir (one item per environment and mount).
CPU_AND_FILES = """
def spin(count):
    total = 0
    for i in range(count):
        total += i % 7
    return total

def test_cpu(benchmark):
    benchmark.pedantic(spin, args=(200_000,), rounds=5, iterations=1, warmup_rounds=1)

def test_files(benchmark, hostperf_dir):
    def write_read():
        for i in range(20):
            (hostperf_dir / f"f{i}").write_bytes(b"x" * 256)
        return sum(len(p.read_bytes()) for p in hostperf_dir.iterdir())
    assert benchmark(write_read) == 20 * 256
"""
