"""A sweep: load and check the data, then run trials through the executor and log each one.

The parent process validates everything a user can get wrong before it touches MLflow, then
creates each trial's run just before handing it to a worker (``trainer.worker``), so no queued
run sits RUNNING.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TextIO

import structlog
from tqdm import tqdm

from trainer import hyperimportance
from trainer.config import TrainerConfig
from trainer.errors import TrackingError, TrainingError, describe
from trainer.executor import ExecutorFactory, ExecutorSession, local_executor
from trainer.prepare import prepare, static_params
from trainer.search import History, Sampler, check_search, covered_runs, history, sampler_for
from trainer.tasks import REGRESSION, Task
from trainer.tracking import Tracking, quiet_mlflow
from trainer.train import DEGENERATE_REASON
from trainer.worker import (
    FAILED,
    FINISHED,
    KILLED,
    TrialOutcome,
    TrialTask,
    WorkerContext,
    execute,
    init_worker,
    mark_ended,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class SweepSummary:
    experiment_name: str
    experiment_id: str
    tracking_uri: str
    link: str
    outcomes: list[TrialOutcome]
    seconds: float
    task: Task = REGRESSION
    history: History | None = None  # what the sweep read before its first trial
    hyperparameters: dict[str, Any] | None = None  # the podium.hyperparameters tag it wrote

    @property
    def finished(self) -> list[TrialOutcome]:
        return [o for o in self.outcomes if o.status == FINISHED]

    @property
    def failed(self) -> list[TrialOutcome]:
        return [o for o in self.outcomes if o.status != FINISHED]

    @property
    def unscored(self) -> list[TrialOutcome]:
        """Finished trials without a finite main metric: never ranked, listed apart."""
        return [o for o in self.finished if not _scored(o, self.task.main_metric)]

    def best(self, n: int) -> list[TrialOutcome]:
        """The ``n`` best finished trials by a finite main metric, ``avg_test_r2`` or
        ``avg_test_auc`` (ties: lower index first)."""
        metric = self.task.main_metric
        scored = [o for o in self.finished if _scored(o, metric)]
        return sorted(scored, key=lambda o: (-o.metrics[metric], o.index))[:n]


def _scored(outcome: TrialOutcome, metric: str) -> bool:
    return math.isfinite(outcome.metrics.get(metric, math.nan))


# --------------------------------------------------------------------------------------------
# Running the trials
# --------------------------------------------------------------------------------------------


def run_sweep(
    config: TrainerConfig,
    *,
    tracking_uri: str | None = None,
    progress: bool | None = None,
    executor_factory: ExecutorFactory = local_executor,
) -> SweepSummary:
    """Run ``config.trials`` trials; InputError before any run exists if the input is bad."""
    started = time.perf_counter()
    check_search(config.search, config.search_space)
    jobs = min(config.jobs, config.trials)
    # a backend that can (Ray) starts its workers now: their start overlaps the data's preparation
    with ExecutorSession(executor_factory, jobs, (init_worker.__module__,)) as session:
        inputs = prepare(config)
        dataset = inputs.dataset
        quiet_mlflow()
        tracking = Tracking(tracking_uri)
        name = config.experiment_name(dataset.n_features)
        experiment_id = tracking.ensure_experiment(name)
        learning_task = config.resolved_task()
        past, sampler = _resume(config, tracking, experiment_id, learning_task)
        sweep_id = uuid.uuid4().hex[:12]
        run_tags = {**tracking.context_tags(), "sweep_id": sweep_id, "data_mode": dataset.mode}
        # inline trials share this process's logging; worker processes report only problems
        context = WorkerContext(
            dataset, config, tracking.uri, experiment_id, static_params(config, inputs), quiet=jobs > 1
        )
        log.info(
            "sweep_started",
            experiment=name,
            experiment_id=experiment_id,
            tracking_uri=tracking.uri,
            trials=config.trials,
            jobs=jobs,
            sweep_id=sweep_id,
            search=config.search,
            first_trial=f"trial_{past.first_index}",
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
        executor = session.start(init_worker, (context,), env=env)
        collect = _Collector(in_flight, outcomes, tracking, bar, show_bar, learning_task, sampler)
        try:
            for index in range(past.first_index, past.first_index + config.trials):
                while len(in_flight) >= executor.slots:
                    collect(block=True)
                hp = sampler.ask(index)  # only when a worker is free: at most --jobs asked ahead
                run_id, artifact_uri = tracking.create_run(experiment_id, f"trial_{index}", run_tags)
                task = TrialTask(index, run_id, artifact_uri, hp, config.seed + index)
                try:
                    future = executor.submit(execute, task)
                except BaseException:  # a broken pool, or an interrupted inline trial: no outcome came back
                    mark_ended(tracking, run_id, KILLED)
                    raise
                in_flight[future] = task
                collect(block=False)
            while in_flight:
                collect(block=True)
        except BaseException:
            session.shutdown(cancel=True)  # trials already running finish and end their own runs
            for future, task in in_flight.items():
                if not _ended_by_worker(future):
                    mark_ended(tracking, task.run_id, KILLED)
            raise
        finally:
            bar.close()
    hyperparameters = _hyperparameters(config, tracking, experiment_id, learning_task)
    summary = SweepSummary(
        name,
        experiment_id,
        tracking.uri,
        tracking.experiment_link(experiment_id),
        sorted(outcomes, key=lambda o: o.index),
        time.perf_counter() - started,
        learning_task,
        past,
        hyperparameters,
    )
    log.info(
        "sweep_finished",
        experiment=name,
        finished=len(summary.finished),
        failed=len(summary.failed),
        seconds=round(summary.seconds, 1),
    )
    return summary


def _resume(
    config: TrainerConfig, tracking: Tracking, experiment_id: str, task: Task
) -> tuple[History, Sampler]:
    """Read the experiment's runs once (names; for tpe the finished runs the study starts from)."""
    past = history(tracking.experiment_runs(experiment_id), config.search_space, task, config.search)
    if config.search == "tpe":
        log.info(
            "search_resumed",
            experiment_id=experiment_id,
            read=past.read,
            kept=len(past.covered),
            **past.left_out,
            first_trial=f"trial_{past.first_index}",
        )
    return past, sampler_for(config.search, config.search_space, config.seed, past)


