"""Permutation and SHAP importance of a trained booster on held-out rows.

The permutation numbers equal ``sklearn.inspection.permutation_importance(estimator, X, y,
scoring=scoring, n_repeats=n_repeats, random_state=seed)`` for an ``XGBRegressor`` (scoring
``"r2"``) or an ``XGBClassifier`` (scoring ``"roc_auc"``, a ``binary:logistic`` booster)
wrapping the same booster, but cost a fraction of its time:

- sklearn draws one seed from ``RandomState(seed)`` and gives every column a fresh
  ``RandomState`` of that seed, so all columns see the same sequence of (cumulative) shuffles;
  we draw that sequence once.
- A feature the model never splits on cannot change a prediction: its importance is exactly 0
  and we skip predicting it.
- A row whose tree paths the permuted value does not change keeps its prediction bit for bit;
  only the other rows are predicted (``trainer.splitpaths``, checked against XGBoost's own
  paths before use).
- All permuted copies of several columns go to ``Booster.inplace_predict`` in one call (no
  DMatrix, no estimator validation), and R² is computed for all of them at once (ROC AUC
  one copy at a time, by sklearn's steps without its input checks: ``scoring.roc_auc``).

SHAP importance is the mean |SHAP value| per feature from XGBoost's own TreeSHAP
(``pred_contribs=True``) on the same rows: in the target's units for a regressor, in log-odds
for a classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import structlog
import xgboost as xgb

from trainer import splitpaths
from trainer.importance_report import (
    FEATURE_NAMES_PARAM_COUNT,
    IMPORTANCE_CSV,
    IMPORTANCE_CSV_COLUMNS,
    IMPORTANCE_PNG,
    PERMUTATION_JSON,
    SCORING_LABELS,
    SHAP_CSV,
    SHAP_PNG,
    TOP_METRICS,
    FeatureImportance,
    Holdout,
    ImportanceReport,
    Scoring,
    feature_params,
)
from trainer.scoring import roc_auc

# The report and its artifacts live in trainer.importance_report; they stay importable here.
__all__ = [
    "BATCH_CELLS",
    "FEATURE_NAMES_PARAM_COUNT",
    "IMPORTANCE_CSV",
    "IMPORTANCE_CSV_COLUMNS",
    "IMPORTANCE_PNG",
    "MIN_ROWS",
    "ONE_CLASS",
    "PERMUTATION_JSON",
    "SCORERS",
    "SCORING_LABELS",
    "SHAP_CSV",
    "SHAP_PNG",
    "SKIPPED_TAG",
    "TOP_METRICS",
    "FeatureImportance",
    "Holdout",
    "ImportanceReport",
    "Scoring",
    "auc_scores",
    "compute_importance",
    "compute_pooled_importance",
    "feature_params",
    "for_trial",
    "permutation_importances",
    "permutation_indices",
    "r2_scores",
    "shap_values",
    "skip_reason",
    "used_features",
]

log = structlog.get_logger(__name__)

MIN_ROWS = 10
# Upper bound on the cells of one batched predict call (float32): ~64 MB.
BATCH_CELLS = 16_000_000
SKIPPED_TAG = "importance_skipped"


# ---------------------------------------------------------------------------------------------
# Permutation importance
# ---------------------------------------------------------------------------------------------


def permutation_indices(n_rows: int, n_repeats: int, seed: int) -> np.ndarray:
    """Row order of the permuted column in each repeat, shape ``(n_repeats, n_rows)``.

    Mirrors sklearn's ``_calculate_permutation_scores``: the shuffle index is shuffled in place
    each repeat and applied to the already permuted column, so repeat ``r`` sees the
    composition of the first ``r`` shuffles.
    """
    column_seed = np.random.RandomState(seed).randint(np.iinfo(np.int32).max + 1)
    rng = np.random.RandomState(column_seed)
    shuffling = np.arange(n_rows)
    order = np.arange(n_rows)
    result = np.empty((n_repeats, n_rows), dtype=np.intp)
    for repeat in range(n_repeats):
        rng.shuffle(shuffling)
        order = order[shuffling]
        result[repeat] = order
    return result


def r2_scores(y_true: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """R² of each row of ``predictions`` (shape ``(m, n)``), as ``sklearn.metrics.r2_score``.

    Including its ``force_finite`` conventions: a perfect fit scores 1 and a constant target
    scores 0 instead of NaN/-inf.
    """
    y = np.asarray(y_true, dtype=np.float64)
    preds = np.asarray(predictions, dtype=np.float64)
    numerator = ((y - preds) ** 2).sum(axis=1)
    denominator = ((y - y.mean()) ** 2).sum()
    scores = np.ones(len(preds), dtype=np.float64)
    valid = numerator != 0
    if denominator != 0:
        scores[valid] = 1 - numerator[valid] / denominator
    else:
        scores[valid] = 0.0
    return scores


def auc_scores(y_true: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of ``predictions`` (shape ``(m, n)``), as ``sklearn.metrics.roc_auc_score``."""
    return np.array([roc_auc(y_true, row) for row in predictions], dtype=np.float64)


