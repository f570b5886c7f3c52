"""Permutation and SHAP importance (trainer.importance): sklearn's numbers, our artifacts."""

from __future__ import annotations

import csv
import json
import struct
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from sklearn.inspection import permutation_importance
from sklearn.metrics import r2_score, roc_auc_score
from structlog.testing import capture_logs

from trainer import importance, keys, splitpaths

N_FEATURES = 30
PLANTED = (0, 3, 7)


def _data(n_rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, N_FEATURES))
    X[:, 12] = 1.0  # a constant column: the model can never split on it
    X[rng.random(size=X.shape) < 0.02] = np.nan  # missing values go the default way
    y = 2.0 * np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 3]) - 0.5 * np.nan_to_num(X[:, 7])
    return X, y + rng.normal(scale=0.5, size=n_rows)


def _booster(
    X: np.ndarray, y: np.ndarray, rounds: int = 40, objective: str = "reg:squarederror"
) -> xgb.Booster:
    params = {
        "objective": objective,
        "max_depth": 3,
        "eta": 0.2,
        "nthread": 1,
        "colsample_bytree": 0.5,
        "seed": 1,
    }
    return xgb.train(params, xgb.DMatrix(X, label=y), num_boost_round=rounds)


def _regressor(booster: xgb.Booster) -> xgb.XGBRegressor:
    """An sklearn estimator wrapping the very same trees."""
    regressor = xgb.XGBRegressor(n_jobs=1)
    regressor.load_model(bytearray(booster.save_raw()))
    return regressor


@pytest.fixture(scope="module")
def model() -> tuple[xgb.Booster, np.ndarray, np.ndarray]:
    X, y = _data(500)
    return _booster(X[:350], y[:350]), X[350:], y[350:]


@pytest.fixture(scope="module")
def report(model: tuple[xgb.Booster, np.ndarray, np.ndarray]) -> importance.ImportanceReport:
    booster, X, y = model
    names = [f"feature {i}" for i in range(N_FEATURES)]
    result = importance.compute_importance(booster, X, y, names, n_repeats=4, seed=7)
    assert result is not None
    return result


@pytest.mark.parametrize(("n_repeats", "seed"), [(1, 0), (5, 42), (3, 123456)])
@pytest.mark.parametrize("batch_cells", [importance.BATCH_CELLS, 1000])  # one block, many small batches
def test_permutation_importances_equal_sklearns_for_the_same_model(
    model: tuple[xgb.Booster, np.ndarray, np.ndarray], n_repeats: int, seed: int, batch_cells: int
) -> None:
    """Same trees, rows, n_repeats and random_state: sklearn's numbers (batched or one by one)."""
    booster, X, y = model
    expected = permutation_importance(
        _regressor(booster), X, y, scoring="r2", n_repeats=n_repeats, random_state=seed
    )
    baseline, ours = importance.permutation_importances(
        booster, X, y, n_repeats=n_repeats, seed=seed, batch_cells=batch_cells
    )
    np.testing.assert_allclose(ours, expected.importances, rtol=1e-12, atol=1e-14)
    assert baseline == pytest.approx(r2_score(y, _regressor(booster).predict(X)), rel=1e-12)


