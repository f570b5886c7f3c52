"""Fold scores and their averages: an undefined fold never makes an average NaN."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.scoring import average, scores, unscored_reason


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