SCORERS = {"r2": r2_scores, "roc_auc": auc_scores}


def used_features(booster: xgb.Booster, n_features: int) -> np.ndarray:
    """Column indices the booster splits on at least once, in ascending order."""
    split_counts = booster.get_score(importance_type="weight")
    names = booster.feature_names
    position = {name: i for i, name in enumerate(names)} if names else None
    used = set()
    for name in split_counts:
        index = position[name] if position is not None else int(name.removeprefix("f"))
        if index < n_features:
            used.add(index)
    return np.array(sorted(used), dtype=np.intp)


def permutation_importances(
    booster: xgb.Booster,
    X: np.ndarray,
    y: np.ndarray,
    *,
    n_repeats: int,
    seed: int,
    batch_cells: int = BATCH_CELLS,
    skip_unchanged_rows: bool = True,
    scoring: Scoring = "r2",
) -> tuple[float, np.ndarray]:
    """Baseline score (R², or ROC AUC of class-1 probabilities) and the raw importances, shape
    ``(n_features, n_repeats)``: the drop in the score when a column is permuted.

    With ``skip_unchanged_rows``, a row whose tree paths the permutation does not change keeps
    its unpermuted prediction (``trainer.splitpaths``); the numbers are the same either way.
    """
    data = np.ascontiguousarray(X, dtype=np.float32)  # what XGBoost reads anyway
    n_rows, n_features = data.shape
    score = SCORERS[scoring]
    base_pred = np.asarray(booster.inplace_predict(data), dtype=np.float32)
    baseline = float(score(y, base_pred[np.newaxis, :])[0])
    importances = np.zeros((n_features, n_repeats), dtype=np.float64)
    columns = used_features(booster, n_features)
    if len(columns) == 0:
        return baseline, importances
    perms = permutation_indices(n_rows, n_repeats, seed)
    paths = splitpaths.build(booster, data) if skip_unchanged_rows else None
    all_rows = np.ones((n_repeats, n_rows), dtype=bool)
    repeats = np.arange(n_repeats)
    # A block is every repeat of a few columns; its permuted rows are predicted in batches of
    # at most ``batch_cells`` cells, so memory stays bounded however many rows are held out.
    per_block = max(1, batch_cells // (n_rows * n_features * n_repeats))
    per_batch = max(1, batch_cells // n_features)
    for start in range(0, len(columns), per_block):
        block = columns[start : start + per_block]
        masks = np.concatenate(
            [all_rows if paths is None else paths.changed(data, perms, int(c), repeats) for c in block]
        )  # (block columns x repeats, rows): which rows each permuted copy must predict
        unit_columns = np.repeat(block, n_repeats)
        unit_repeats = np.tile(repeats, len(block))
        units, rows = np.nonzero(masks)
        preds = np.tile(base_pred, (len(masks), 1))
        for lo in range(0, len(rows), per_batch):
            unit, row = units[lo : lo + per_batch], rows[lo : lo + per_batch]
            column = unit_columns[unit]
            batch = data[row]
            batch[np.arange(len(row)), column] = data[perms[unit_repeats[unit], row], column]
            preds[unit, row] = booster.inplace_predict(batch)
        importances[block] = baseline - score(y, preds).reshape(len(block), n_repeats)
    return baseline, importances


def shap_values(booster: xgb.Booster, X: np.ndarray) -> np.ndarray:
    """Per-row SHAP values without the bias column, shape ``(n_rows, n_features)``."""
    matrix = xgb.DMatrix(np.asarray(X, dtype=np.float32))
    # Columns are matched by position, as inplace_predict does; the booster may carry names.
    contribs = booster.predict(matrix, pred_contribs=True, validate_features=False)
    return np.asarray(contribs, dtype=np.float64)[:, :-1]


# ---------------------------------------------------------------------------------------------
# Entry points for the trial pipeline
# ---------------------------------------------------------------------------------------------


def skip_reason(n_rows: int, min_rows: int = MIN_ROWS) -> str | None:
    """Why importance cannot be computed on ``n_rows`` held-out rows, or None if it can."""
    if n_rows < min_rows:
        return f"only {n_rows} held-out rows, at least {min_rows} needed"
    return None


ONE_CLASS = "the held-out rows hold one class only, so their ROC AUC is undefined"


def _unusable(X: np.ndarray, y: np.ndarray, min_rows: int, scoring: Scoring) -> str | None:
    """Why one model's held-out rows cannot be scored, or None if they can."""
    reason = skip_reason(len(X), min_rows)
    if reason is None and scoring == "roc_auc" and np.min(y) == np.max(y):
        return ONE_CLASS
    return reason


def compute_importance(
    booster: xgb.Booster,
    X_hold: np.ndarray,
    y_hold: np.ndarray,
    feature_names: list[str],
    *,
    n_repeats: int,
    seed: int,
    min_rows: int = MIN_ROWS,
    scoring: Scoring = "r2",
) -> ImportanceReport | None:
    """Importance of ``booster`` on held-out rows, or None (and a warning) if too few rows
    (or, for ROC AUC, rows of one class only)."""
    return compute_pooled_importance(
        [(booster, X_hold, y_hold)],
        feature_names,
        n_repeats=n_repeats,
        seed=seed,
        min_rows=min_rows,
        holdout="latest",
        scoring=scoring,
    )


def compute_pooled_importance(
    models: Sequence[tuple[xgb.Booster, np.ndarray, np.ndarray]],
    feature_names: list[str],
    *,
    n_repeats: int,
    seed: int,
    min_rows: int = MIN_ROWS,
    holdout: Holdout = "pooled",
    scoring: Scoring = "r2",
) -> ImportanceReport | None:
    """Importance pooled over several models, each on its own held-out rows.

    Each model is permuted exactly as sklearn would with ``random_state=seed``; the raw
    importances of all models are pooled (mean and std over models × repeats) and the SHAP
    values averaged over all their rows. Models whose rows cannot be scored (fewer than
    ``min_rows``; one class only, for ROC AUC) are left out; None if no model is left.
    """
    usable = [(b, X, y) for b, X, y in models if _unusable(X, y, min_rows, scoring) is None]
    if not usable:
        n_rows = max((len(X) for _, X, _ in models), default=0)
        log.warning("importance_skipped", reason=_why_none(models, min_rows, scoring), n_rows=n_rows)
        return None
    for _, X, _ in usable:
        if X.shape[1] != len(feature_names):
            raise ValueError(f"{X.shape[1]} columns but {len(feature_names)} feature names")
    baselines: list[float] = []
    raw: list[np.ndarray] = []
    shap_sums = np.zeros(len(feature_names), dtype=np.float64)
    n_rows = 0
    for booster, X, y in usable:
        baseline, importances = permutation_importances(
            booster, X, y, n_repeats=n_repeats, seed=seed, scoring=scoring
        )
        baselines.append(baseline)
        raw.append(importances)
        shap_sums += np.abs(shap_values(booster, X)).sum(axis=0)
        n_rows += len(X)
    report = ImportanceReport(
        feature_names=tuple(feature_names),
        importances=np.concatenate(raw, axis=1),
        shap=shap_sums / n_rows,
        baseline_scores=tuple(baselines),
        n_rows=n_rows,
        n_repeats=n_repeats,
        seed=seed,
        holdout=holdout,
        scoring=scoring,
    )
    means = report.importances_mean
    log.info(
        "importance_computed",
        holdout=holdout,
        scoring=scoring,
        n_rows=n_rows,
        n_features=len(feature_names),
        top_feature=feature_names[int(report.order()[0])],
        importance_max=float(means.max()),
    )
    return report


def _why_none(
    models: Sequence[tuple[xgb.Booster, np.ndarray, np.ndarray]], min_rows: int, scoring: Scoring
) -> str:
    """Why none of ``models`` can be scored: the reason of the one with the most rows."""
    if not models:
        return skip_reason(0, min_rows) or "no held-out rows"
    _, X, y = max(models, key=lambda m: len(m[1]))
    return _unusable(X, y, min_rows, scoring) or "no held-out rows"


def for_trial(
    held_out: Sequence[tuple[xgb.Booster, np.ndarray, np.ndarray]],
    feature_names: list[str],
    *,
    holdout: Holdout,
    n_repeats: int,
    seed: int,
    min_rows: int = MIN_ROWS,
    scoring: Scoring = "r2",
) -> tuple[ImportanceReport | None, str | None]:
    """A trial's importance from its folds' ``(model, test X, test y)``, in fold order.

    ``latest``: the last fold's model on the latest test window -- the newest rows a model
    of the trial's hyperparameters never trained on (the deployable model trains on them).
    ``pooled``: every fold's model on its own test window. Returns the report, or None and
    the reason it was skipped.
    """
    models = list(held_out) if holdout == "pooled" else list(held_out)[-1:]
    report = compute_pooled_importance(
        models,
        feature_names,
        n_repeats=n_repeats,
        seed=seed,
        min_rows=min_rows,
        holdout=holdout,
        scoring=scoring,
    )
    if report is not None:
        return report, None
    return None, _why_none(models, min_rows, scoring)
