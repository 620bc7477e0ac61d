"""pytest-hostperf: environment-aware performance regression testing.

The package is imported inside containers and VMs by the agent, so this module (and
everything the agent imports) must stay free of heavy or optional dependencies.

PYTEST_DONT_REWRITE: the agent imports this package before it starts pytest, and pytest
warns about an installed plugin's package it can no longer rewrite (a project with
``filterwarnings = error`` then fails to start). Nothing here uses ``assert``.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
