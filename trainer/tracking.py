"""The trainer's only door to MLflow.

A trial costs 9 tracking calls: ``create_run`` (parent process); the model, logged first
(create_logged_model, then the xgboost flavor through ``Model.log``: get_logged_model, log_outputs,
get_run, get_logged_model, finalize); one ``log_batch`` with every param, metric and tag; and
``set_terminated``.
Artifact files go straight to the run's artifact store, apart from the count.
Every MLflow exception leaves this module as ``TrackingError``.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import mlflow.xgboost
import numpy as np
import pandas as pd
import xgboost as xgb
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature, infer_signature
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from mlflow.tracking.context.registry import resolve_tags

from trainer.errors import TrackingError
from trainer.keys import MAX_PARAM_LENGTH

# Requirements of the logged model, given so MLflow does not infer them in a subprocess.
MODEL_REQUIREMENTS = [f"xgboost=={xgb.__version__}", "pandas", "numpy"]
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


@contextmanager
def _kept_tracking_env() -> Iterator[None]:
    """Leave ``MLFLOW_TRACKING_URI`` as it was: when no URI was set in code,
    ``_use_tracking_uri`` restores "none", and MLflow then deletes the variable."""
    before = os.environ.get(TRACKING_URI_ENV)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TRACKING_URI_ENV, None)
        else:
            os.environ[TRACKING_URI_ENV] = before


def _save_xgboost(*, validate_serving_input: bool = True, **kwargs: Any) -> None:
    # Model.log hands its extra arguments to the flavor's save_model, and mlflow.xgboost passes
    # the ones it does not know on to Booster.save_model: take Model.log's own flag off first.
    mlflow.xgboost.save_model(**kwargs)


# mlflow.xgboost as Model.log sees a flavor: its name and its save_model.
_XGBOOST_FLAVOR = SimpleNamespace(__name__="mlflow.xgboost", save_model=_save_xgboost)


@contextmanager
def _wrapped(action: str) -> Iterator[None]:
    try:
        yield
    except TrackingError:
        raise
    except (MlflowException, OSError, ConnectionError) as e:
        raise TrackingError(f"{action} failed: {_one_line(e)}") from e
    except Exception as e:  # the REST client raises requests' and urllib3's errors too
        if type(e).__module__.split(".")[0] in ("requests", "urllib3", "sqlalchemy"):
            raise TrackingError(f"{action} failed: {_one_line(e)}") from e
        raise


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def quiet_mlflow() -> None:
    """Silence MLflow's per-call chatter (progress and links are reported by the trainer).

    MLflow prints each finished run's URL to stdout, fetching the run for it: one more call.
    """
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # downloads in retrain


class Tracking:
    """MLflow tracking for one sweep, usable from the parent and from worker processes."""

    def __init__(self, uri: str | None = None) -> None:
        self.uri = uri or mlflow.get_tracking_uri()
        self.client = MlflowClient(self.uri)
        self._signatures: dict[tuple[Any, ...], ModelSignature] = {}

    def ensure_experiment(self, name: str) -> str:
        """Id of experiment ``name``, created if missing (restored if deleted)."""
        with _wrapped(f"finding experiment {name!r} at {self.uri}"):
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                try:
                    return self.client.create_experiment(name)
                except MlflowException:
                    # another process created it between our two calls
                    exp = self.client.get_experiment_by_name(name)
                    if exp is None:
                        raise
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return str(exp.experiment_id)

    @staticmethod
    def context_tags() -> dict[str, str]:
        """MLflow's own source/user tags (``mlflow.user``, ``mlflow.source.name``, ...)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: str(v) for k, v in resolve_tags({}).items()}

    def create_run(self, experiment_id: str, run_name: str, tags: Mapping[str, str]) -> tuple[str, str]:
        """Start a RUNNING run; returns (run id, artifact URI)."""
        with _wrapped(f"creating run {run_name!r}"):
            run = self.client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
            return run.info.run_id, run.info.artifact_uri

    def log_model(self, experiment_id: str, run_id: str, model: xgb.Booster, example: pd.DataFrame) -> None:
        """What ``mlflow.xgboost.log_model(model, name="model")`` logs, with signature and input
        example.

        The LoggedModel is created here, in the run's experiment: left to itself, log_model
        puts it in MLflow's default experiment ("0") unless a fluent experiment is active.
        """
        with _wrapped(f"logging the model of run {run_id}"):
            prediction = np.asarray(model.inplace_predict(example.to_numpy(dtype="float32")))
            signature = self._signature(example, prediction)
            logged = self.client.create_logged_model(
                experiment_id, name="model", source_run_id=run_id, tags=self._context_tags
            )
            # log_model resolves MLflow's global URI; set it only for this call, so a sweep
            # run in-process (--jobs 1, tests) leaves the caller's MLflow state as it was
            with _kept_tracking_env(), _use_tracking_uri(self.uri), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # What mlflow.xgboost.log_model does, less MLflow's check of the input example
                # (it reloads the saved model as pyfunc and predicts it, ~0.35 s per trial):
                # the prediction above already ran this booster on this example.
                Model.log(
                    artifact_path=None,
                    name="model",
                    flavor=_XGBOOST_FLAVOR,
                    xgb_model=model,
                    signature=signature,
                    input_example=example,
                    pip_requirements=MODEL_REQUIREMENTS,
                    run_id=run_id,
                    model_id=logged.model_id,
                    validate_serving_input=False,
                )

    @functools.cached_property
    def _context_tags(self) -> dict[str, str]:
        return self.context_tags()

    def _signature(self, example: pd.DataFrame, prediction: np.ndarray) -> ModelSignature:
        """``infer_signature(example, prediction)``, inferred once per shape: it reads the
        columns' names and types, which of them hold a missing value (those are not required),
        and the prediction's type and shape, which every trial of a sweep shares."""
        key = (
            tuple(example.columns),
            tuple(map(str, example.dtypes)),
            tuple(example.isna().any()),
            prediction.dtype.str,
            prediction.shape[1:],
        )
        if key not in self._signatures:
            self._signatures[key] = infer_signature(example, prediction)
        return self._signatures[key]

    def log_batch(
        self,
        run_id: str,
        params: Mapping[str, str],
        metrics: Sequence[tuple[str, float, int]],
        tags: Mapping[str, str],
    ) -> None:
        """Every param, metric ``(key, value, step)`` and tag of a run in one call."""
        now = int(time.time() * 1000)
        with _wrapped(f"logging params and metrics of run {run_id}"):
            self.client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), now, step) for k, v, step in metrics],
                params=[Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()],
                tags=[RunTag(k, str(v)) for k, v in tags.items()],
            )

    def log_artifacts(self, artifact_uri: str, local_dir: Path) -> None:
        """Upload a directory's files to a run's artifact root (no tracking call)."""
        with _wrapped(f"uploading artifacts to {artifact_uri}"):
            repo = get_artifact_repository(artifact_uri, tracking_uri=self.uri)
            repo.log_artifacts(str(local_dir))

    def terminate(self, run_id: str, status: str) -> None:
        """Mark a run FINISHED / FAILED / KILLED."""
        with _wrapped(f"marking run {run_id} {status}"):
            self.client.set_terminated(run_id, status=status)

    # --- reading a logged run back (retrain) -------------------------------------------------

    def find_run(self, run_id: str) -> LoggedRun | None:
        """A run's params and tags, or None if no run has that id."""
        with _wrapped(f"reading run {run_id}"):
            try:
                run = self.client.get_run(run_id)
            except MlflowException as e:
                if e.error_code in _NOT_FOUND:
                    return None
                raise
            return _logged(run)

    def download_artifact(self, run_id: str, name: str, dst_dir: Path) -> Path | None:
        """Download a top-level artifact file of a run; None if the run has no such file."""
        with _wrapped(f"downloading {name} of run {run_id}"):
            if name not in {Path(f.path).name for f in self.client.list_artifacts(run_id) if not f.is_dir}:
                return None
            return Path(self.client.download_artifacts(run_id, name, str(dst_dir)))

    def experiment_link(self, experiment_id: str) -> str:
        """How to open the experiment's runs in the MLflow UI."""
        page = f"#/experiments/{experiment_id}/runs"
        if self.uri.startswith(("http://", "https://")):
            return f"open {self.uri.rstrip('/')}/{page}"
        return f"run `mlflow ui --backend-store-uri {self.uri}` and open http://127.0.0.1:5000/{page}"

    # --- the experiment's history (search, hyperparameter importance) -----------------------

    def experiment_runs(self, experiment_id: str, *, finished_only: bool = False) -> list[LoggedRun]:
        """Every run of the experiment (only FINISHED ones with ``finished_only``), one paged
        search; a failing server is asked again up to ``READ_ATTEMPTS`` times in all."""
        where = "attributes.status = 'FINISHED'" if finished_only else ""
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                with _wrapped(f"reading the runs of experiment {experiment_id} at {self.uri}"):
                    return self._all_runs(experiment_id, where)
            except TrackingError:
                if attempt == READ_ATTEMPTS:
                    raise
                time.sleep(READ_BACKOFF_S * attempt)
        raise AssertionError("unreachable")

    def _all_runs(self, experiment_id: str, where: str) -> list[LoggedRun]:
        runs: list[LoggedRun] = []
        token: str | None = None
        while True:
            page = self.client.search_runs([experiment_id], where, max_results=READ_PAGE, page_token=token)
            runs.extend(_logged(run) for run in page)
            token = page.token
            if not token:
                return runs

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        with _wrapped(f"tagging experiment {experiment_id} with {key}"):
            self.client.set_experiment_tag(experiment_id, key, value)


READ_ATTEMPTS = 3
READ_BACKOFF_S = 1.0
READ_PAGE = 1000


def _logged(run: Any) -> LoggedRun:
    return LoggedRun(
        run_id=run.info.run_id,
        run_name=run.info.run_name or "",
        experiment_id=str(run.info.experiment_id),
        status=run.info.status,
        params=dict(run.data.params),
        tags=dict(run.data.tags),
        metrics=dict(run.data.metrics),
    )


# MLflow's error codes for a run id that names no run (the sqlite store and the REST server
# differ; a malformed id is "invalid" on some stores).
_NOT_FOUND = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


@dataclass(frozen=True)
class LoggedRun:
    run_id: str
    run_name: str
    experiment_id: str
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]


def example_frame(example: np.ndarray, feature_names: list[str]) -> pd.DataFrame:
    return pd.DataFrame(np.asarray(example, dtype="float32"), columns=feature_names)


def params_of(values: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in values.items()}
