"""What a sweep and a retrain both start from: the data, checked to give folds, and the params
that describe it. Everything here that a user can get wrong is an ``InputError`` (exit 2),
raised before any MLflow run exists."""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from trainer import data
from trainer.config import TrainerConfig
from trainer.data import Dataset
from trainer.errors import InputError
from trainer.importance import feature_params
from trainer.splits import MIN_WINDOW_ROWS, FoldPlan, NotEnoughMonths, plan_folds

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Inputs:
    dataset: Dataset
    plan: FoldPlan
    symbol: str


def prepare(config: TrainerConfig) -> Inputs:
    """Load the data set and plan its folds (InputError when not one fold is left)."""
    dc = config.data
    dataset = data.load(dc.path, target=dc.target, time_column=dc.time_column)
    wf = config.walk_forward
    where = str(dc.path) if dc.path is not None else "the built-in sample"
    try:
        plan = plan_folds(dataset.times, wf.train_months, wf.test_months, wf.window, wf.min_test_rows)
    except NotEnoughMonths as e:
        raise InputError(no_fold_message(e, where, wf.train_months, wf.test_months, wf.min_test_rows)) from e
    log.info(
        "data_loaded",
        source=dataset.source,
        mode=dataset.mode,
        rows=len(dataset.y),
        features=dataset.n_features,
        time_column=dataset.time_column,
        bar_interval=dataset.bar_interval,
        folds=len(plan.folds),
        folds_skipped=len(plan.skipped),
        min_test_rows=plan.min_test_rows,
        dropped_constant_features=len(dataset.dropped_constant),
        dropped_empty_features=len(dataset.dropped_empty),
        **dataset.notes,
    )
    for window in plan.skipped:
        log.info("fold_skipped", reason=window.reason)
    return Inputs(dataset, plan, config.resolved_symbol())


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
    if e.largest_test < e.min_test_rows:
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


def static_params(config: TrainerConfig, inputs: Inputs) -> dict[str, str]:
    """Data and fixed settings every trial of the sweep logs as params."""
    wf, xc = config.walk_forward, config.xgboost
    dataset, plan = inputs.dataset, inputs.plan
    return {
        "symbol": inputs.symbol,
        "train_months": str(wf.train_months),
        "test_months": str(wf.test_months),
        "window": wf.window,
        "min_test_rows": str(plan.min_test_rows),
        "folds_skipped": str(len(plan.skipped)),
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
        "objective": xc.objective,
        "tree_method": xc.tree_method,
        "max_bin": str(xc.max_bin),
        **feature_params(dataset.feature_names),
    }
