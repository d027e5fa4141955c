#!/usr/bin/env bash
# Set up a fresh virtual environment with mera-mcl (core requirements only), then run the offline demo.
# Usage: bash recipes/demo.sh [mera demo arguments, e.g. --quick]      (the venv is ./.venv)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
source .venv/bin/activate
# The CPU wheel of torch first, so that the package's `torch>=` requirement installs nothing more.
python -m pip install torch==2.13.0
python -m pip install -e .
mera demo "$@"
