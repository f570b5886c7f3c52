#!/usr/bin/env bash
# The main job: a small walk-forward XGBoost sweep on the built-in sample data, logged to the
# local MLflow store (sqlite:///mlflow.db unless MLFLOW_TRACKING_URI says otherwise), then one
# watcher pass that ranks and tags the trials, then the resulting leaderboard.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=true GIT_PYTHON_REFRESH=quiet
.venv/bin/python -m trainer train --config config/trainer.yaml "$@"
.venv/bin/python -m watcher --once --config config/watcher.yaml --log-format console
.venv/bin/python scripts/leaderboard.py --config config/watcher.yaml
