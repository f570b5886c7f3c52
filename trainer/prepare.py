"""What a sweep and a retrain both start from: the data, checked to give folds, and the params
that describe it. Everything here that a user can get wrong is an ``InputError`` (exit 2),
raised before any MLflow run exists."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import structlog

from trainer import data, trading
from trainer.config import TrainerConfig
from trainer.data import Dataset
from trainer.errors import InputError
from trainer.importance_report import feature_params
from trainer.splits import MIN_WINDOW_ROWS, FoldPlan, NotEnoughMonths
from trainer.tasks import Task
from trainer.train import fold_plan

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Inputs:
    dataset: Dataset
    plan: FoldPlan
    symbol: str
    positive_class: str | None = None  # a classifier's class 1, as the data spells it


def prepare(config: TrainerConfig) -> Inputs:
    """Load the data set, label it for the task and plan its folds (InputError when the task
    does not fit the data, or not one fold is left)."""
    dc = config.data
    task = config.resolved_task()
    check_task(task, dc.target)
    where = str(dc.path) if dc.path is not None else "the built-in sample"
    dataset = data.load(dc.path, target=dc.target, time_column=dc.time_column, horizon=config.horizon)
    dataset, positive_class = labelled(dataset, task, where)
    wf = config.walk_forward
    try:
        plan = fold_plan(dataset, config)
    except NotEnoughMonths as e:
        raise InputError(no_fold_message(e, where, wf.train_months, wf.test_months, wf.min_test_rows)) from e
    log.info(
        "data_loaded",
        source=dataset.source,
        mode=dataset.mode,
        task=task.name,
        rows=len(dataset.y),
        features=dataset.n_features,
        time_column=dataset.time_column,
        bar_interval=dataset.bar_interval,
        folds=len(plan.folds),
        folds_skipped=len(plan.skipped),
        min_test_rows=plan.min_test_rows,
        purged_rows=plan.purged_rows,
        embargoed_rows=plan.embargoed_rows,
        dropped_constant_features=len(dataset.dropped_constant),
        dropped_empty_features=len(dataset.dropped_empty),
        **dataset.notes,
    )
    for window in plan.skipped:
        log.info("fold_skipped", reason=window.reason)
    return Inputs(dataset, plan, config.resolved_symbol(), positive_class)


def check_task(task: Task, target: str | None) -> None:
    """The task fits the options: direction is OHLCV mode, classification has a --target."""
    if task.name == "direction" and target is not None:
        raise InputError(
            f"--task direction predicts whether the next return from OHLCV bars is positive and takes "
            f"no --target (got --target {target!r}); for a two-valued column of your own use "
            "--task classification --target COL"
        )
    if task.name == "classification" and target is None:
        raise InputError("--task classification needs --target COL: the two-valued column to predict")


def labelled(dataset: Dataset, task: Task, where: str) -> tuple[Dataset, str | None]:
    """``dataset`` with the task's labels as ``y`` (0/1 for a classifier) and the name of class 1.

    Direction: 1 where the return the regression task would predict is above zero (0 where it
    is zero or below). Classification: 1 where the target holds the larger of its two values.
    """
    if not task.classifies:
        return dataset, None
    if task.name == "direction":
        y = (dataset.y > 0).astype(np.float64)
        positive = "up"
        if y.min() == y.max():
            side = "above" if y[0] else "at or below"
            raise InputError(
                f"--task direction: the next return in {where} is {side} zero in every row, so there "
                "is one class only and nothing to classify"
            )
    else:
        values = np.unique(dataset.y)
        if len(values) != 2:
            shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
            raise InputError(
                f"--task classification: target column {dataset.target!r} in {where} has "
                f"{len(values)} distinct values ({shown}); it needs exactly two, such as 0 and 1"
            )
        y = (dataset.y == values[1]).astype(np.float64)
        positive = f"{values[1]:g}"
    counts = np.bincount(y.astype(np.intp), minlength=2)
    log.info(
        "labels_made", task=task.name, positive_class=positive, rows_1=int(counts[1]), rows_0=int(counts[0])
    )
    return dataclasses.replace(dataset, y=y), positive


def load_checked(config: TrainerConfig) -> Dataset:
    """The data set of ``prepare``."""
    return prepare(config).dataset


def no_fold_message(
    e: NotEnoughMonths, where: str, train_months: int, test_months: int, min_test_rows: int | None = None
) -> str:
    """What one fold needs and what the data has."""
    has = f"the file has {e.rows} usable rows over {e.available} calendar months ({e.first} .. {e.last})"
    if not e.min_test_rows:
        return (
            f"too little data in {where} for one fold: --train-months {train_months} plus "
            f"--test-months {test_months} need {e.needed} calendar months, "
            f"the usable rows cover {e.available} ({e.first} .. {e.last}); the file has {e.rows} "
            f"usable rows, and a test window needs at least {min_test_rows or MIN_WINDOW_ROWS}"
        )
    if e.constant_target:
        need = (
            f"the target does not vary in any training window that has enough rows "
            f"({e.constant_target} such window(s)), so there is nothing to learn"
        )
    elif e.largest_test < e.min_test_rows:
        need = (
            f"a test window of {test_months} month(s) needs at least {e.min_test_rows} rows "
            f"(min_test_rows, --min-test-rows), the largest has {e.largest_test}"
        )
    else:
        need = (
            f"a training window of {train_months} month(s) needs at least {e.min_train_rows} rows, "
            f"the largest has {e.largest_train}"
        )
    return f"too little data in {where} for one fold: {need}; {has}"


def trading_params(config: TrainerConfig, dataset: Dataset) -> dict[str, str]:
    """``cost_bps`` and ``periods_per_year`` (OHLCV mode), or why there are no trading scores."""
    if dataset.returns is None:
        return {"trading_scores": trading.TARGET_MODE}
    return {
        "cost_bps": f"{config.cost_bps:g}",
        "periods_per_year": repr(trading.periods_per_year(dataset.times)),
    }


def static_params(config: TrainerConfig, inputs: Inputs) -> dict[str, str]:
    """Data and fixed settings every trial of the sweep logs as params."""
    wf, xc = config.walk_forward, config.xgboost
    dataset, plan = inputs.dataset, inputs.plan
    task = config.resolved_task()
    labels = {"positive_class": inputs.positive_class} if inputs.positive_class is not None else {}
    return {
        "symbol": inputs.symbol,
        "task": task.name,
        **labels,
        "train_months": str(wf.train_months),
        "test_months": str(wf.test_months),
        "window": wf.window,
        "min_test_rows": str(plan.min_test_rows),
        "folds_skipped": str(len(plan.skipped)),
        "horizon": str(config.horizon),
        "embargo": str(config.embargo),
        **trading_params(config, dataset),
        "purged_rows": str(plan.purged_rows),
        "embargoed_rows": str(plan.embargoed_rows),
        "bar_interval": dataset.bar_interval,
        "data_source": dataset.source,
        "data_mode": dataset.mode,
        "target": dataset.target,
        "time_column": dataset.time_column,
        "data_rows": str(len(dataset.y)),
        "dropped_constant_features": str(len(dataset.dropped_constant)),
        "dropped_empty_features": str(len(dataset.dropped_empty)),
        "prices_filled": str(dataset.notes.get("prices_filled", 0)),
        "values_missing": str(dataset.notes.get("values_missing", 0)),
        "sweep_seed": str(config.seed),
        "objective": task.objective(xc.objective),
        "tree_method": xc.tree_method,
        "max_bin": str(xc.max_bin),
        **feature_params(dataset.feature_names),
    }
