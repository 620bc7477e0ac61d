"""JSON export and import of catalog records."""

from __future__ import annotations

import json
from typing import Any


def records(n: int) -> list[dict[str, Any]]:
    return [{"sku": f"SKU{i:05d}", "name": f"Product {i}", "tags": ["a", "b", str(i % 7)],
             "price": {"amount": 199 + i % 5000, "currency": "EUR"}, "stock": i % 13} for i in range(n)]


def roundtrip(data: list[dict[str, Any]]) -> int:
    text = json.dumps(data, sort_keys=True)
    return len(json.loads(text))
