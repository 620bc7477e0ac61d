"""Fixtures of the fault-injection suite (see faultkit.py for what each test asserts)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from faultkit import FaultProject


@pytest.fixture
def project(tmp_path: Path) -> Iterator[FaultProject]:
    """A fresh project with a private TMPDIR; the sessions' leftovers are checked by the test."""
    made = FaultProject(tmp_path / "project")
    yield made
    made.cleanup()
