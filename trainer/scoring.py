"""Scores of a fold and their averages over folds (pure: arrays in, numbers out).

A per-fold value can be undefined: R² of a constant target (or of a single row) has no
meaning. It is kept as NaN for that fold, and an average is taken over the folds where the
value is defined, so one undefined fold never turns a trial's ``avg_*`` into NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

SCORES = ("r2", "rmse", "mae")
PARTS = ("train", "test")


def scores(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """R², RMSE and MAE of ``pred`` against ``y``; R² is NaN for a constant ``y`` or one row."""
    if len(y) == 0:
        return dict.fromkeys(SCORES, math.nan)
    err = y - pred
    sse = float(np.dot(err, err))
    sst = float(np.sum((y - y.mean()) ** 2))
    return {
        "r2": 1.0 - sse / sst if len(y) > 1 and sst > 0 else math.nan,
        "rmse": float(np.sqrt(sse / len(y))),
        "mae": float(np.mean(np.abs(err))),
    }


def average(values: Iterable[float]) -> float:
    """Mean of the finite values (numpy's, as before any was undefined); NaN when none is finite."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def unscored_reason(test_r2: list[float]) -> str | None:
    """Why a trial has no finite ``avg_test_r2`` (None when it has one)."""
    if not test_r2:
        return "no fold was scored"
    if any(math.isfinite(v) for v in test_r2):
        return None
    return (
        f"test R² is undefined on all {len(test_r2)} folds "
        "(the target is constant, or there is one row, in every test window)"
    )
