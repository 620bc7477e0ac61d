"""The built-in environment kinds, provided through the same hooks a plugin uses.

Registered by :mod:`pytest_hostperf.plugin`; ``trylast`` so that a plugin can replace a
built-in kind by answering first. Backends are imported only when one is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import pytest

from pytest_hostperf.options import BUILTIN, BUILTIN_KINDS, EnvironmentKind

if TYPE_CHECKING:
    from pytest_hostperf.environments.base import Environment, EnvironmentContext


def pytest_hostperf_environment_kinds() -> Sequence[EnvironmentKind]:
    return BUILTIN_KINDS


@pytest.hookimpl(trylast=True)
def pytest_hostperf_make_environment(name: str, context: EnvironmentContext) -> Environment | None:
    if name.split(":", 1)[0] not in BUILTIN:
        return None
    from pytest_hostperf.environments.registry import create_backend

    return create_backend(name, context)
