"""The one place a trial runs, for ``train`` and ``retrain`` alike.

An executor calls ``init_worker`` once per worker (building the data's folds and matrices for
every trial that worker runs) and ``execute`` per trial. A trial trains, logs the model, logs
params + metrics + tags in one batch, uploads the importance files and marks its run FINISHED,
or FAILED if anything went wrong. Its run was created by the caller just before the task was
handed over, so no queued run sits RUNNING.

The model, the batch and the importance tables go to MLflow from a thread of the worker while
the trial's own thread draws the two importance charts: most of their time is the server's, so
the trial waits for them about as long as the charts take. The trial waits for that thread
before it uploads the charts and ends its run, so an error there fails the trial as before,
and nothing of a run is still on its way when the run is marked.
"""

from __future__ import annotations

import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from trainer import equity
from trainer.config import TrainerConfig
from trainer.data import Dataset
from trainer.errors import TrackingError, TrainingError, describe
from trainer.keys import MAX_TAG_LENGTH
from trainer.logs import configure_logging
from trainer.tracking import Tracking, example_frame, params_of, quiet_mlflow
from trainer.train import Prepared, TrialResult, run_trial

log = structlog.get_logger(__name__)

FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"
# Tag of a run its worker could not end itself (the worker died): why it is FAILED.
FAILURE_TAG = "failure_reason"
# Tag of a trial whose model learned nothing in any fold.
DEGENERATE_TAG = "degenerate"
# Run tag with the per-fold test values as compact JSON, and the param that says why a run
# has none (too many folds for MLflow's tag limit: the metric history has them all).
FOLDS_TAG = "podium.folds"
FOLDS_TAG_LEFT_OUT = "folds_tag"


@dataclass(frozen=True)
class WorkerContext:
    """Everything a worker needs that does not change between trials (sent once per worker)."""

    dataset: Dataset
    config: TrainerConfig
    tracking_uri: str
    experiment_id: str
    static_params: dict[str, str]
    quiet: bool = True


@dataclass(frozen=True)
class TrialTask:
    index: int
    run_id: str
    artifact_uri: str
    hyperparameters: dict[str, Any]
    seed: int


@dataclass(frozen=True)
class TrialOutcome:
    """What came back from a trial. ``unscored`` says why a FINISHED trial has no finite main
    metric (``avg_test_r2``, ``avg_test_auc`` for a classifier; None when it has one)."""

    index: int
    run_id: str
    status: str  # FINISHED | FAILED
    hyperparameters: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    unscored: str | None = None
    degenerate: bool = False


