#!/usr/bin/env bash
# Set up the dev environment and run the whole test suite (real MLflow servers on sqlite and
# PostgreSQL at 127.0.0.1:5432; see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
exec .venv/bin/python -m pytest -q --durations=15 --cov --cov-report=term:skip-covered "$@"
