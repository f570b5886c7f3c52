"""Trading scores of a walk-forward trial: what a trader trades on (pure: arrays in, numbers out).

Per test fold, ŷ is the prediction (a return, or P(up) for the direction task), R the realised
return of the task's horizon and r the next bar's log return. The strategy holds
p_t = sign(ŷ_t − threshold) (threshold 0, or 0.5 for P(up)), rebalanced every bar, and earns
s_t = p_t · r_{t+1} − c · |p_t − p_{t−1}|; every fold starts flat, so each fold pays to open.
The scores follow qlib's signal analysis and alphalens: the rank IC (Spearman) of ŷ and R, the
hit rate, the annualised mean and Sharpe ratio of s, and the turnover. Over the folds' test bars
stitched in time order (the out-of-sample path) the same Sharpe ratio, the drawdown and the
higher moments the Deflated Sharpe Ratio needs (Bailey & López de Prado, 2014).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.stats import kurtosis, rankdata, skew

from trainer.scoring import AGGREGATES, aggregates, average

# Per-fold scores, logged as test_{score} with step = fold.
SCORES = ("ic", "hit_rate", "return", "sharpe", "turnover")
# The per-fold scores the podium.folds tag carries after the task's own.
FOLD_TAG_SCORES = ("ic", "sharpe")
# Why a trial in --target mode has no trading scores (param trading_scores).
TARGET_MODE = "none: target mode"
DAYS_PER_YEAR = 365.25
NS_PER_DAY = 86_400 * 10**9


def periods_per_year(times: np.ndarray) -> float:
    """Bars per year over the rows kept: (rows − 1) / (span in days / 365.25), so trading hours
    and holidays need no calendar; NaN for fewer than two rows or no span."""
    if len(times) < 2:
        return math.nan
    span = np.asarray(times[[0, -1]]).astype("datetime64[ns]").astype(np.int64)
    days = float(span[1] - span[0]) / NS_PER_DAY
    return (len(times) - 1) / (days / DAYS_PER_YEAR) if days > 0 else math.nan


def rank_ic(pred: np.ndarray, realised: np.ndarray) -> float:
    """Spearman rank correlation of ``pred`` and ``realised`` (average ranks for ties); NaN when
    either is constant or there are fewer than two rows."""
    if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(realised) == 0:
        return math.nan
    a = rankdata(pred)
    b = rankdata(realised)
    a -= a.mean()
    b -= b.mean()
    return float(np.dot(a, b) / math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b))))


def sharpe(s: np.ndarray, ppy: float) -> float:
    """mean(s) / std(s, ddof=1) · √ppy; NaN for fewer than two bars or no variation."""
    if len(s) < 2:
        return math.nan
    sd = float(np.std(s, ddof=1))
    return float(np.mean(s)) / sd * math.sqrt(ppy) if sd > 0 else math.nan


def annual_return(s: np.ndarray, ppy: float) -> float:
    return float(np.mean(s)) * ppy if len(s) else math.nan


def max_drawdown(s: np.ndarray) -> float:
    """The largest fall of the cumulative sum of ``s`` from its running peak (the path starts at
    0 before the first bar), a positive number in log-return units; 0 when it never falls."""
    if not len(s):
        return math.nan
    path = np.concatenate([[0.0], np.cumsum(s)])
    return float(np.max(np.maximum.accumulate(path) - path))


@dataclass(frozen=True)
class FoldTrades:
    """One test fold's bars with a known next return: time, position, strategy and next-bar
    returns, and its scores; ``predictions`` and ``realised`` are the fold's ŷ and R, every row."""

    times: np.ndarray
    positions: np.ndarray
    strategy: np.ndarray
    bar_returns: np.ndarray
    scores: dict[str, float]
    predictions: np.ndarray | None = None
    realised: np.ndarray | None = None


