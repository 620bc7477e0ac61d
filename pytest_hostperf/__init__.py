"""pytest-hostperf: environment-aware performance regression testing.

The package is imported inside containers and VMs by the agent, so this module (and
everything the agent imports) must stay free of heavy or optional dependencies.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
