#!/usr/bin/env bash
# Set up a fresh virtual environment with the test extra, then lint and run the whole test suite (CPU, offline).
# Usage: bash tests/run.sh [pytest arguments]      (.ci/run calls it; the venv is ./.venv)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
source .venv/bin/activate
# The CPU wheel of torch first, so that the package's `torch>=` requirement installs nothing more.
python -m pip install torch==2.13.0
python -m pip install -e ".[test]"
ruff check .
python -m pytest -q tests "$@"
