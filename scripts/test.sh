#!/usr/bin/env bash
# Set up (scripts/setup.sh), lint (ruff, mypy), then run the whole test suite with real Docker and QEMU.
# Under CI (CI=true) a missing engine or VM is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${CI:-}" = true ]; then
    export HOSTPERF_REQUIRE_DOCKER=1 HOSTPERF_REQUIRE_QEMU=1
fi
# Lint and types first (seconds): configured in pyproject.toml.
python3 -m ruff check .
python3 -m mypy
# --durations: the slowest tests are named in every CI log (the suite must stay well under 30 minutes).
# -m "not extended": slow fallback paths that CI's machine does not take (README, Development).
exec python3 -m pytest tests -p no:cacheprovider -ra --durations=25 -m "not extended" "$@"
