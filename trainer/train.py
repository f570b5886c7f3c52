"""One walk-forward trial: train per fold, score, and train the deployable model.

``Prepared`` holds what does not change between trials (the data, the folds, each window's
target scale and ``QuantileDMatrix``), so a process builds it once and every trial it runs
reuses it. XGBoost fits each window's standardised target (``trainer.booster``); predictions
are turned back into the data's units before they are scored, and the boosters that leave a
trial (the deployable model, the ones importance is computed on) are rescaled to predict in
them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import xgboost as xgb

from trainer.booster import TargetScale, in_data_units, scales_target
from trainer.config import HYPERPARAMETERS, TrainerConfig
from trainer.data import Dataset
from trainer.importance import for_trial
from trainer.importance_report import ImportanceReport
from trainer.keys import MAX_TAG_LENGTH
from trainer.scoring import (
    AGGREGATES,
    PARTS,
    aggregates,
    average,
    fitting_folds_tag,
    oos_sums,
    r2_os,
    task_scores,
    unscored_reason,
)
from trainer.splits import Fold, FoldPlan, latest_window, plan_folds
from trainer.tasks import REGRESSION, Task
from trainer.trading import FOLD_TAG_SCORES, FoldTrades, TradingReport, fold_trades, periods_per_year

# Rows of the input example logged with the model.
EXAMPLE_ROWS = 5
DEGENERATE_REASON = (
    "the model learned nothing in any fold (no tree split, or one prediction for every training row)"
)


@dataclass(frozen=True)
class FoldScores:
    index: int
    n_train: int
    n_test: int
    train: dict[str, float]
    test: dict[str, float]
    # (Σ(y - pred)², Σ(y - baseline)²) on the test rows; the baseline is the zero forecast
    # (a return of 0), or in target mode the training window's mean
    test_os: tuple[float, float] = (0.0, 0.0)
    learned: bool = True  # the training rows got more than one prediction

    @property
    def test_r2_os(self) -> float:
        return r2_os([self.test_os])


def learned_nothing(folds: list[FoldScores]) -> bool:
    """No fold's model learned anything: each predicts one value whatever the features."""
    return bool(folds) and not any(f.learned for f in folds)


@dataclass
class TrialResult:
    """What one trial produced; ``model`` is the deployable booster (latest window)."""

    index: int
    hyperparameters: dict[str, Any]
    folds: list[FoldScores]
    model: xgb.Booster
    example: np.ndarray
    seconds: float
    importance: ImportanceReport | None = None
    importance_skipped: str | None = None
    task: Task = REGRESSION
    trading: TradingReport | None = None  # OHLCV mode only

    @property
    def degenerate(self) -> bool:
        return learned_nothing(self.folds)

    def averages(self) -> dict[str, float]:
        """``avg_{part}_{score}`` over the folds where the score is defined, ``avg_test_r2_os``
        over every test row, ``{std,min,median}_test_{score}`` over the folds where defined, and
        ``num_folds``."""
        out: dict[str, float] = {}
        for part in PARTS:
            for score in self.task.scores:
                out[f"avg_{part}_{score}"] = average(getattr(f, part)[score] for f in self.folds)
        if not self.task.classifies:  # against the zero forecast: a regression's comparison
            out["avg_test_r2_os"] = r2_os(f.test_os for f in self.folds)
        for score in self.task.scores:
            values = aggregates(f.test[score] for f in self.folds)
            out.update({f"{name}_test_{score}": values[name] for name in AGGREGATES})
        out["num_folds"] = float(len(self.folds))
        if self.trading is not None:
            out.update(self.trading.metrics())
        return out

    def folds_tag(self) -> tuple[str | None, list[str]]:
        """The ``podium.folds`` tag: per-fold test values of the task's scores (r2, rmse, mae for
        a regression) as compact JSON, each list that fits MLflow's tag limit; and the scores
        left out."""
        per_fold = {score: [f.test[score] for f in self.folds] for score in self.task.scores}
        if self.trading is not None:
            per_fold.update({score: self.trading.per_fold(score) for score in FOLD_TAG_SCORES})
        return fitting_folds_tag(per_fold, MAX_TAG_LENGTH)

    def unscored_reason(self) -> str | None:
        """Why the task's main metric (``avg_test_r2``, ``avg_test_auc``) is not finite, or None."""
        return unscored_reason([f.test[self.task.main] for f in self.folds], self.task)

    def fold_series(self) -> list[tuple[str, float, int]]:
        """``({part}_{score}, value, fold index)`` for every fold (and ``test_r2_os``), for a
        per-fold curve."""
        return (
            [
                (f"{part}_{score}", getattr(f, part)[score], f.index)
                for f in self.folds
                for part in PARTS
                for score in self.task.scores
            ]
            + [("test_r2_os", f.test_r2_os, f.index) for f in self.folds if not self.task.classifies]
            + (self.trading.fold_series() if self.trading is not None else [])
        )


def fold_plan(dataset: Dataset, config: TrainerConfig) -> FoldPlan:
    """The folds of ``dataset`` under ``config``: purged of the last ``horizon`` rows of each
    training window, the ``embargo`` rows at the start of each test window left out, training
    windows where the target does not vary skipped."""
    wf = config.walk_forward
    return plan_folds(
        dataset.times,
        wf.train_months,
        wf.test_months,
        wf.window,
        wf.min_test_rows,
        purge=config.horizon,
        embargo=config.embargo,
        target=dataset.y,
    )


