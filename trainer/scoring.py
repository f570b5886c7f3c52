"""Scores of a fold and their averages over folds (pure: arrays in, numbers out).

A per-fold value can be undefined: R² of a constant target (or of a single row), and ROC AUC of
rows that hold one class only, have no meaning. It is kept as NaN for that fold, and an average
is taken over the folds where the value is defined, so one undefined fold never turns a
trial's ``avg_*`` into NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from trainer.tasks import CLASSIFICATION_SCORES, REGRESSION_SCORES, Task

SCORES = REGRESSION_SCORES
PARTS = ("train", "test")
# Probabilities are clipped this far from 0 and 1 before the log loss takes their logarithm.
LOGLOSS_EPS = 1e-15


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


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """``sklearn.metrics.roc_auc_score(y, score)`` for 0/1 labels, bit for bit; NaN when ``y``
    holds one class only.

    The same steps as sklearn's ``roc_curve`` + ``auc``: rows sorted by descending score, true
    and false positives counted at each distinct score, collinear points dropped, and the
    trapezoids summed by one ``np.sum`` (the dropped points change the rounding, so they are
    dropped here too). Without sklearn's input checks, so a permutation's score costs little.
    """
    labels = np.asarray(y)
    if len(labels) == 0 or labels.min() == labels.max():
        return math.nan
    values = np.asarray(score)
    order = np.argsort(values, kind="stable")[::-1]  # ties: counted together, order irrelevant
    values, truth = values[order], labels[order].astype(np.float64)
    thresholds = np.concatenate([np.nonzero(np.diff(values))[0], [truth.size - 1]])
    tps = np.cumsum(truth)[thresholds]
    fps = 1 + thresholds.astype(np.float64) - tps
    if fps.shape[0] > 2:
        corners = np.concatenate([[True], np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), [True]])
        fps, tps = fps[corners], tps[corners]
    fps = np.concatenate([[0.0], fps])
    tps = np.concatenate([[0.0], tps])
    fpr, tpr = fps / fps[-1], tps / tps[-1]
    return float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2.0, dtype=np.float64))


def classification_scores(y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """ROC AUC, log loss, accuracy (probability above 0.5 is class 1, as ``XGBClassifier``
    predicts) and Brier score of probabilities ``prob`` against 0/1 labels ``y``."""
    if len(y) == 0:
        return dict.fromkeys(CLASSIFICATION_SCORES, math.nan)
    p = np.asarray(prob, dtype=np.float64)
    clipped = np.clip(p, LOGLOSS_EPS, 1 - LOGLOSS_EPS)
    return {
        "auc": roc_auc(y, prob),
        "logloss": float(-np.mean(y * np.log(clipped) + (1 - y) * np.log1p(-clipped))),
        "accuracy": float(np.mean((p > 0.5) == (y > 0.5))),
        "brier": float(np.mean((p - y) ** 2)),
    }


def task_scores(task: Task, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The task's scores of ``pred`` (values, or class-1 probabilities) against ``y``."""
    return classification_scores(y, pred) if task.classifies else scores(y, pred)


def average(values: Iterable[float]) -> float:
    """Mean of the finite values (numpy's, as before any was undefined); NaN when none is finite."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def unscored_reason(test_values: list[float], task: Task | None = None) -> str | None:
    """Why a trial has no finite ``avg_test_{main}`` (None when it has one); ``test_values`` are
    the per-fold test values of the task's main score (R² by default)."""
    if not test_values:
        return "no fold was scored"
    if any(math.isfinite(v) for v in test_values):
        return None
    if task is not None and task.classifies:
        return (
            f"test AUC is undefined on all {len(test_values)} folds (every test window holds one class only)"
        )
    return (
        f"test R² is undefined on all {len(test_values)} folds "
        "(the target is constant, or there is one row, in every test window)"
    )


# --- Against the zero forecast ------------------------------------------------------------------


def oos_sums(y: np.ndarray, pred: np.ndarray, baseline: float) -> tuple[float, float]:
    """``(Σ(y − pred)², Σ(y − baseline)²)`` of one test window: the two sums of Campbell &
    Thompson's out-of-sample R², kept apart so that windows can be pooled."""
    y64 = np.asarray(y, dtype=np.float64)
    err = y64 - np.asarray(pred, dtype=np.float64)
    off = y64 - baseline
    return float(np.dot(err, err)), float(np.dot(off, off))


def r2_os(sums: Iterable[tuple[float, float]]) -> float:
    """``1 − Σ(y − pred)² / Σ(y − baseline)²`` over the pooled windows; NaN when the baseline
    forecast is exact on every row (nothing to beat)."""
    pairs = list(sums)
    sse = sum(a for a, _ in pairs)
    sso = sum(b for _, b in pairs)
    return 1.0 - sse / sso if sso > 0 else math.nan


# --- Over the folds ----------------------------------------------------------------------------

AGGREGATES = ("std", "min", "median")
FOLD_TAG_DIGITS = 6


def aggregates(values: Iterable[float]) -> dict[str, float]:
    """Population standard deviation, minimum and median of the finite values (NaN when none)."""
    finite = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
    if not len(finite):
        return dict.fromkeys(AGGREGATES, math.nan)
    return {"std": float(finite.std()), "min": float(finite.min()), "median": float(np.median(finite))}


def _compact(value: float) -> str:
    """``value`` to 6 significant digits as a JSON number, as short as it goes (``null`` when
    undefined): ``-0.0123457``, ``1.23457e-5``."""
    if not math.isfinite(value):
        return "null"
    text = f"{value:.{FOLD_TAG_DIGITS}g}"
    mantissa, _, exponent = text.partition("e")
    if exponent:
        text = f"{mantissa}e{int(exponent)}"
    return text


def folds_tag(per_fold: dict[str, list[float]]) -> str:
    """Compact JSON ``{"test_r2": [...], "test_rmse": [...], "test_mae": [...]}``: each score's
    per-fold test values in fold order (scores in the order given), 6 significant digits,
    ``null`` where undefined."""
    parts = (
        f'"test_{score}":[{",".join(_compact(v) for v in values)}]' for score, values in per_fold.items()
    )
    return "{" + ",".join(parts) + "}"


def fitting_folds_tag(per_fold: dict[str, list[float]], limit: int) -> tuple[str | None, list[str]]:
    """The ``podium.folds`` tag with each score's list that fits in ``limit`` characters, tried
    in the order given (the task's main score first, the one a selection rule reads by default),
    and the scores left out (``test_rmse``...); no tag when not even the first fits.

    MLflow cuts a longer tag value, which would leave broken JSON. At 500 folds the main
    score's list alone fits (about 5,500 characters), all three do not."""
    kept: dict[str, list[float]] = {}
    left_out: list[str] = []
    for score, values in per_fold.items():
        if len(folds_tag({**kept, score: values})) <= limit:
            kept[score] = values
        else:
            left_out.append(f"test_{score}")
    return (folds_tag(kept) if kept else None), left_out
