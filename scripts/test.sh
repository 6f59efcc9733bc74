#!/usr/bin/env bash
# The test command of the README: lint, then the whole test suite (slow tests included).
# The suite runs with runtime type checks of every focuslens function (jaxtyping shapes and
# all other annotations, checked by beartype), except the tests marked bad_input, which pass
# wrongly typed arguments on purpose to check focuslens's own error messages: they run in a
# second, unchecked pass.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
ruff check focuslens tests benchmarks notebooks scripts
ruff format --check focuslens tests benchmarks notebooks scripts
python3 -m pytest --jaxtyping-packages=focuslens,beartype.beartype -m "not bad_input" "$@"
# (exit 5: a selection given in "$@" holds no bad_input test)
python3 -m pytest -m bad_input "$@" || [ $? -eq 5 ]
