"""Fixtures shared by the test modules that drive real engines."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pytest_hostperf import images
from pytest_hostperf.environments.base import EnvironmentFailure

TINY = Path(__file__).parent / "projects" / "tiny"


@pytest.fixture(scope="session")
def engine() -> Any:
    """The Docker engine; skipped without one unless HOSTPERF_REQUIRE_DOCKER (CI) is set."""
    from pytest_hostperf.environments.docker import connect

    try:
        return connect()
    except EnvironmentFailure as exc:
        if os.environ.get("HOSTPERF_REQUIRE_DOCKER"):
            pytest.fail(f"HOSTPERF_REQUIRE_DOCKER is set but: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def project_image(engine: Any) -> images.ImageRef:
    # Builds the base too when the engine does not have it yet (about a minute, once).
    return images.ensure_image(engine, TINY)
