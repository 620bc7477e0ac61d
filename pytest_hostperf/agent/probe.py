# Probe of an ssh target's Python: what the agent needs there, as one marked JSON line.
#
# The ssh backend sends this file's source as ``python3 -c SOURCE`` before anything is
# shipped to the target, and reads the line that starts with PROBE_MARK (shell rc files
# may print banners on stdout, hence the mark). The syntax stays old-Python-safe (no
# annotations, no f-strings, no __future__ import) so that a too old interpreter is
# reported as such by the version check, not as a SyntaxError. Stdlib only.
"""What an ssh target's interpreter is and whether it can import pytest and pytest-benchmark."""

import json
import os
import platform
import shutil
import sys

PROBE_MARK = "@@hostperf-probe@@ "
REQUIRED_MODULES = ("pytest", "pytest_benchmark")


def collect():
    """The interpreter's version, path, home directory, tar, and the required modules."""
    modules = {}  # type: dict
    errors = {}  # type: dict
    for name in REQUIRED_MODULES:
        try:
            module = __import__(name)
            modules[name] = str(getattr(module, "__version__", "?"))
        except Exception as exc:  # noqa: BLE001 - any import failure is what we report
            modules[name] = None
            # %-formatting: the target's python may predate f-strings
            errors[name] = "%s: %s" % (type(exc).__name__, exc)  # noqa: UP031
    info = {"version": list(sys.version_info[:3]), "executable": sys.executable,
            "home": os.path.expanduser("~"), "platform": platform.platform(),
            "tar": shutil.which("tar") if hasattr(shutil, "which") else None, "modules": modules}
    if errors:
        info["import_errors"] = errors
    return info


if __name__ == "__main__":
    sys.stdout.write(PROBE_MARK + json.dumps(collect()) + "\n")
