import sys
from pathlib import Path

import hp_compiled
import msgpack

PROJECT = Path(__file__).resolve().parent.parent
RECORDS = [{"id": i, "name": f"item-{i}", "tags": ["a", "b"], "price": i * 1.5} for i in range(200)]


def test_round_trip(benchmark):
    assert Path(hp_compiled.__file__).resolve() == PROJECT / "src/hp_compiled/__init__.py", hp_compiled.__file__
    # The C extension, not msgpack's pure-Python fallback: that would be other code.
    assert "msgpack._cmsgpack" in sys.modules, sorted(m for m in sys.modules if m.startswith("msgpack"))
    assert benchmark(hp_compiled.round_trip, RECORDS) == RECORDS
