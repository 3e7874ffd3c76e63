#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with the exact
# pins of requirements/constraints.txt, and install skcrnn into it (editable).
# Usage: bash scripts/setup_env.sh [extra ...]   e.g. "test" or "test,docs"
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# torch first, alone and pinned: a loose torch requirement would pull the
# newest CUDA build (several GB) where only a CPU build is wanted.
.venv/bin/python -m pip install --quiet -c requirements/constraints.txt torch
TARGET="."
if [ -n "$EXTRAS" ]; then TARGET=".[${EXTRAS}]"; fi
.venv/bin/python -m pip install --quiet -c requirements/constraints.txt -e "$TARGET"
