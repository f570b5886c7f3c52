"""One walk-forward trial: train per fold, score, and train the deployable model.

``Prepared`` holds what does not change between trials (the data, the folds and each fold's
``QuantileDMatrix``), so a process builds it once and every trial it runs reuses it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import xgboost as xgb

from trainer.config import HYPERPARAMETERS, TrainerConfig
from trainer.data import Dataset
from trainer.importance import ImportanceReport, for_trial
from trainer.scoring import PARTS, average, task_scores, unscored_reason
from trainer.splits import Fold, latest_window, walk_forward_splits
from trainer.tasks import REGRESSION, Task

# Rows of the input example logged with the model.
EXAMPLE_ROWS = 5


@dataclass(frozen=True)
class FoldScores:
    index: int
    n_train: int
    n_test: int
    train: dict[str, float]
    test: dict[str, float]


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

    def averages(self) -> dict[str, float]:
        """``avg_{part}_{score}`` over the folds where the score is defined, and ``num_folds``."""
        out: dict[str, float] = {}
        for part in PARTS:
            for score in self.task.scores:
                out[f"avg_{part}_{score}"] = average(getattr(f, part)[score] for f in self.folds)
        out["num_folds"] = float(len(self.folds))
        return out

    def unscored_reason(self) -> str | None:
        """Why the task's main metric (``avg_test_r2``, ``avg_test_auc``) is not finite, or None."""
        return unscored_reason([f.test[self.task.main] for f in self.folds], self.task)

    def fold_series(self) -> list[tuple[str, float, int]]:
        """``({part}_{score}, value, fold index)`` for every fold, for a per-fold curve."""
        return [
            (f"{part}_{score}", getattr(f, part)[score], f.index)
            for f in self.folds
            for part in PARTS
            for score in self.task.scores
        ]


class Prepared:
    """Data, folds and cached DMatrices of one process; reused by every trial it runs."""

    def __init__(self, dataset: Dataset, config: TrainerConfig) -> None:
        wf = config.walk_forward
        self.dataset = dataset
        self.config = config
        self.task = config.resolved_task()
        self.folds: list[Fold] = walk_forward_splits(
            dataset.times, wf.train_months, wf.test_months, wf.window, wf.min_test_rows
        )
        self.final: slice = latest_window(dataset.times, wf.train_months, wf.window)
        self.fixed: dict[str, Any] = {
            "objective": self.task.objective(config.xgboost.objective),
            "tree_method": config.xgboost.tree_method,
            "max_bin": config.xgboost.max_bin,
            "nthread": config.xgboost.nthread,
            "verbosity": 0,
        }
        self._matrices: dict[tuple[int, int], xgb.QuantileDMatrix] = {}

    def matrix(self, rows: slice) -> xgb.QuantileDMatrix:
        """The training matrix of ``rows``, built on first use.

        It carries no feature names: XGBoost would check them on every boosting round (a
        third of the training time with 150 features); the deployable model gets them after.
        """
        key = (rows.start, rows.stop)
        if key not in self._matrices:
            ds = self.dataset
            self._matrices[key] = xgb.QuantileDMatrix(
                ds.X[rows],
                label=ds.y[rows],
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
    held_out: list[tuple[xgb.Booster, np.ndarray, np.ndarray]] = []  # for importance
    for fold in prepared.folds:
        booster = xgb.train(params, prepared.matrix(fold.train), num_boost_round=rounds)
        held_out.append((booster, ds.X[fold.test], ds.y[fold.test]))
        pred_train = booster.inplace_predict(ds.X[fold.train])
        pred_test = booster.inplace_predict(ds.X[fold.test])
        fold_scores.append(
            FoldScores(
                index=fold.index,
                n_train=fold.n_train,
                n_test=fold.n_test,
                train=task_scores(task, ds.y[fold.train], np.asarray(pred_train, dtype="float64")),
                test=task_scores(task, ds.y[fold.test], np.asarray(pred_test, dtype="float64")),
            )
        )
    model = xgb.train(params, prepared.matrix(prepared.final), num_boost_round=rounds)
    model.feature_names = list(ds.feature_names)
    example = ds.X[prepared.final][-EXAMPLE_ROWS:]
    report: ImportanceReport | None = None
    skipped: str | None = None
    settings = prepared.config.importance
    if settings.enabled:
        report, skipped = for_trial(
            held_out,
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
    )
