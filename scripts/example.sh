#!/usr/bin/env bash
# Set up (scripts/setup.sh), build the docker image and VM disk (cached after the first
# run), then run the example project's benchmarks natively, in Docker and in QEMU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cd example_project
exec python3 -m pytest --hostperf --hostperf-envs=native,docker,qemu "$@"