def fold_trades(
    times: np.ndarray,
    pred: np.ndarray,
    realised: np.ndarray,
    bar_returns: np.ndarray,
    *,
    threshold: float,
    cost: float,
    ppy: float,
) -> FoldTrades:
    """The strategy of one test fold and its scores; ``cost`` is a fraction per unit of position
    change (``cost_bps`` / 10,000). Bars whose next return is unknown are left out."""
    predictions, outcome = np.asarray(pred, np.float64), np.asarray(realised, np.float64)
    ic = rank_ic(predictions, outcome)
    known = np.isfinite(bar_returns)
    if not known.all():
        times, pred, bar_returns = times[known], pred[known], bar_returns[known]
    r = np.asarray(bar_returns, np.float64)
    p = np.sign(np.asarray(pred, np.float64) - threshold)
    change = np.abs(np.diff(p, prepend=0.0))
    s = p * r - cost * change if cost else p * r
    traded = (p != 0) & (r != 0)
    hits = int(np.count_nonzero(np.sign(p[traded]) == np.sign(r[traded])))
    scores = {
        "ic": ic,
        "hit_rate": hits / int(traded.sum()) if traded.any() else math.nan,
        "return": annual_return(s, ppy),
        "sharpe": sharpe(s, ppy),
        "turnover": float(change.mean()) if len(change) else math.nan,
    }
    return FoldTrades(times, p, s, r, scores, predictions, outcome)


@dataclass(frozen=True)
class TradingReport:
    """A trial's trading scores: per fold, over the folds, and over the out-of-sample path."""

    folds: tuple[FoldTrades, ...]
    indices: tuple[int, ...]  # each fold's index (the metric's step)
    ppy: float

    def path(self) -> FoldTrades:
        """Every fold's bars stitched in time order (the folds are in time order already)."""
        parts = self.folds
        return FoldTrades(
            np.concatenate([f.times for f in parts]) if parts else np.zeros(0, "datetime64[ns]"),
            np.concatenate([f.positions for f in parts]) if parts else np.zeros(0),
            np.concatenate([f.strategy for f in parts]) if parts else np.zeros(0),
            np.concatenate([f.bar_returns for f in parts]) if parts else np.zeros(0),
            {},
        )

    def metrics(self) -> dict[str, float]:
        """``{avg,std,min,median}_test_{score}``, ``ic_ir``, ``ic_t`` and the ``oos_*`` scores."""
        out: dict[str, float] = {}
        for score in SCORES:
            values = [f.scores[score] for f in self.folds]
            out[f"avg_test_{score}"] = average(values)
            spread = aggregates(values)
            out.update({f"{name}_test_{score}": spread[name] for name in AGGREGATES})
        out.update(ic_summary(f.scores["ic"] for f in self.folds))
        out.update(path_scores(self.path().strategy, self.ppy))
        return out

    def fold_series(self) -> list[tuple[str, float, int]]:
        """``(test_{score}, value, fold index)`` for every fold."""
        return [
            (f"test_{score}", f.scores[score], index)
            for f, index in zip(self.folds, self.indices, strict=True)
            for score in SCORES
        ]

    def per_fold(self, score: str) -> list[float]:
        return [f.scores[score] for f in self.folds]


def ic_summary(ics: Iterable[float]) -> dict[str, float]:
    """``ic_ir`` = mean / std (ddof=1) of the defined ICs, and ``ic_t`` = ic_ir · √k."""
    defined = np.array([v for v in ics if math.isfinite(v)], dtype=np.float64)
    k = len(defined)
    sd = float(np.std(defined, ddof=1)) if k >= 2 else 0.0
    ir = float(np.mean(defined)) / sd if sd > 0 else math.nan
    return {"ic_ir": ir, "ic_t": ir * math.sqrt(k) if math.isfinite(ir) else math.nan}


def path_scores(s: np.ndarray, ppy: float) -> dict[str, float]:
    """The out-of-sample path's scores: annualised Sharpe and mean, drawdown, bars, and the
    biased skew and Pearson kurtosis (3 for a normal) of the per-bar returns."""
    varies = len(s) >= 2 and float(np.ptp(s)) > 0
    return {
        "oos_sharpe": sharpe(s, ppy),
        "oos_return": annual_return(s, ppy),
        "oos_max_drawdown": max_drawdown(s),
        "oos_bars": float(len(s)),
        "oos_skew": float(skew(s)) if varies else math.nan,
        "oos_kurtosis": float(kurtosis(s, fisher=False)) if varies else math.nan,
    }
