"""The only package of the watcher that talks to MLflow: it reads and writes calls, and
decides nothing.

``client``: tracking calls (experiments, runs, tags, metric history, artifacts), each counted
and its errors turned into :class:`watcher.errors.TrackingError`; ``registry``: Model Registry
calls and the handlers' experiment tags; ``filters``: MLflow's search grammar. What turns a
plan into these calls is :mod:`watcher.writer`, above this package.
"""

from watcher.mlflow_io.client import (
    CLIENT_ENVIRONMENT,
    EXPERIMENT_BATCH,
    MAX_PAGE,
    MlflowTracking,
    TagListener,
    lower_client_retries,
)
from watcher.mlflow_io.filters import check_run_filter, glob_to_like
from watcher.mlflow_io.registry import MlflowRegistry

__all__ = [
    "CLIENT_ENVIRONMENT",
    "EXPERIMENT_BATCH",
    "MAX_PAGE",
    "MlflowRegistry",
    "MlflowTracking",
    "TagListener",
    "check_run_filter",
    "glob_to_like",
    "lower_client_retries",
]