class Prepared:
    """Data, folds and cached DMatrices of one process; reused by every trial it runs."""

    def __init__(self, dataset: Dataset, config: TrainerConfig) -> None:
        wf = config.walk_forward
        self.dataset = dataset
        self.config = config
        self.task = config.resolved_task()
        self.folds: list[Fold] = fold_plan(dataset, config).folds
        self.final: slice = latest_window(dataset.times, wf.train_months, wf.window)
        self.fixed: dict[str, Any] = {
            "objective": self.task.objective(config.xgboost.objective),
            "tree_method": config.xgboost.tree_method,
            "max_bin": config.xgboost.max_bin,
            "nthread": config.xgboost.nthread,
            "verbosity": 0,
        }
        self.scales_target = scales_target(self.fixed["objective"])
        # trading scores: the position's threshold on a prediction (P(up) for a classifier)
        self.threshold = 0.5 if self.task.classifies else 0.0
        self.periods_per_year = periods_per_year(dataset.times)
        self._matrices: dict[tuple[int, int], xgb.QuantileDMatrix] = {}

    def scale(self, rows: slice) -> TargetScale:
        """How the target of training window ``rows`` is standardised (identity for a log-link
        objective)."""
        if not self.scales_target:
            return TargetScale.identity()
        return TargetScale.of(self.dataset.y[rows])

    def baseline(self, train: slice) -> float:
        """The forecast ``test_r2_os`` is measured against: a return of 0 (OHLCV mode), or the
        training window's mean of the user's target."""
        return float(np.mean(self.dataset.y[train])) if self.dataset.mode == "target" else 0.0

    def matrix(self, rows: slice) -> xgb.QuantileDMatrix:
        """The training matrix of ``rows`` (its target standardised), built on first use.

        It carries no feature names: XGBoost would check them on every boosting round (a
        third of the training time with 150 features); the deployable model gets them after.
        """
        key = (rows.start, rows.stop)
        if key not in self._matrices:
            ds = self.dataset
            self._matrices[key] = xgb.QuantileDMatrix(
                ds.X[rows],
                label=self.scale(rows).standardised(ds.y[rows]),
                max_bin=self.config.xgboost.max_bin,
                nthread=self.config.xgboost.nthread,
            )
        return self._matrices[key]

    def booster_params(self, hyperparameters: dict[str, Any], seed: int) -> tuple[dict[str, Any], int]:
        """Native ``xgb.train`` parameters and the number of boosting rounds."""
        params = dict(self.fixed, seed=seed)
        rounds = 100
        for name, value in hyperparameters.items():
            native = HYPERPARAMETERS[name]
            if native == "num_boost_round":
                rounds = int(value)
            else:
                params[native] = value
        return params, rounds


def run_trial(prepared: Prepared, index: int, hyperparameters: dict[str, Any], seed: int) -> TrialResult:
    """Train and score every fold, then train the deployable model on the latest window."""
    started = time.perf_counter()
    ds = prepared.dataset
    task = prepared.task
    params, rounds = prepared.booster_params(hyperparameters, seed)
    fold_scores: list[FoldScores] = []
    # for importance: each fold's booster (in standardised units), its scale and test rows
    held_out: list[tuple[xgb.Booster, TargetScale, np.ndarray, np.ndarray]] = []
    trades: list[FoldTrades] = []
    for fold in prepared.folds:
        scale = prepared.scale(fold.train)
        booster = xgb.train(params, prepared.matrix(fold.train), num_boost_round=rounds)
        held_out.append((booster, scale, ds.X[fold.test], ds.y[fold.test]))
        pred_train = scale.to_data(booster.inplace_predict(ds.X[fold.train]))
        pred_test = scale.to_data(booster.inplace_predict(ds.X[fold.test]))
        fold_scores.append(
            FoldScores(
                index=fold.index,
                n_train=fold.n_train,
                n_test=fold.n_test,
                train=task_scores(task, ds.y[fold.train], pred_train),
                test=task_scores(task, ds.y[fold.test], pred_test),
                test_os=oos_sums(ds.y[fold.test], pred_test, prepared.baseline(fold.train)),
                learned=bool(np.ptp(pred_train) > 0),  # a tree split, with leaves that differ
            )
        )
        if ds.returns is not None and ds.bar_returns is not None:
            trades.append(
                fold_trades(
                    ds.times[fold.test],
                    pred_test,
                    ds.returns[fold.test],
                    ds.bar_returns[fold.test],
                    threshold=prepared.threshold,
                    cost=prepared.config.cost_bps / 10_000,
                    ppy=prepared.periods_per_year,
                )
            )
    model = xgb.train(params, prepared.matrix(prepared.final), num_boost_round=rounds)
    model = in_data_units(model, prepared.scale(prepared.final))
    model.feature_names = list(ds.feature_names)
    example = ds.X[prepared.final][-EXAMPLE_ROWS:]
    report: ImportanceReport | None = None
    skipped: str | None = None
    settings = prepared.config.importance
    if settings.enabled and learned_nothing(fold_scores):
        skipped = DEGENERATE_REASON  # every permutation would score exactly 0
    elif settings.enabled:
        # only the boosters importance reads are rescaled (a few tens of ms each)
        used = held_out if settings.holdout == "pooled" else held_out[-1:]
        report, skipped = for_trial(
            [(in_data_units(b, scale), X, y) for b, scale, X, y in used],
            ds.feature_names,
            holdout=settings.holdout,
            n_repeats=settings.n_repeats,
            seed=settings.seed,
            min_rows=settings.min_rows,
            scoring=task.importance_scoring,
        )
    return TrialResult(
        index=index,
        hyperparameters=dict(hyperparameters),
        folds=fold_scores,
        model=model,
        example=example,
        seconds=time.perf_counter() - started,
        importance=report,
        importance_skipped=skipped,
        task=task,
        trading=(
            TradingReport(tuple(trades), tuple(f.index for f in prepared.folds), prepared.periods_per_year)
            if ds.returns is not None
            else None
        ),
    )
