"""Hooks another package can implement to add an environment kind to pytest-hostperf.

A plugin (an installed package with a ``pytest11`` entry point, or a ``conftest.py``)
declares its kinds and builds their backends::

    from pytest_hostperf.options import EnvironmentKind

    def pytest_hostperf_environment_kinds():
        return [EnvironmentKind("podman-machine", mounts=("bind", "volume"))]

    def pytest_hostperf_make_environment(name, context):
        if name.split(":")[0] == "podman-machine":
            return PodmanMachineEnvironment(context)   # an environments.base.Environment

Then ``--hostperf-envs=native,podman-machine`` is accepted and gives items
``test_x[podman-machine-bind]``. The built-in kinds are implemented the same way
(:mod:`pytest_hostperf.builtin_environments`), as the last implementation asked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import pluggy

if TYPE_CHECKING:
    from pytest_hostperf.environments.base import Environment, EnvironmentContext
    from pytest_hostperf.options import EnvironmentKind

hookspec = pluggy.HookspecMarker("pytest")


@hookspec
def pytest_hostperf_environment_kinds() -> Sequence[EnvironmentKind]:
    """The environment kinds this plugin provides (names users write in ``--hostperf-envs``).

    Called once at configure time; every implementation's kinds are accepted. A name
    another plugin already declared differently is a usage error.
    """
    raise NotImplementedError  # pragma: no cover - a specification


@hookspec(firstresult=True)
def pytest_hostperf_make_environment(name: str, context: EnvironmentContext) -> Environment | None:
    """Build the backend for environment ``name`` (e.g. ``docker``, ``ssh:box``), or None.

    ``context`` carries the session's settings, id, private work dir and reporter. The
    first non-None result is used; raise
    :class:`~pytest_hostperf.environments.base.EnvironmentFailure` to say why the
    environment cannot exist here (its items are then skipped, or fail under
    ``--hostperf-require``).
    """
    raise NotImplementedError  # pragma: no cover - a specification
