#!/usr/bin/env bash
# The test command of the README: lint, then the whole test suite (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
ruff check focuslens tests benchmarks notebooks scripts
ruff format --check focuslens tests benchmarks notebooks scripts
python3 -m pytest "$@"
