"""Does the leader's Sharpe ratio survive the search? The Deflated Sharpe Ratio.

Pure code (scipy's normal distribution Φ; no I/O). Bailey & López de Prado (2014), "The
Deflated Sharpe Ratio: Correcting for Selection Bias, Backtest Overfitting and Non-Normality",
over the ranked runs that have the rule's ``sharpe_metric`` (an annualised Sharpe ratio),
``oos_bars`` (T), ``oos_skew`` (γ3), ``oos_kurtosis`` (γ4, Pearson: 3 for a normal) and the
param ``periods_per_year``:

- per-period Sharpe SR_i = sharpe_i / √periods_per_year_i; N runs (at least 2), V their sample
  variance (ddof=1);
- the expected maximum Sharpe of N trials of no skill,
  sr0 = √V · ((1 − γ)·Φ⁻¹(1 − 1/N) + γ·Φ⁻¹(1 − 1/(N·e))), γ the Euler–Mascheroni constant;
- for the leader, σ̂ = √(1 − γ3·SR + (γ4 − 1)/4 · SR²): the probabilistic Sharpe ratio
  psr = Φ(SR·√(T−1)/σ̂) against 0, the deflated one dsr = Φ((SR − sr0)·√(T−1)/σ̂) against sr0,
  and the minimum track record 1 + σ̂²·(Φ⁻¹(0.95)/SR)² bars (when SR > 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

EULER_GAMMA = 0.5772156649015329
# The confidence of the minimum track record length.
TRACK_RECORD_CONFIDENCE = 0.95
# What a run needs besides the rule's sharpe_metric: metrics, then the param.
MOMENTS = ("oos_bars", "oos_skew", "oos_kurtosis")
PERIODS_PARAM = "periods_per_year"


@dataclass(frozen=True)
class SharpeRun:
    """One run's inputs: its annualised Sharpe ratio, bars per year, bars, skew and kurtosis."""

    sharpe: float
    periods_per_year: float
    bars: float
    skew: float
    kurtosis: float

    @property
    def per_period(self) -> float:
        return self.sharpe / math.sqrt(self.periods_per_year)


@dataclass(frozen=True)
class Deflated:
    """The DSR of a board's leader (numbers None when ``reason`` says why there are none)."""

    sharpe_metric: str
    trials: int
    sr0: float | None = None  # per period
    sr0_annualised: float | None = None
    leader_sharpe: float | None = None  # as logged (annualised)
    psr: float | None = None
    dsr: float | None = None
    min_trl_bars: float | None = None
    reason: str | None = None

    def fields(self) -> dict[str, Any]:
        """The keys ``podium.selection`` gains."""
        return {
            "sharpe_metric": self.sharpe_metric,
            "trials": self.trials,
            "sr0": _rounded(self.sr0),
            "sr0_annualised": _rounded(self.sr0_annualised),
            "leader_sharpe": _rounded(self.leader_sharpe),
            "psr": _rounded(self.psr),
            "dsr": _rounded(self.dsr),
            "min_trl_bars": _rounded(self.min_trl_bars),
            "dsr_reason": self.reason,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.6g}")


def sharpe_run(
    metrics: Mapping[str, float], params: Mapping[str, str], sharpe_metric: str
) -> SharpeRun | None:
    """A run's inputs from its metrics and params, or None when one is missing or not finite."""
    try:
        values = [float(metrics[sharpe_metric]), float(params[PERIODS_PARAM])]
        values += [float(metrics[name]) for name in MOMENTS]
    except (KeyError, ValueError, TypeError):
        return None
    if not all(math.isfinite(v) for v in values) or values[1] <= 0:
        return None
    sharpe, ppy, bars, skew, kurtosis = values
    return SharpeRun(sharpe, ppy, bars, skew, kurtosis)


def expected_max_sharpe(variance: float, trials: int) -> float:
    """sr0: the expected maximum of ``trials`` per-period Sharpe ratios of no skill."""
    from scipy.stats import norm

    n = trials
    return math.sqrt(variance) * (
        (1 - EULER_GAMMA) * float(norm.ppf(1 - 1 / n)) + EULER_GAMMA * float(norm.ppf(1 - 1 / (n * math.e)))
    )