def _hyperparameters(
    config: TrainerConfig, tracking: Tracking, experiment_id: str, task: Task
) -> dict[str, Any]:
    """Tag ``podium.hyperparameters`` from every finished run the space covers; a tracking
    failure here is logged and shown, the sweep's own runs being logged already."""
    try:
        runs = tracking.experiment_runs(experiment_id, finished_only=True)
        covered, _ = covered_runs(runs, config.search_space, task)
        content = hyperimportance.report(covered, config.search_space, task.main_metric)
        tracking.set_experiment_tag(experiment_id, hyperimportance.TAG, hyperimportance.tag_value(content))
    except TrackingError as e:
        log.error("hyperparameters_not_written", experiment_id=experiment_id, error=str(e))
        return {"reason": f"not written: {e}"}
    log.info("hyperparameters_written", experiment_id=experiment_id, tag=content)
    return content


@dataclass
class _Collector:
    """Takes the outcomes of finished trials, reports them and tells the sampler."""

    in_flight: dict[Future[TrialOutcome], TrialTask]
    outcomes: list[TrialOutcome]
    tracking: Tracking
    bar: tqdm[Any]
    show_bar: bool
    learning_task: Task
    sampler: Sampler

    def __call__(self, *, block: bool) -> None:
        _collect(
            self.in_flight,
            self.outcomes,
            self.tracking,
            self.bar,
            self.show_bar,
            self.learning_task,
            self.sampler,
            block=block,
        )