def test_report_mean_and_std_equal_sklearns(
    model: tuple[xgb.Booster, np.ndarray, np.ndarray], report: importance.ImportanceReport
) -> None:
    booster, X, y = model
    expected = permutation_importance(_regressor(booster), X, y, scoring="r2", n_repeats=4, random_state=7)
    np.testing.assert_allclose(report.importances_mean, expected.importances_mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(report.importances_std, expected.importances_std, rtol=1e-12, atol=1e-14)


def test_a_feature_the_model_never_splits_on_scores_exactly_zero(
    model: tuple[xgb.Booster, np.ndarray, np.ndarray],
) -> None:
    booster, X, y = model
    assert 12 not in importance.used_features(booster, N_FEATURES)
    _, ours = importance.permutation_importances(booster, X, y, n_repeats=3, seed=0)
    assert np.all(ours[12] == 0.0)


def test_a_model_without_splits_has_zero_importance_everywhere() -> None:
    X, y = _data(60)
    stump = xgb.train({"max_depth": 0, "min_split_loss": 1e9, "nthread": 1}, xgb.DMatrix(X, label=y), 2)
    assert len(importance.used_features(stump, N_FEATURES)) == 0
    _, ours = importance.permutation_importances(stump, X, y, n_repeats=2, seed=0)
    assert not ours.any()


def test_a_booster_with_feature_names_is_read_by_column_position() -> None:
    X, y = _data(200)
    names = [f"c{i}" for i in range(N_FEATURES)]
    booster = xgb.train({"max_depth": 2, "nthread": 1}, xgb.DMatrix(X, label=y, feature_names=names), 10)
    used = importance.used_features(booster, N_FEATURES)
    assert set(PLANTED) <= set(used.tolist())
    assert 12 not in used
    report = importance.compute_importance(booster, X, y, names, n_repeats=1, seed=0)
    assert report is not None
    assert report.shap[12] == 0.0


@pytest.mark.parametrize(
    ("y_true", "preds"),
    [
        ([1.0, 2.0, 3.0], [[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [2.0, 2.0, 2.0]]),  # perfect, bad, mean
        ([5.0, 5.0, 5.0], [[5.0, 5.0, 5.0], [4.0, 5.0, 6.0]]),  # constant target
    ],
)
def test_r2_scores_follow_sklearns_finite_conventions(y_true: list[float], preds: list[list[float]]) -> None:
    ours = importance.r2_scores(np.array(y_true), np.array(preds))
    assert ours.tolist() == [r2_score(y_true, p) for p in preds]


def _two_folds() -> list[tuple[xgb.Booster, np.ndarray, np.ndarray]]:
    """Two walk-forward folds: each model with the 200 rows after its training rows."""
    X, y = _data(600, seed=3)
    return [
        (_booster(X[:200], y[:200]), X[200:400], y[200:400]),
        (_booster(X[200:400], y[200:400]), X[400:], y[400:]),
    ]


def test_pooled_importance_pools_each_models_own_sklearn_numbers() -> None:
    folds = _two_folds()
    names = [f"f{i}" for i in range(N_FEATURES)]
    pooled = importance.compute_pooled_importance(folds, names, n_repeats=2, seed=5)
    assert pooled is not None
    expected = np.concatenate(
        [
            permutation_importance(
                _regressor(b), Xf, yf, scoring="r2", n_repeats=2, random_state=5
            ).importances
            for b, Xf, yf in folds
        ],
        axis=1,
    )
    np.testing.assert_allclose(pooled.importances, expected, rtol=1e-12, atol=1e-14)
    assert pooled.n_rows == 400
    assert pooled.holdout == "pooled"


def test_a_trial_uses_its_last_fold_by_default_and_every_fold_when_pooled() -> None:
    """latest: the last fold's model on its own test rows; pooled: all folds; too few rows: why."""
    folds = _two_folds()
    names = [f"f{i}" for i in range(N_FEATURES)]
    latest, reason = importance.for_trial(folds, names, holdout="latest", n_repeats=2, seed=5)
    assert reason is None
    assert latest is not None
    last = importance.compute_importance(*folds[-1], names, n_repeats=2, seed=5)
    assert last is not None
    assert np.array_equal(latest.importances, last.importances)
    assert (latest.holdout, latest.n_rows) == ("latest", 200)
    pooled, reason = importance.for_trial(folds, names, holdout="pooled", n_repeats=2, seed=5)
    assert reason is None
    assert pooled is not None
    assert (pooled.holdout, pooled.n_rows) == ("pooled", 400)
    few = [(booster, X[:5], y[:5]) for booster, X, y in folds]
    assert importance.for_trial(few, names, holdout="pooled", n_repeats=2, seed=5) == (
        None,
        "only 5 held-out rows, at least 10 needed",
    )


def test_shap_importance_is_mean_absolute_pred_contribs_without_bias(
    model: tuple[xgb.Booster, np.ndarray, np.ndarray], report: importance.ImportanceReport
) -> None:
    booster, X, _ = model
    contribs = booster.predict(xgb.DMatrix(X), pred_contribs=True).astype(np.float64)
    np.testing.assert_allclose(report.shap, np.abs(contribs[:, :-1]).mean(axis=0), rtol=1e-12)
    assert report.shap[12] == 0.0


def test_planted_features_rank_on_top_in_both_importances(report: importance.ImportanceReport) -> None:
    assert set(report.order()[:3].tolist()) == set(PLANTED)
    assert set(report.shap_order()[:3].tolist()) == set(PLANTED)


def test_fewer_than_ten_held_out_rows_skip_importance_with_a_warning(
    model: tuple[xgb.Booster, np.ndarray, np.ndarray],
) -> None:
    booster, X, y = model
    names = [f"f{i}" for i in range(N_FEATURES)]
    with capture_logs() as logs:
        result = importance.compute_importance(booster, X[:9], y[:9], names, n_repeats=2, seed=0)
    assert result is None
    assert importance.skip_reason(9) == "only 9 held-out rows, at least 10 needed"
    warning = [e for e in logs if e["event"] == "importance_skipped"]
    assert warning == [
        {
            "event": "importance_skipped",
            "log_level": "warning",
            "reason": "only 9 held-out rows, at least 10 needed",
            "n_rows": 9,
        }
    ]
    assert importance.compute_importance(booster, X[:10], y[:10], names, n_repeats=2, seed=0) is not None


def test_params_list_the_first_fifty_names_and_count_them_all() -> None:
    names = [f"feature_{i}" for i in range(153)]
    params = importance.feature_params(names)
    assert params == {"feature_names": ",".join(names[:50]), "total_features": "153"}


def test_metrics_are_the_top_twenty_and_four_summaries(report: importance.ImportanceReport) -> None:
    metrics = report.metrics()
    means = report.importances_mean
    summary = {"importance_max", "importance_mean", "importance_median", "importance_min"}
    assert summary <= set(metrics)
    per_feature = {k: v for k, v in metrics.items() if k not in summary}
    assert len(per_feature) == importance.TOP_METRICS
    assert sorted(per_feature.values(), reverse=True) == sorted(means, reverse=True)[: importance.TOP_METRICS]
    assert metrics["importance_feature_0"] == pytest.approx(means.max())
    assert metrics["importance_max"] == means.max()
    assert metrics["importance_min"] == means.min()
    assert metrics["importance_mean"] == pytest.approx(means.mean())
    assert metrics["importance_median"] == pytest.approx(float(np.median(means)))
    assert all(keys.is_portable_metric_key(k) for k in metrics)


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def test_artifacts_hold_every_feature_ranked_under_its_original_name(tmp_path: Path) -> None:
    X, y = _data(300, seed=9)
    names = [f"naïve feature/{i} %" for i in range(N_FEATURES)]
    booster = _booster(X[:200], y[:200])
    report = importance.compute_importance(booster, X[200:], y[200:], names, n_repeats=2, seed=1)
    assert report is not None
    paths = report.write_artifacts(tmp_path)
    assert sorted(p.name for p in paths) == sorted(
        [
            "permutation_importance.json",
            "feature_importance.csv",
            "feature_importance.png",
            "shap_importance.csv",
            "shap_importance.png",
        ]
    )
    with (tmp_path / "feature_importance.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["rank", "feature", "importance_mean", "importance_std", "shap_importance"]
    assert [r["feature"] for r in rows] == [names[i] for i in report.order()]
    assert [int(r["rank"]) for r in rows] == list(range(1, N_FEATURES + 1))
    assert [float(r["importance_mean"]) for r in rows] == [report.importances_mean[i] for i in report.order()]

    document = json.loads((tmp_path / "permutation_importance.json").read_text(encoding="utf-8"))
    assert document["scoring"] == "r2"
    assert document["n_repeats"] == 2
    assert document["random_state"] == 1
    assert [f["feature"] for f in document["features"]] == [r["feature"] for r in rows]
    assert len(document["features"][0]["importances"]) == 2

    with (tmp_path / "shap_importance.csv").open(encoding="utf-8", newline="") as handle:
        shap_rows = list(csv.DictReader(handle))
    assert [float(r["shap_importance"]) for r in shap_rows] == sorted(report.shap.tolist(), reverse=True)
    assert {r["feature"] for r in shap_rows} == set(names)


def test_bar_charts_show_twenty_bars_at_the_same_size_however_many_features(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n_features = 160
    X = rng.normal(size=(400, n_features))
    y = X[:, :25] @ rng.normal(size=25) + rng.normal(size=400)
    booster = xgb.train({"max_depth": 3, "nthread": 1}, xgb.DMatrix(X[:300], label=y[:300]), 30)
    names = [f"a rather long engineered feature name number {i} with suffix" for i in range(n_features)]
    report = importance.compute_importance(booster, X[300:], y[300:], names, n_repeats=1, seed=0)
    assert report is not None
    report.write_artifacts(tmp_path / "many")
    width, height = _png_size(tmp_path / "many" / "feature_importance.png")
    assert (width, height) == _png_size(tmp_path / "many" / "shap_importance.png")
    assert 800 <= width <= 1200
    assert height <= 1000  # 20 rows, not 160


def test_skipping_rows_whose_paths_do_not_change_gives_the_same_numbers(
    model: tuple[xgb.Booster, np.ndarray, np.ndarray],
) -> None:
    """Only rows the permutation re-routes are predicted, and not one bit changes."""
    booster, X, y = model
    data = np.ascontiguousarray(X, dtype=np.float32)
    paths = splitpaths.build(booster, data)
    assert paths is not None
    perms = importance.permutation_indices(len(X), 3, 11)
    changed = sum(int(paths.changed(data, perms, c, np.arange(3)).sum()) for c in range(N_FEATURES))
    assert 0 < changed < 3 * len(X) * N_FEATURES
    fast = importance.permutation_importances(booster, X, y, n_repeats=3, seed=11)
    full = importance.permutation_importances(booster, X, y, n_repeats=3, seed=11, skip_unchanged_rows=False)
    assert fast[0] == full[0]
    assert np.array_equal(fast[1], full[1])


def test_models_whose_paths_are_not_read_predict_every_row() -> None:
    X, y = _data(200)
    linear = xgb.train({"booster": "gblinear", "nthread": 1}, xgb.DMatrix(X, label=y), 5)
    assert splitpaths.build(linear, X.astype(np.float32)) is None
    dart = xgb.train({"booster": "dart", "max_depth": 2, "nthread": 1}, xgb.DMatrix(X, label=y), 5)
    assert splitpaths.build(dart, X.astype(np.float32)) is None
    few_rows = _booster(X, y, rounds=3)
    assert splitpaths.build(few_rows, X[: splitpaths.MIN_ROWS - 1].astype(np.float32)) is None


def test_split_conditions_are_read_without_double_rounding() -> None:
    """A decimal just above a float32 midpoint parses to the midpoint as a double; we round up."""
    midpoint = Fraction(1) + Fraction(1, 2**24)
    with localcontext() as exact:
        exact.prec = 80  # enough digits to spell these dyadic numbers exactly
        spelling = str(Decimal(midpoint.numerator) / Decimal(midpoint.denominator) + Decimal(2) ** -60)
    assert np.float32(float(spelling)) == np.float32(1.0)  # the naive double-then-float32 parse
    expected = np.float32(1 + 2**-23)
    assert splitpaths.parse_float32(spelling) == expected
    assert splitpaths.parse_conditions([spelling, "0.5"]).tolist() == [expected, np.float32(0.5)]


# ---------------------------------------------------------------------------------------------
# Classifiers: the drop in ROC AUC, as sklearn's permutation_importance(scoring="roc_auc")
# ---------------------------------------------------------------------------------------------


def _classifier_booster(X: np.ndarray, y: np.ndarray) -> xgb.Booster:
    return _booster(X, y, objective="binary:logistic")


def _classifier(booster: xgb.Booster) -> xgb.XGBClassifier:
    """An sklearn classifier wrapping the very same trees (predict_proba: the booster's output)."""
    classifier = xgb.XGBClassifier(n_jobs=1)
    classifier.load_model(bytearray(booster.save_raw()))
    return classifier


@pytest.fixture(scope="module")
def classifier_model() -> tuple[xgb.Booster, np.ndarray, np.ndarray]:
    X, target = _data(500, seed=4)
    y = (target > np.median(target)).astype(np.float64)
    return _classifier_booster(X[:350], y[:350]), X[350:], y[350:]


@pytest.mark.parametrize(("n_repeats", "seed"), [(1, 0), (5, 42), (3, 123456)])
@pytest.mark.parametrize("batch_cells", [importance.BATCH_CELLS, 1000])
def test_auc_importances_equal_sklearns_bit_for_bit(
    classifier_model: tuple[xgb.Booster, np.ndarray, np.ndarray], n_repeats: int, seed: int, batch_cells: int
) -> None:
    """Same trees, rows, n_repeats and random_state: exactly sklearn's drops in ROC AUC."""
    booster, X, y = classifier_model
    expected = permutation_importance(
        _classifier(booster), X, y, scoring="roc_auc", n_repeats=n_repeats, random_state=seed
    )
    baseline, ours = importance.permutation_importances(
        booster, X, y, n_repeats=n_repeats, seed=seed, batch_cells=batch_cells, scoring="roc_auc"
    )
    assert np.array_equal(ours, expected.importances)
    assert baseline == roc_auc_score(y, _classifier(booster).predict_proba(X)[:, 1])
    assert ours[12].tolist() == [0.0] * n_repeats  # never split on


def test_auc_report_mean_and_std_equal_sklearns_and_say_what_they_measure(
    classifier_model: tuple[xgb.Booster, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    booster, X, y = classifier_model
    names = [f"f{i}" for i in range(N_FEATURES)]
    report = importance.compute_importance(booster, X, y, names, n_repeats=4, seed=7, scoring="roc_auc")
    assert report is not None
    expected = permutation_importance(
        _classifier(booster), X, y, scoring="roc_auc", n_repeats=4, random_state=7
    )
    assert np.array_equal(report.importances_mean, expected.importances_mean)
    assert np.array_equal(report.importances_std, expected.importances_std)
    assert set(report.order()[:2].tolist()) == {0, 3}  # the two strong planted features lead
    report.write_artifacts(tmp_path)
    document = json.loads((tmp_path / importance.PERMUTATION_JSON).read_text(encoding="utf-8"))
    assert document["scoring"] == "roc_auc"


def test_auc_scores_follow_sklearn_with_ties_and_float32() -> None:
    """ROC AUC of many score vectors (ties, float32, few rows) equals roc_auc_score exactly."""
    rng = np.random.default_rng(11)
    for _ in range(300):
        n = int(rng.integers(2, 400))
        y = (rng.random(n) < rng.uniform(0.05, 0.95)).astype(np.float64)
        scores = rng.random((3, n)).astype(np.float32)
        scores[1] = np.round(scores[1] * 4) / 4  # many ties
        ours = importance.auc_scores(y, scores)
        if y.min() == y.max():
            assert np.isnan(ours).all()
            continue
        assert ours.tolist() == [roc_auc_score(y, row) for row in scores]


def test_held_out_rows_of_one_class_leave_the_model_out_and_say_why() -> None:
    """ROC AUC is undefined on one class: such a fold is left out of pooled importance; with
    none left, importance is skipped with that reason."""
    X, target = _data(600, seed=3)
    y = (target > 0).astype(np.float64)
    mixed = (_classifier_booster(X[:200], y[:200]), X[200:400], y[200:400])
    one_class = (mixed[0], X[400:], np.ones(200))
    names = [f"f{i}" for i in range(N_FEATURES)]
    pooled, reason = importance.for_trial(
        [mixed, one_class], names, holdout="pooled", n_repeats=2, seed=5, scoring="roc_auc"
    )
    assert reason is None
    assert pooled is not None
    assert pooled.n_rows == 200
    assert importance.for_trial(
        [mixed, one_class], names, holdout="latest", n_repeats=2, seed=5, scoring="roc_auc"
    ) == (None, importance.ONE_CLASS)


def test_a_classifiers_shap_values_are_log_odds(
    classifier_model: tuple[xgb.Booster, np.ndarray, np.ndarray],
) -> None:
    """SHAP values plus the bias add up to each row's margin: the log-odds of class 1."""
    booster, X, _ = classifier_model
    contribs = booster.predict(xgb.DMatrix(X), pred_contribs=True).astype(np.float64)
    np.testing.assert_allclose(importance.shap_values(booster, X), contribs[:, :-1], rtol=1e-12)
    probability = booster.inplace_predict(X).astype(np.float64)
    np.testing.assert_allclose(contribs.sum(axis=1), np.log(probability / (1 - probability)), atol=1e-4)
