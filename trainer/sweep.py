"""A sweep: load and check the data, then run trials through the executor and log each one.

The parent process validates everything a user can get wrong before it touches MLflow, then
creates each trial's run just before handing it to a worker (so no queued run sits RUNNING).
A worker trains, logs the model, logs params + metrics + tags in one batch, uploads the
importance files and marks the run FINISHED -- or FAILED if anything went wrong.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import structlog
from tqdm import tqdm

from trainer import data
from trainer.config import TrainerConfig, sample_trial
from trainer.data import Dataset
from trainer.errors import InputError, TrackingError, TrainingError, describe
from trainer.executor import ExecutorFactory, local_executor
from trainer.importance import feature_params
from trainer.splits import NotEnoughMonths, walk_forward_splits
from trainer.tracking import Tracking, example_frame, params_of, quiet_mlflow
from trainer.train import Prepared, TrialResult, run_trial

log = structlog.get_logger(__name__)

# Tag of a run its worker could not end itself (the worker died): why it is FAILED.
FAILURE_TAG = "failure_reason"


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
    index: int
    run_id: str
    status: str  # FINISHED | FAILED
    hyperparameters: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class SweepSummary:
    experiment_name: str
    experiment_id: str
    tracking_uri: str
    link: str
    outcomes: list[TrialOutcome]
    seconds: float

    @property
    def finished(self) -> list[TrialOutcome]:
        return [o for o in self.outcomes if o.status == "FINISHED"]

    @property
    def failed(self) -> list[TrialOutcome]:
        return [o for o in self.outcomes if o.status != "FINISHED"]

    def best(self, n: int) -> list[TrialOutcome]:
        def key(o: TrialOutcome) -> tuple[float, int]:
            value = o.metrics.get("avg_test_r2", math.nan)
            return (-value if math.isfinite(value) else math.inf, o.index)

        return sorted(self.finished, key=key)[:n]


# --------------------------------------------------------------------------------------------
# Worker side (runs in each executor process; module state is per process)
# --------------------------------------------------------------------------------------------


class _Worker:
    def __init__(self, context: WorkerContext) -> None:
        self.context = context
        self.prepared = Prepared(context.dataset, context.config)
        self.tracking = Tracking(context.tracking_uri)

    def run(self, task: TrialTask) -> TrialOutcome:
        try:
            result = run_trial(self.prepared, task.index, task.hyperparameters, task.seed)
            self._log(task, result)
        except Exception as e:
            self._fail(task)
            return TrialOutcome(task.index, task.run_id, "FAILED", task.hyperparameters, error=describe(e))
        except BaseException:  # interrupted: leave no RUNNING run behind
            self._fail(task)
            raise
        return TrialOutcome(
            task.index,
            task.run_id,
            "FINISHED",
            task.hyperparameters,
            metrics=result.averages(),
            seconds=result.seconds,
        )

    def _log(self, task: TrialTask, result: TrialResult) -> None:
        ctx = self.context
        ds = ctx.dataset
        self.tracking.log_model(
            ctx.experiment_id, task.run_id, result.model, example_frame(result.example, ds.feature_names)
        )
        params = {**ctx.static_params, **params_of(result.hyperparameters), "trial_seed": str(task.seed)}
        metrics = [(k, v, 0) for k, v in result.averages().items()] + result.fold_series()
        tags = {"trial_index": str(task.index)}
        report = result.importance
        if report is not None:
            params.update(report.params())
            metrics += [(k, v, 0) for k, v in report.metrics().items()]
            with tempfile.TemporaryDirectory(prefix="podium-importance-") as tmp:
                report.write_artifacts(Path(tmp))
                self.tracking.log_artifacts(task.artifact_uri, Path(tmp))
        elif result.importance_skipped:
            tags["importance_skipped"] = result.importance_skipped
        self.tracking.log_batch(task.run_id, params, metrics, tags)
        self.tracking.terminate(task.run_id, "FINISHED")

    def _fail(self, task: TrialTask) -> None:
        # the parent logs trial_failed with the outcome; here the run is only marked
        mark_ended(self.tracking, task.run_id, "FAILED")


_worker: _Worker | None = None


def init_worker(context: WorkerContext) -> None:
    """Executor initializer: build the per-process data, folds and matrices once."""
    global _worker
    if context.quiet:
        _configure_worker_logging()
    quiet_mlflow()
    _worker = _Worker(context)


def execute(task: TrialTask) -> TrialOutcome:
    """Executor task: one trial, end to end."""
    if _worker is None:
        raise TrainingError("worker used before init_worker")
    return _worker.run(task)


def _configure_worker_logging() -> None:
    import logging

    from trainer.cli import configure_logging

    configure_logging(logging.WARNING)


# --------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------


def load_checked(config: TrainerConfig) -> Dataset:
    """The data set, checked to give at least one fold (InputError otherwise)."""
    dc = config.data
    dataset = data.load(dc.path, target=dc.target, time_column=dc.time_column)
    wf = config.walk_forward
    where = str(dc.path) if dc.path is not None else "the built-in sample"
    try:
        folds = walk_forward_splits(dataset.times, wf.train_months, wf.test_months, wf.window)
    except NotEnoughMonths as e:
        raise InputError(
            f"too little data in {where} for one fold: --train-months {wf.train_months} plus "
            f"--test-months {wf.test_months} need {e.needed} calendar months, "
            f"the usable rows cover {e.available} ({e.first} .. {e.last})"
        ) from e
    log.info(
        "data_loaded",
        source=dataset.source,
        mode=dataset.mode,
        rows=len(dataset.y),
        features=dataset.n_features,
        folds=len(folds),
        **dataset.notes,
    )
    return dataset


def static_params(config: TrainerConfig, dataset: Dataset) -> dict[str, str]:
    """Data and fixed settings every trial of the sweep logs as params."""
    wf, xc = config.walk_forward, config.xgboost
    return {
        "symbol": config.symbol,
        "train_months": str(wf.train_months),
        "test_months": str(wf.test_months),
        "window": wf.window,
        "data_source": dataset.source,
        "data_mode": dataset.mode,
        "target": dataset.target,
        "time_column": config.data.time_column,
        "data_rows": str(len(dataset.y)),
        "sweep_seed": str(config.seed),
        "objective": xc.objective,
        "tree_method": xc.tree_method,
        "max_bin": str(xc.max_bin),
        **feature_params(dataset.feature_names),
    }


def run_sweep(
    config: TrainerConfig,
    *,
    tracking_uri: str | None = None,
    progress: bool | None = None,
    executor_factory: ExecutorFactory = local_executor,
) -> SweepSummary:
    """Run ``config.trials`` trials; InputError before any run exists if the input is bad."""
    started = time.perf_counter()
    dataset = load_checked(config)
    quiet_mlflow()
    tracking = Tracking(tracking_uri)
    name = config.experiment_name(dataset.n_features)
    experiment_id = tracking.ensure_experiment(name)
    sweep_id = uuid.uuid4().hex[:12]
    run_tags = {**tracking.context_tags(), "sweep_id": sweep_id, "data_mode": dataset.mode}
    jobs = min(config.jobs, config.trials)
    # inline trials share this process's logging; worker processes report only problems
    context = WorkerContext(
        dataset, config, tracking.uri, experiment_id, static_params(config, dataset), quiet=jobs > 1
    )
    log.info(
        "sweep_started",
        experiment=name,
        experiment_id=experiment_id,
        tracking_uri=tracking.uri,
        trials=config.trials,
        jobs=jobs,
        sweep_id=sweep_id,
    )
    show_bar = sys.stderr.isatty() if progress is None else progress
    # an explicit size: tqdm reads 0 rows from some pseudo-terminals and then draws nothing
    size = shutil.get_terminal_size((100, 24))
    bar = tqdm(
        total=config.trials,
        unit="trial",
        disable=not show_bar,
        ncols=min(size.columns or 100, 120),
        nrows=max(size.lines, 24),
    )
    outcomes: list[TrialOutcome] = []
    in_flight: dict[Future[TrialOutcome], TrialTask] = {}
    # what a worker on another machine needs to log its trial where the driver would
    env = {
        "MLFLOW_TRACKING_URI": tracking.uri,
        "PODIUM_EXPERIMENT_ID": experiment_id,
        "PODIUM_SWEEP_ID": sweep_id,
    }
    executor = executor_factory(jobs, init_worker, (context,), env=env)
    try:
        for index in range(config.trials):
            while len(in_flight) >= executor.slots:
                _collect(in_flight, outcomes, tracking, bar, show_bar, block=True)
            hp = sample_trial(config.search_space, config.seed, index)
            run_id, artifact_uri = tracking.create_run(experiment_id, f"trial_{index}", run_tags)
            task = TrialTask(index, run_id, artifact_uri, hp, config.seed + index)
            try:
                future = executor.submit(execute, task)
            except BaseException:  # a broken pool, or an interrupted inline trial: no outcome came back
                mark_ended(tracking, run_id, "KILLED")
                raise
            in_flight[future] = task
            _collect(in_flight, outcomes, tracking, bar, show_bar, block=False)
        while in_flight:
            _collect(in_flight, outcomes, tracking, bar, show_bar, block=True)
    except BaseException:
        executor.shutdown(cancel=True)  # trials already running finish and end their own runs
        for future, task in in_flight.items():
            if not _ended_by_worker(future):
                mark_ended(tracking, task.run_id, "KILLED")
        raise
    finally:
        bar.close()
    executor.shutdown()
    summary = SweepSummary(
        name,
        experiment_id,
        tracking.uri,
        tracking.experiment_link(experiment_id),
        sorted(outcomes, key=lambda o: o.index),
        time.perf_counter() - started,
    )
    log.info(
        "sweep_finished",
        experiment=name,
        finished=len(summary.finished),
        failed=len(summary.failed),
        seconds=round(summary.seconds, 1),
    )
    return summary


def _collect(
    in_flight: dict[Future[TrialOutcome], TrialTask],
    outcomes: list[TrialOutcome],
    tracking: Tracking,
    bar: tqdm[Any],
    show_bar: bool,
    *,
    block: bool,
) -> None:
    if not in_flight:
        return
    done, _ = wait(list(in_flight), timeout=None if block else 0, return_when=FIRST_COMPLETED)
    for future in done:
        task = in_flight.pop(future)
        try:
            outcome = future.result()
        except BrokenProcessPool as e:
            mark_ended(tracking, task.run_id, "FAILED")
            raise TrainingError(f"a trial process died while running trial_{task.index}") from e
        except Exception as e:  # the worker could not end the run (it died): say why on the run
            mark_ended(tracking, task.run_id, "FAILED", reason=describe(e))
            outcome = TrialOutcome(task.index, task.run_id, "FAILED", task.hyperparameters, error=describe(e))
        outcomes.append(outcome)
        r2 = outcome.metrics.get("avg_test_r2", math.nan)
        if show_bar:
            best = max((o.metrics.get("avg_test_r2", -math.inf) for o in outcomes), default=math.nan)
            bar.set_postfix(best_r2=f"{best:.4f}", refresh=False)
            bar.update(1)
        elif outcome.status == "FINISHED":
            log.info(
                "trial_finished",
                trial=f"trial_{outcome.index}",
                run_id=outcome.run_id,
                avg_test_r2=round(r2, 5),
                seconds=round(outcome.seconds, 2),
                done=len(outcomes),
            )
        if outcome.status != "FINISHED":
            log.error(
                "trial_failed", trial=f"trial_{outcome.index}", run_id=outcome.run_id, error=outcome.error
            )


def _ended_by_worker(future: Future[TrialOutcome]) -> bool:
    """The worker returned an outcome, so it already marked the run FINISHED or FAILED."""
    return future.done() and not future.cancelled() and future.exception() is None


def mark_ended(tracking: Tracking, run_id: str, status: str, reason: str | None = None) -> None:
    """Mark a run FAILED or KILLED (with tag ``failure_reason`` when given); a tracking error here
    is logged, not raised (one is already on its way)."""
    try:
        if reason:
            tracking.log_batch(run_id, {}, [], {FAILURE_TAG: reason[:5000]})
        tracking.terminate(run_id, status)
    except TrackingError as e:
        log.error("run_not_marked", run_id=run_id, status=status, error=str(e))


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

TABLE_PARAMS = ("n_estimators", "max_depth", "learning_rate")


def print_summary(summary: SweepSummary, top: int, out: TextIO) -> None:
    """The best trials by avg_test_r2, and how to open them in the MLflow UI."""
    best = summary.best(top)
    print(
        f"\nExperiment {summary.experiment_name} (id {summary.experiment_id}): "
        f"{len(summary.finished)} trials finished, {len(summary.failed)} failed "
        f"in {summary.seconds:.0f}s",
        file=out,
    )
    if best:
        headers = ["rank", "run", "run_id", "avg_test_r2", "avg_test_rmse", "avg_train_r2", *TABLE_PARAMS]
        rows = [
            [
                str(rank),
                f"trial_{o.index}",
                o.run_id,
                f"{o.metrics['avg_test_r2']:.5f}",
                f"{o.metrics['avg_test_rmse']:.6f}",
                f"{o.metrics['avg_train_r2']:.5f}",
                *(str(o.hyperparameters.get(p, "")) for p in TABLE_PARAMS),
            ]
            for rank, o in enumerate(best, start=1)
        ]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        print(f"Best {len(best)} by avg_test_r2:", file=out)
        for row in [headers, *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
    for o in summary.failed[:5]:
        print(f"trial_{o.index} ({o.run_id}) failed: {o.error}", file=out)
    print(f"To browse the runs, {summary.link}", file=out)
