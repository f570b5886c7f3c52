#!/usr/bin/env bash
# The main job: a small walk-forward XGBoost sweep on the built-in sample data, logged to the
# local MLflow store (sqlite:///mlflow.db unless MLFLOW_TRACKING_URI says otherwise), then one
# watcher pass that ranks and tags the trials, then the resulting leaderboard and how to open the
# MLflow UI and the dashboard on that store.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=true GIT_PYTHON_REFRESH=quiet
.venv/bin/python -m trainer train --config config/trainer.yaml "$@"
.venv/bin/python -m watcher --once --config config/watcher.yaml --log-format console
.venv/bin/python scripts/leaderboard.py --config config/watcher.yaml

store="${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}"
echo
case "$store" in
  http://* | https://*)
    echo "MLflow UI: open $store" ;;
  *)
    echo "MLflow UI (then open http://127.0.0.1:5000):"
    echo "  .venv/bin/mlflow ui --backend-store-uri $store --port 5000" ;;
esac
echo "Dashboard (the watcher as a daemon on the same store; then open http://127.0.0.1:8265/, Ctrl-C stops it):"
echo "  .venv/bin/python -m watcher --config config/watcher.yaml"
