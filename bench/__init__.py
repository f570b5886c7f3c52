"""Podium's benchmarks (run them all with scripts/bench.sh; figures go to BENCHMARKS.md)."""

import os

# Before mlflow is imported anywhere: no retries with back-off, no URL printing.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "1800")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("MPLBACKEND", "Agg")
# The servers we start: MLflow's job runner (huey consumers for GenAI jobs) serves nothing the
# tracking API needs here and only adds background processes competing for the 2 cores.
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
