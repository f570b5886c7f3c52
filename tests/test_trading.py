"""Trading scores and the Deflated Sharpe Ratio, checked against independent implementations:
the IC against ``scipy.stats.spearmanr`` on a fold's real predictions, the per-fold scores
against their definitions written out bar by bar, the DSR, PSR and expected maximum Sharpe
against skfolio's; costs lower the Sharpe ratio; real daily bars (arch's sp500) give finite
numbers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm, spearmanr
from skfolio.measures import (
    deflated_sharpe_ratio,
    expected_max_sharpe_ratio,
    kurtosis,
    probabilistic_sharpe_ratio,
    skew,
)

from tests.support.real_data import arch_file
from trainer.config import load_config, sample_trial
from trainer.data import Dataset
from trainer.prepare import prepare
from trainer.trading import fold_trades, path_scores, periods_per_year
from trainer.train import Prepared, TrialResult, run_trial
from watcher import selection as stats
from watcher import sharpe
from watcher.selection import BoardRun

QUICK = {
    "importance": {"enabled": False},
    "walk_forward": {"train_months": 2, "test_months": 1},
    "search_space": {"n_estimators": {"type": "int", "low": 20, "high": 30}, "max_depth": 3},
}


def quick_trial(
    data: Dataset, cost_bps: float = 0.0, task: str = "regression", index: int = 0
) -> TrialResult:
    config = load_config(None, {**QUICK, "cost_bps": cost_bps, "task": task})
    prepared = Prepared(data, config)
    return run_trial(prepared, index, sample_trial(config.search_space, 7, index), 7 + index)


@pytest.fixture(scope="module")
def small_sample() -> dict[str, Dataset]:
    """Six months of the built-in sample, labelled for each task."""
    out = {}
    for task in ("regression", "direction"):
        config = load_config(None, {**QUICK, "task": task})
        dataset = prepare(config).dataset
        keep = dataset.times < np.datetime64("2023-07-01")
        out[task] = Dataset(
            X=dataset.X[keep],
            y=dataset.y[keep],
            times=dataset.times[keep],
            feature_names=dataset.feature_names,
            source=dataset.source,
            mode=dataset.mode,
            target=dataset.target,
            returns=None if dataset.returns is None else dataset.returns[keep],
            bar_returns=None if dataset.bar_returns is None else dataset.bar_returns[keep],
        )
    return out


@pytest.mark.parametrize("task", ["regression", "direction"])
def test_ic_is_spearman_of_a_folds_predictions_and_forward_returns(
    small_sample: dict[str, Dataset], task: str
) -> None:
    """test_ic is scipy's Spearman correlation of the fold's predictions (P(up) for direction)
    with the realised forward return, not with the 0/1 label."""
    data = small_sample[task]
    result = quick_trial(data, task=task)
    assert result.trading is not None
    prepared_folds = Prepared(data, load_config(None, {**QUICK, "task": task})).folds
    assert len(result.trading.folds) == len(prepared_folds) >= 2
    for trades, fold in zip(result.trading.folds, prepared_folds, strict=True):
        assert trades.predictions is not None
        assert trades.realised is not None
        np.testing.assert_array_equal(trades.realised, data.returns[fold.test])  # type: ignore[index]
        expected = spearmanr(trades.predictions, trades.realised).statistic
        assert trades.scores["ic"] == pytest.approx(expected, abs=1e-12)
        threshold = 0.5 if task == "direction" else 0.0
        np.testing.assert_array_equal(trades.positions, np.sign(trades.predictions - threshold))
    series = {(k, step): v for k, v, step in result.fold_series()}
    assert series[("test_ic", prepared_folds[0].index)] == result.trading.folds[0].scores["ic"]


def test_fold_scores_follow_their_definitions_bar_by_bar() -> None:
    """Hit rate, turnover, annualised return and Sharpe of one fold, written out as loops, with
    a cost, flat predictions and zero returns among the bars."""
    rng = np.random.default_rng(3)
    n = 400
    pred = rng.normal(size=n)
    pred[::17] = 0.0
    r = rng.normal(0, 0.01, size=n)
    r[::23] = 0.0
    times = np.arange(n).astype("datetime64[h]").astype("datetime64[ns]")
    cost, ppy = 0.0005, 2000.0
    got = fold_trades(times, pred, r * 3, r, threshold=0.0, cost=cost, ppy=ppy)
    held, s, hits, traded, changes = 0.0, [], 0, 0, []
    for p_hat, ret in zip(pred, r, strict=True):
        p = 1.0 if p_hat > 0 else -1.0 if p_hat < 0 else 0.0
        changes.append(abs(p - held))
        s.append(p * ret - cost * abs(p - held))
        if p != 0 and ret != 0:
            traded += 1
            hits += (p > 0) == (ret > 0)
        held = p
    series = pd.Series(s)
    assert got.scores["hit_rate"] == pytest.approx(hits / traded)
    assert got.scores["turnover"] == pytest.approx(np.mean(changes))
    assert got.scores["return"] == pytest.approx(series.mean() * ppy)
    assert got.scores["sharpe"] == pytest.approx(series.mean() / series.std() * math.sqrt(ppy))
    assert got.scores["ic"] == pytest.approx(spearmanr(pred, r * 3).statistic)
    np.testing.assert_allclose(got.strategy, s)


def test_periods_per_year_counts_bars_over_the_span() -> None:
    """Hourly 24/7 bars give 8,766 a year; business days about 261."""
    hourly = pd.date_range("2023-01-01", periods=24 * 366, freq="h").to_numpy()
    assert periods_per_year(hourly) == pytest.approx(24 * 365.25)
    days = pd.bdate_range("2020-01-01", "2023-12-31").to_numpy()
    assert 255 < periods_per_year(days) < 265
    assert math.isnan(periods_per_year(hourly[:1]))


def test_costs_lower_the_out_of_sample_sharpe_monotonically(small_sample: dict[str, Dataset]) -> None:
    """The same trial at 0, 1, 5 and 20 bps: the same positions, a lower oos_sharpe each time."""
    results = [quick_trial(small_sample["regression"], cost) for cost in (0.0, 1.0, 5.0, 20.0)]
    sharpes = [r.averages()["oos_sharpe"] for r in results]
    assert all(a > b for a, b in itertools.pairwise(sharpes)), sharpes
    turnovers = {r.averages()["avg_test_turnover"] for r in results}
    assert len(turnovers) == 1


def sharpe_runs(returns: np.ndarray, ppy: float) -> list[sharpe.SharpeRun]:
    """The inputs the watcher reads, made as the trainer makes them (trainer.trading)."""
    out = []
    for column in returns.T:
        scores = path_scores(column, ppy)
        metrics = {"oos_sharpe": scores["oos_sharpe"], **{k: scores[k] for k in sharpe.MOMENTS}}
        run = sharpe.sharpe_run(metrics, {"periods_per_year": repr(ppy)}, "oos_sharpe")
        assert run is not None
        out.append(run)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dsr_psr_and_expected_max_sharpe_equal_skfolio(seed: int) -> None:
    """Skewed, fat-tailed returns of 30 trials: the watcher's numbers equal skfolio's, whose
    kurtosis is the Pearson one (3 for a normal) the trainer logs."""
    rng = np.random.default_rng(seed)
    n_bars, n_trials, ppy = 1500, 30, 252.0
    returns = rng.standard_t(5, size=(n_bars, n_trials)) * 0.01 + rng.normal(0.0005, 0.0005, n_trials)
    returns[:, 0] += np.abs(rng.normal(0, 0.004, n_bars))  # a skewed leader
    runs = sharpe_runs(returns, ppy)
    leader = returns[:, 0]
    assert runs[0].kurtosis == pytest.approx(kurtosis(leader))
    assert runs[0].skew == pytest.approx(skew(leader))
    result = sharpe.deflated(runs, "oos_sharpe")
    trial_srs = returns.mean(axis=0) / returns.std(axis=0, ddof=1)
    assert result.trials == n_trials
    assert result.sr0 == pytest.approx(expected_max_sharpe_ratio(n_trials, float(np.std(trial_srs, ddof=1))))
    assert result.psr == pytest.approx(probabilistic_sharpe_ratio(leader))
    assert result.dsr == pytest.approx(deflated_sharpe_ratio(leader, trial_srs))
    assert result.sr0_annualised == pytest.approx(result.sr0 * math.sqrt(ppy))  # type: ignore[operator]
    # at the minimum track record the PSR against 0 (skfolio's, same SR and moments) is 95%
    sr = runs[0].per_period
    sigma = math.sqrt(1 - skew(leader) * sr + (kurtosis(leader) - 1) / 4 * sr**2)
    assert result.min_trl_bars is not None
    assert norm.cdf(sr * math.sqrt(result.min_trl_bars - 1) / sigma) == pytest.approx(0.95)


def test_no_dsr_says_why() -> None:
    """One run, a leader without the metric, or no run with it: no DSR, and the reason."""
    run = sharpe.SharpeRun(1.0, 252.0, 500.0, 0.0, 3.0)
    assert "at least 2" in (sharpe.deflated([run], "oos_sharpe").reason or "")
    assert "the leader has no finite oos_sharpe" in (
        sharpe.deflated([None, run, run], "oos_sharpe").reason or ""
    )
    missing = sharpe.deflated([None, None], "oos_sharp")
    assert missing.dsr is None
    assert "no ranked run has a finite oos_sharp" in (missing.reason or "")
    assert sharpe.sharpe_run({"oos_sharpe": 1.0}, {"periods_per_year": "252"}, "oos_sharpe") is None


def test_min_dsr_holds_production_tags_back_and_the_summary_says_so() -> None:
    """A board whose leader's DSR is under min_dsr: held back, with PBO's reason kept apart."""
    rng = np.random.default_rng(5)
    returns = rng.normal(0, 0.01, size=(800, 12))
    runs = sharpe_runs(returns, 252.0)
    board = [BoardRun(f"r{i}", list(rng.normal(size=8)), run) for i, run in enumerate(runs)]
    selection = stats.compute(board, higher_is_better=True, blocks=4, sharpe_metric="oos_sharpe")
    assert selection.deflated is not None
    assert selection.deflated.dsr is not None
    dsr = selection.deflated.dsr
    assert dsr < 0.95
    summary = stats.summary(selection, None, "r0", 0.95)
    assert summary.held_back == f"DSR {dsr:.2f} is below min_dsr 0.95"
    assert summary.dsr == dsr
    assert f"DSR {dsr:.2f}" in summary.line
    assert "PBO" in summary.line
    assert stats.summary(selection, None, "r0", round(dsr, 6) - 0.01).held_back is None
    tag = stats.selection_json(selection, metric="m", fold_metric="test_ic", computed_at="now")
    assert tag["dsr"] == pytest.approx(dsr, rel=1e-5)
    assert tag["trials"] == 12
    assert stats.gate_reason_of_tag(tag, None, 0.95) == summary.held_back
    assert stats.gate_reason_of_tag(tag, None, None) is None


def test_real_daily_bars_give_finite_scores() -> None:
    """arch's sp500 daily bars: every trading score of a trial and the DSR over three trials are
    finite; periods_per_year is about 252."""
    config = load_config(
        None,
        {
            **QUICK,
            "data": {"path": str(arch_file("sp500"))},
            "walk_forward": {"train_months": 36, "test_months": 24},
        },
    )
    prepared = Prepared(prepare(config).dataset, config)
    assert 245 < prepared.periods_per_year < 260
    runs = []
    for index in range(3):
        result = run_trial(prepared, index, sample_trial(config.search_space, 1, index), index)
        assert result.trading is not None
        metrics = result.trading.metrics()
        assert all(math.isfinite(v) for v in metrics.values()), metrics
        params = {"periods_per_year": repr(prepared.periods_per_year)}
        runs.append(sharpe.sharpe_run(metrics, params, "oos_sharpe"))
    result = sharpe.deflated(runs, "oos_sharpe")
    for name in ("sr0", "psr", "dsr"):
        value = getattr(result, name)
        assert value is not None, (name, result)
        assert math.isfinite(value), (name, result)
