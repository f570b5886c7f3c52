"""The target's scale and the booster moved back into the data's units (real XGBoost boosters)."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from trainer.booster import TargetScale, in_data_units, scales_target

PARAMS = {"max_depth": 4, "eta": 0.1, "nthread": 1, "verbosity": 0, "max_bin": 64}


def _returns(n: int = 1500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features and an hourly-return-sized target (spread ~1e-3) that depends on column 0."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8)).astype("float32")
    y = (0.4 * X[:, 0] + rng.normal(size=n)) * 1e-3 + 5e-5
    return X, y


@pytest.mark.parametrize("objective", ["reg:squarederror", "reg:absoluteerror", "reg:pseudohubererror"])
def test_a_rescaled_booster_predicts_and_explains_in_the_datas_units(objective: str) -> None:
    """Fitted on the standardised target, the rescaled copy predicts ``p * std + mean`` of the
    original, its SHAP values are the original's times std (and still add up to its
    predictions), and the original is left as it was."""
    X, y = _returns()
    scale = TargetScale.of(y)
    booster = xgb.train(
        {**PARAMS, "objective": objective}, xgb.DMatrix(X, label=scale.standardised(y)), num_boost_round=30
    )
    before = booster.inplace_predict(X).copy()
    rescaled = in_data_units(booster, scale)
    expected = scale.to_data(before)
    assert np.abs(rescaled.inplace_predict(X) - expected).max() < 1e-5 * np.std(expected) + 1e-12
    assert np.array_equal(booster.inplace_predict(X), before)
    contribs = rescaled.predict(xgb.DMatrix(X), pred_contribs=True)
    original = booster.predict(xgb.DMatrix(X), pred_contribs=True)
    assert np.allclose(contribs[:, :-1], original[:, :-1] * scale.std, rtol=1e-4, atol=1e-10)
    assert np.allclose(contribs.sum(axis=1), rescaled.inplace_predict(X), rtol=1e-4, atol=1e-9)
    assert float(np.std(rescaled.inplace_predict(X))) == pytest.approx(float(np.std(expected)), rel=1e-4)


def test_the_rescaled_booster_keeps_feature_names_and_survives_a_save() -> None:
    """The copy is a plain booster: it saves and loads like any other, names included."""
    X, y = _returns()
    scale = TargetScale.of(y)
    booster = xgb.train(PARAMS, xgb.DMatrix(X, label=scale.standardised(y)), num_boost_round=10)
    booster.feature_names = [f"f_{i}" for i in range(X.shape[1])]
    rescaled = in_data_units(booster, scale)
    assert rescaled.feature_names == booster.feature_names
    again = xgb.Booster()
    again.load_model(rescaled.save_raw("json"))
    assert np.allclose(again.inplace_predict(X), rescaled.inplace_predict(X))


def test_the_scale_of_a_window() -> None:
    """Mean out, divided by the standard deviation; a constant window keeps its units."""
    scale = TargetScale.of(np.array([1.0, 2.0, 3.0, 4.0]))
    assert scale.mean == 2.5
    assert scale.std == pytest.approx(np.std([1.0, 2.0, 3.0, 4.0]))
    assert np.allclose(scale.to_data(scale.standardised(np.array([7.0, -1.0]))), [7.0, -1.0])
    flat = TargetScale.of(np.full(5, 0.25))
    assert (flat.mean, flat.std) == (0.25, 1.0)
    X, y = _returns(200)
    booster = xgb.train(PARAMS, xgb.DMatrix(X, label=y), num_boost_round=2)
    assert in_data_units(booster, TargetScale.identity()) is booster


def test_only_identity_link_objectives_are_standardised() -> None:
    """Log-link objectives need a positive target and predict through exp: left as given."""
    assert scales_target("reg:squarederror")
    assert scales_target("reg:absoluteerror")
    for objective in ("count:poisson", "reg:gamma", "reg:tweedie", "reg:squaredlogerror"):
        assert not scales_target(objective)
