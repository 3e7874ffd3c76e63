#!/usr/bin/env bash
# Build the HTML documentation (API reference, user guide, executed gallery)
# into docs/_build/html; any Sphinx warning is an error.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test,docs
.venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html