class _Worker:
    def __init__(self, context: WorkerContext) -> None:
        self.context = context
        self.prepared = Prepared(context.dataset, context.config)
        self.tracking = Tracking(context.tracking_uri)
        self.sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="podium-logging")

    def run(self, task: TrialTask) -> TrialOutcome:
        try:
            result = run_trial(self.prepared, task.index, task.hyperparameters, task.seed)
            self._log(task, result)
        except Exception as e:
            self._fail(task)
            return TrialOutcome(task.index, task.run_id, FAILED, task.hyperparameters, error=describe(e))
        except BaseException:  # interrupted: leave no RUNNING run behind
            self._fail(task)
            raise
        return TrialOutcome(
            task.index,
            task.run_id,
            FINISHED,
            task.hyperparameters,
            metrics=result.averages(),
            seconds=result.seconds,
            unscored=result.unscored_reason(),
            degenerate=result.degenerate,
        )

    def _log(self, task: TrialTask, result: TrialResult) -> None:
        params, metrics, tags = self._batch(task, result)
        report = result.importance
        with tempfile.TemporaryDirectory(prefix="podium-importance-") as tmp:
            tables, charts = Path(tmp, "tables"), Path(tmp, "charts")
            if report is not None:
                report.write_tables(tables)
            upload = tables if report is not None else None
            sent = self.sender.submit(self._send, task, result, (params, metrics, tags), upload)
            try:
                if report is not None:
                    report.write_charts(charts)
                if result.trading is not None:
                    charts.mkdir(exist_ok=True)
                    # The out-of-sample path's CSV and equity chart, drawn here beside the importance charts.
                    equity.write_files(result.trading.path(), charts, f"trial_{task.index}, out of sample")
            finally:
                wait([sent])  # even when a chart failed: nothing of the run in flight once it is marked
            sent.result()  # the model's, the batch's or the tables' error, raised here
            if report is not None or result.trading is not None:
                self.tracking.log_artifacts(task.artifact_uri, charts)
        self.tracking.terminate(task.run_id, FINISHED)

    def _send(
        self,
        task: TrialTask,
        result: TrialResult,
        batch: tuple[dict[str, str], list[tuple[str, float, int]], dict[str, str]],
        tables: Path | None,
    ) -> None:
        """The model first (MLflow reads the run's metrics when it logs a model: none yet), then
        every param, metric and tag in one batch, then the importance tables."""
        ctx = self.context
        example = example_frame(result.example, ctx.dataset.feature_names)
        self.tracking.log_model(ctx.experiment_id, task.run_id, result.model, example)
        self.tracking.log_batch(task.run_id, *batch)
        if tables is not None:
            self.tracking.log_artifacts(task.artifact_uri, tables)

    def _batch(
        self, task: TrialTask, result: TrialResult
    ) -> tuple[dict[str, str], list[tuple[str, float, int]], dict[str, str]]:
        """The run's params, metrics ``(key, value, step)`` and tags."""
        ctx = self.context
        params = {**ctx.static_params, **params_of(result.hyperparameters), "trial_seed": str(task.seed)}
        metrics = [(k, v, 0) for k, v in result.averages().items()] + result.fold_series()
        tags = {"trial_index": str(task.index)}
        if result.degenerate:
            tags[DEGENERATE_TAG] = "true"
        folds, left_out = result.folds_tag()
        if folds is not None:
            tags[FOLDS_TAG] = folds
        if left_out:
            params[FOLDS_TAG_LEFT_OUT] = folds_left_out(left_out)
            log.warning("folds_tag_left_out", run_id=task.run_id, scores=left_out, limit=MAX_TAG_LENGTH)
        report = result.importance
        if report is not None:
            params.update(report.params())
            metrics += [(k, v, 0) for k, v in report.metrics().items()]
        elif result.importance_skipped:
            tags["importance_skipped"] = result.importance_skipped
        return params, metrics, tags

    def _fail(self, task: TrialTask) -> None:
        # the caller logs trial_failed with the outcome; here the run is only marked
        mark_ended(self.tracking, task.run_id, FAILED)


_worker: _Worker | None = None


def init_worker(context: WorkerContext) -> None:
    """Executor initializer: build the per-process data, folds and matrices once."""
    global _worker
    if context.quiet:
        configure_logging(logging.WARNING)
    quiet_mlflow()
    _worker = _Worker(context)


def execute(task: TrialTask) -> TrialOutcome:
    """Executor task: one trial, end to end."""
    if _worker is None:
        raise TrainingError("worker used before init_worker")
    return _worker.run(task)


def folds_left_out(scores: list[str]) -> str:
    """Why scores are missing from the ``podium.folds`` tag (or the tag is missing)."""
    named = " and ".join([", ".join(scores[:-1]), scores[-1]]) if len(scores) > 1 else scores[0]
    return (
        f"{named} left out of podium.folds: over MLflow's tag limit of {MAX_TAG_LENGTH} characters; "
        "their per-fold values are the metric history (step = fold)"
    )


def mark_ended(tracking: Tracking, run_id: str, status: str, reason: str | None = None) -> None:
    """Mark a run FAILED or KILLED (with tag ``failure_reason`` when given); a tracking error here
    is logged, not raised (one is already on its way)."""
    try:
        if reason:
            tracking.log_batch(run_id, {}, [], {FAILURE_TAG: reason[:5000]})
        tracking.terminate(run_id, status)
    except TrackingError as e:
        log.error("run_not_marked", run_id=run_id, status=status, error=str(e))
