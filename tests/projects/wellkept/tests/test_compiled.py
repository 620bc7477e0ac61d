import sys

import hp_wellkept

RECORDS = [{"id": i, "name": f"item-{i}", "tags": ["a", "b"], "price": i * 1.5} for i in range(200)]


def test_round_trip(benchmark):
    # The C extension, not msgpack's pure-Python fallback: that would be other code.
    assert "msgpack._cmsgpack" in sys.modules, sorted(m for m in sys.modules if m.startswith("msgpack"))
    assert benchmark(hp_wellkept.round_trip, RECORDS) == RECORDS