def sigma_hat(sr: float, skew: float, kurtosis: float) -> float:
    """σ̂ of the Sharpe ratio's estimate (NaN when the moments make its square negative)."""
    square = 1 - skew * sr + (kurtosis - 1) / 4 * sr**2
    return math.sqrt(square) if square > 0 else math.nan


def probabilistic(sr: float, benchmark: float, bars: float, sigma: float) -> float:
    """Φ((SR − benchmark)·√(T−1)/σ̂): the probability that the true Sharpe is above ``benchmark``."""
    from scipy.stats import norm

    return float(norm.cdf((sr - benchmark) * math.sqrt(bars - 1) / sigma))


def min_track_record(sr: float, sigma: float) -> float | None:
    """Bars needed for a PSR of 95% against 0 (None unless SR > 0)."""
    from scipy.stats import norm

    if sr <= 0:
        return None
    return 1 + sigma**2 * (float(norm.ppf(TRACK_RECORD_CONFIDENCE)) / sr) ** 2


def deflated(board: Sequence[SharpeRun | None], sharpe_metric: str) -> Deflated:
    """The leader's (``board[0]``'s) DSR over the runs of ``board`` (board order) that have inputs."""
    runs = [run for run in board if run is not None]
    n = len(runs)
    base = Deflated(sharpe_metric, n)
    if n == 0:
        return _why(
            base,
            f"no ranked run has a finite {sharpe_metric} with {', '.join(MOMENTS)} and param "
            f"{PERIODS_PARAM} (does {sharpe_metric} name a metric the runs log?)",
        )
    if board[0] is None:
        return _why(
            base, f"the leader has no finite {sharpe_metric}, {', '.join(MOMENTS)} and param {PERIODS_PARAM}"
        )
    if n < 2:
        return _why(base, f"{n} ranked run(s) with a finite {sharpe_metric} (at least 2 are needed)")
    leader = board[0]
    srs = [run.per_period for run in runs]
    mean = sum(srs) / n
    variance = sum((x - mean) ** 2 for x in srs) / (n - 1)
    sr0 = expected_max_sharpe(variance, n)
    sr = leader.per_period
    base = Deflated(
        sharpe_metric,
        n,
        sr0=sr0,
        sr0_annualised=sr0 * math.sqrt(leader.periods_per_year),
        leader_sharpe=leader.sharpe,
    )
    sigma = sigma_hat(sr, leader.skew, leader.kurtosis)
    if leader.bars < 2 or not math.isfinite(sigma):
        return _why(
            base,
            f"the leader's {int(leader.bars)} bars and moments give no standard error of its Sharpe ratio",
        )
    return Deflated(
        **{
            **base.__dict__,
            "psr": probabilistic(sr, 0.0, leader.bars, sigma),
            "dsr": probabilistic(sr, sr0, leader.bars, sigma),
            "min_trl_bars": min_track_record(sr, sigma),
        }
    )


def _why(base: Deflated, reason: str) -> Deflated:
    return Deflated(**{**base.__dict__, "reason": reason})


def min_dsr_problem(min_dsr: float | None) -> str | None:
    return None if min_dsr is None or 0 <= min_dsr <= 1 else "must be between 0 and 1"


def gate(dsr: float | None, why: str | None, min_dsr: float | None) -> str | None:
    """Why production tags are held back by ``min_dsr``, or None."""
    if min_dsr is None:
        return None
    if dsr is None:
        return f"no DSR to check against min_dsr {min_dsr:g} ({why or 'no Sharpe ratios were read'})"
    return f"DSR {dsr:.2f} is below min_dsr {min_dsr:g}" if dsr < min_dsr else None


def phrase(result: Deflated | None) -> str | None:
    """A few words for the plain line: the DSR and what it says, or why there is none."""
    if result is None:
        return None
    if result.dsr is None:
        return f"no DSR ({result.reason})"
    sr = result.leader_sharpe or 0.0
    return (
        f"DSR {result.dsr:.2f}: the leader's {result.sharpe_metric} {sr:.2f} against "
        f"{result.sr0_annualised or 0.0:.2f} expected of the best of {result.trials} trials without skill"
    )
