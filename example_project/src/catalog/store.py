"""sqlite storage and a small-file cache: the I/O side of the catalog."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def load_and_query(db_path: Path, rows: int) -> int:
    with sqlite3.connect(db_path) as db:
        db.execute("DROP TABLE IF EXISTS product")
        db.execute("CREATE TABLE product (sku TEXT PRIMARY KEY, price INTEGER, stock INTEGER)")
        db.executemany("INSERT INTO product VALUES (?, ?, ?)",
                       ((f"SKU{i:05d}", 199 + i % 5000, i % 13) for i in range(rows)))
        db.commit()
        (count,) = db.execute("SELECT count(*) FROM product WHERE stock > 3 AND price < 3000").fetchone()
    return count


def write_cache(directory: Path, files: int, size: int = 512) -> int:
    """Write then read back many small files, as a build or package cache does."""
    payload = b"x" * size
    for i in range(files):
        (directory / f"entry-{i:04d}.bin").write_bytes(payload)
    total = sum(len(p.read_bytes()) for p in directory.iterdir())
    for p in directory.iterdir():
        p.unlink()
    return total