def _collect(
    in_flight: dict[Future[TrialOutcome], TrialTask],
    outcomes: list[TrialOutcome],
    tracking: Tracking,
    bar: tqdm[Any],
    show_bar: bool,
    learning_task: Task,
    sampler: Sampler,
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
            mark_ended(tracking, task.run_id, FAILED)
            raise TrainingError(f"a trial process died while running trial_{task.index}") from e
        except Exception as e:  # the worker could not end the run (it died): say why on the run
            mark_ended(tracking, task.run_id, FAILED, reason=describe(e))
            outcome = TrialOutcome(task.index, task.run_id, FAILED, task.hyperparameters, error=describe(e))
        outcomes.append(outcome)
        metric = learning_task.main_metric
        value = outcome.metrics.get(metric, math.nan)
        sampler.tell(outcome.index, value if outcome.status == FINISHED and math.isfinite(value) else None)
        if show_bar:
            scores = [o.metrics[metric] for o in outcomes if _scored(o, metric)]
            best = {f"best_{learning_task.main}": f"{max(scores):.4f}" if scores else "none"}
            bar.set_postfix(best, refresh=False)
            bar.update(1)
        elif outcome.status == FINISHED:
            log.info(
                "trial_finished",
                trial=f"trial_{outcome.index}",
                run_id=outcome.run_id,
                **{metric: round(value, 5)},
                seconds=round(outcome.seconds, 2),
                done=len(outcomes),
            )
        if outcome.status == FINISHED and outcome.unscored:
            log.warning("trial_unscored", trial=f"trial_{outcome.index}", reason=outcome.unscored)
        if outcome.status == FINISHED and outcome.degenerate:
            log.warning(
                "trial_degenerate",
                trial=f"trial_{outcome.index}",
                run_id=outcome.run_id,
                reason=DEGENERATE_REASON,
                tag="degenerate=true",
            )
        if outcome.status != FINISHED:
            log.error(
                "trial_failed", trial=f"trial_{outcome.index}", run_id=outcome.run_id, error=outcome.error
            )


def _ended_by_worker(future: Future[TrialOutcome]) -> bool:
    """The worker returned an outcome, so it already marked the run FINISHED or FAILED."""
    return future.done() and not future.cancelled() and future.exception() is None


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

TABLE_PARAMS = ("n_estimators", "max_depth", "learning_rate")
DEGENERATE_MARK = "*"
# The metrics of the table (name, format), after the run: the main metric first.
TABLE_METRICS: dict[bool, tuple[tuple[str, str], ...]] = {
    False: (
        ("avg_test_r2", ".5f"),
        ("avg_test_r2_os", ".5f"),
        ("avg_test_rmse", ".6f"),
        ("avg_train_r2", ".5f"),
    ),
    True: (
        ("avg_test_auc", ".4f"),
        ("avg_test_logloss", ".4f"),
        ("avg_test_accuracy", ".4f"),
        ("avg_test_brier", ".4f"),
        ("avg_train_auc", ".4f"),
    ),
}
# The trading scores' columns (OHLCV mode), after the task's.
TRADING_COLUMNS = (("avg_test_ic", ".4f"), ("oos_sharpe", ".2f"))


def print_summary(summary: SweepSummary, top: int, out: TextIO) -> None:
    """The best trials by the main metric (avg_test_r2, avg_test_auc; a trial that learned
    nothing is marked ``*``), and how to open them in the MLflow UI."""
    best = summary.best(top)
    metric = summary.task.main_metric
    columns = TABLE_METRICS[summary.task.classifies]
    if any("oos_sharpe" in o.metrics for o in best):
        columns += TRADING_COLUMNS
    print(
        f"\nExperiment {summary.experiment_name} (id {summary.experiment_id}): "
        f"{len(summary.finished)} trials finished, {len(summary.failed)} failed "
        f"in {summary.seconds:.0f}s",
        file=out,
    )
    if best:
        headers = ["rank", "run", "run_id", *(name for name, _ in columns), *TABLE_PARAMS]
        rows = [
            [
                str(rank),
                f"trial_{o.index}{DEGENERATE_MARK if o.degenerate else ''}",
                o.run_id,
                *(format(o.metrics.get(name, math.nan), spec) for name, spec in columns),
                *(str(o.hyperparameters.get(p, "")) for p in TABLE_PARAMS),
            ]
            for rank, o in enumerate(best, start=1)
        ]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        print(f"Best {len(best)} by {metric}:", file=out)
        for row in [headers, *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
    degenerate = [o for o in summary.finished if o.degenerate]
    if degenerate:
        print(
            f"{DEGENERATE_MARK} learned nothing ({len(degenerate)} of {len(summary.finished)} trials, "
            "tagged degenerate=true): no tree split, or one prediction for every training row, in "
            "every fold",
            file=out,
        )
    unscored = summary.unscored
    if unscored:
        print(f"Not ranked ({len(unscored)} without a finite {metric}):", file=out)
        for o in unscored[:5]:
            print(f"  trial_{o.index} ({o.run_id}): {o.unscored}", file=out)
    for o in summary.failed[:5]:
        print(f"trial_{o.index} ({o.run_id}) failed: {o.error}", file=out)
    if summary.history is not None and summary.history.resumed:
        print(summary.history.line(), file=out)
    if summary.hyperparameters is not None:
        hyperimportance.print_table(summary.hyperparameters, out)
    print(f"To browse the runs, {summary.link}", file=out)
