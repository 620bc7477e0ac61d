"""CPU-bound pricing: discounts and tax over a basket, pure Python."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Item:
    sku: str
    price_cents: int
    quantity: int
    category: str


RATES = {"food": 0.07, "books": 0.0, "tools": 0.19, "toys": 0.19}


def make_basket(n: int) -> list[Item]:
    categories = sorted(RATES)
    return [Item(f"SKU{i:05d}", 199 + (i * 37) % 5000, 1 + i % 4, categories[i % len(categories)]) for i in range(n)]


def total_cents(basket: list[Item]) -> int:
    subtotal = 0.0
    for item in basket:
        line = item.price_cents * item.quantity
        if item.quantity >= 3:
            line *= 0.9  # bulk discount
        subtotal += line * (1 + RATES[item.category])
    return round(subtotal)
