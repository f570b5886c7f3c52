"""Fold scores and their averages: an undefined fold never makes an average NaN."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from trainer.keys import MAX_TAG_LENGTH
from trainer.scoring import (
    aggregates,
    average,
    fitting_folds_tag,
    folds_tag,
    oos_sums,
    r2_os,
    scores,
    unscored_reason,
)
from trainer.worker import folds_left_out


@pytest.mark.parametrize(
    ("y", "pred", "r2_defined"),
    [
        ([1.0, 2.0, 3.0], [1.0, 2.0, 2.0], True),
        ([2.0, 2.0, 2.0], [1.0, 2.0, 3.0], False),  # constant target
        ([2.0], [1.5], False),  # one row
    ],
)
def test_r2_is_nan_where_undefined_and_errors_stay_defined(
    y: list[float], pred: list[float], r2_defined: bool
) -> None:
    """R² is NaN for a constant target or one row; RMSE and MAE are always numbers."""
    got = scores(np.array(y), np.array(pred))
    assert math.isfinite(got["r2"]) is r2_defined
    err = np.array(y) - np.array(pred)
    assert got["rmse"] == pytest.approx(float(np.sqrt(np.mean(err**2))))
    assert got["mae"] == pytest.approx(float(np.mean(np.abs(err))))


def test_average_is_over_the_defined_values() -> None:
    """NaN folds are left out of the mean; with none defined the mean is NaN."""
    assert average([0.2, math.nan, 0.4]) == pytest.approx(0.3)
    assert math.isnan(average([math.nan, math.nan]))
    assert math.isnan(average([]))
    assert average([0.1, 0.2, 0.3]) == float(np.mean([0.1, 0.2, 0.3]))


def test_unscored_reason_only_when_no_fold_has_a_test_r2() -> None:
    """A trial with one defined fold is scored; one with none says why."""
    assert unscored_reason([math.nan, 0.1]) is None
    reason = unscored_reason([math.nan, math.nan])
    assert reason is not None
    assert "undefined on all 2 folds" in reason


def test_r2_os_is_against_the_zero_forecast_pooled_over_every_test_row() -> None:
    """1 − Σ(y − ŷ)² / Σ(y − b)² over all rows of all windows (not a mean of per-window values)."""
    y1, p1 = np.array([0.01, -0.02, 0.03]), np.array([0.0, -0.01, 0.01])
    y2, p2 = np.array([0.05, 0.05]), np.array([0.04, 0.06])
    pooled = r2_os([oos_sums(y1, p1, 0.0), oos_sums(y2, p2, 0.0)])
    y, p = np.concatenate([y1, y2]), np.concatenate([p1, p2])
    assert pooled == pytest.approx(1 - np.sum((y - p) ** 2) / np.sum(y**2))
    assert r2_os([oos_sums(y1, np.zeros(3), 0.0)]) == 0.0  # the zero forecast itself scores 0
    # against a training mean (target mode): predicting that mean scores 0
    assert r2_os([oos_sums(y2, np.full(2, 0.02), 0.02)]) == 0.0
    assert math.isnan(r2_os([oos_sums(np.zeros(3), np.ones(3), 0.0)]))


def test_fold_aggregates_skip_undefined_folds() -> None:
    values = aggregates([0.1, math.nan, -0.3, 0.2])
    assert values == pytest.approx({"std": np.std([0.1, -0.3, 0.2]), "min": -0.3, "median": 0.1})
    assert all(math.isnan(v) for v in aggregates([math.nan]).values())


def test_the_folds_tag_is_compact_json_in_fold_order_with_6_significant_digits() -> None:
    tag = folds_tag({"r2": [-0.0123456789, math.nan], "rmse": [0.00123456789, 1.5e-5], "mae": [2.0, 3e-7]})
    assert tag == '{"test_r2":[-0.0123457,null],"test_rmse":[0.00123457,1.5e-5],"test_mae":[2,3e-7]}'
    assert json.loads(tag) == {
        "test_r2": [-0.0123457, None],
        "test_rmse": [0.00123457, 1.5e-5],
        "test_mae": [2, 3e-7],
    }


def test_the_folds_tag_fits_mlflows_limit_up_to_220_folds_and_keeps_the_main_score_at_500() -> None:
    """At the longest a 6-digit value gets (``-1.23457e-5``), 220 folds of all three scores fit in
    MLflow's 8,000 characters; 500 folds of three cannot at 6 digits (1,500 values of 7+
    characters each), so the tag keeps the lists that fit, the main score first, and the
    worker names the rest in param ``folds_tag``; past ~600 folds no list fits and there is no
    tag."""
    assert MAX_TAG_LENGTH == MAX_TAG_VAL_LENGTH
    widest = -1.23456789e-5
    scores3 = ("r2", "rmse", "mae")
    assert len(folds_tag({s: [widest] * 220 for s in scores3})) <= MAX_TAG_LENGTH
    at_500 = folds_tag({s: [widest] * 500 for s in scores3})
    assert len(at_500) > MAX_TAG_LENGTH
    assert len(folds_tag({s: [0.001234] * 500 for s in scores3})) > MAX_TAG_LENGTH
    assert "test_r2, test_rmse and test_mae" in folds_left_out(["test_r2", "test_rmse", "test_mae"])

    whole, left = fitting_folds_tag({s: [widest] * 220 for s in scores3}, MAX_TAG_LENGTH)
    assert left == []
    assert whole is not None
    assert set(json.loads(whole)) == {"test_r2", "test_rmse", "test_mae"}
    tag, left = fitting_folds_tag({s: [widest] * 500 for s in scores3}, MAX_TAG_LENGTH)
    assert tag is not None
    assert len(tag) <= MAX_TAG_LENGTH
    assert list(json.loads(tag)) == ["test_r2"]
    assert len(json.loads(tag)["test_r2"]) == 500
    assert left == ["test_rmse", "test_mae"]
    assert "test_rmse and test_mae left out" in folds_left_out(left)
    none, left = fitting_folds_tag({s: [widest] * 700 for s in scores3}, MAX_TAG_LENGTH)
    assert none is None
    assert left == ["test_r2", "test_rmse", "test_mae"]
