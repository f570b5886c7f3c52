"""The built-in sample: two years of hourly OHLCV bars with a planted signal, deterministic in
its seed, so a first sweep needs no data of one's own and its importance has a known answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from trainer.errors import InputError

SAMPLE_SEED = 2024
SAMPLE_START = "2023-01-01"
SAMPLE_BARS = 731 * 24  # two years of hourly bars, 24/7
# The features that drive the sample's next-bar return; the rest is noise.
PLANTED_FEATURES = ("ret_lag_1", "volume_z_24", "hour_sin")
SAMPLE_SOURCE = f"builtin:sample(seed={SAMPLE_SEED})"


def sample_bars(seed: int = SAMPLE_SEED, n_bars: int = SAMPLE_BARS) -> pd.DataFrame:
    """The built-in sample: hourly OHLCV bars with a planted signal, deterministic in ``seed``.

    The next bar's return is ``sigma * (signal + noise)`` where the signal is a mild mean
    reversion on the last return (``ret_lag_1``), volume-confirmed momentum (a high
    ``volume_z_24`` continues the last move, a low one reverses it) and a time-of-day drift
    (``hour_sin``). Everything else the trainer engineers is noise.
    """
    rng = np.random.default_rng(seed)
    times = pd.date_range(SAMPLE_START, periods=n_bars, freq="h")
    hour = times.hour.to_numpy(dtype="float64")
    hour_sin = np.sin(2 * np.pi * hour / 24)

    log_v = np.empty(n_bars)
    shocks = rng.normal(0.0, 0.35, n_bars)
    level = 0.0
    for i in range(n_bars):
        level = 0.8 * level + shocks[i]
        log_v[i] = level
    volume = np.round(np.exp(10.0 + 0.4 * np.cos(2 * np.pi * hour / 24) + log_v))
    vol = pd.Series(volume)
    vz = ((vol - vol.rolling(24).mean()) / vol.rolling(24).std()).fillna(0.0).to_numpy()

    sigma = 0.004
    eps = rng.normal(0.0, 1.0, n_bars)
    drive = 0.5 * np.tanh(vz) + 0.0  # multiplied by the sign of the last return below
    drift = 0.35 * hour_sin
    ret = np.zeros(n_bars)
    for i in range(1, n_bars):
        last = ret[i - 1]
        signal = -0.15 * last / sigma + drive[i - 1] * np.sign(last) + drift[i - 1]
        ret[i] = sigma * (signal + eps[i])
    close = 100.0 * np.exp(np.cumsum(ret))
    open_ = np.concatenate([[100.0], close[:-1]])
    wick = np.abs(rng.normal(0.0, sigma / 2, (2, n_bars)))
    high = np.maximum(open_, close) * (1 + wick[0])
    low = np.minimum(open_, close) * (1 - wick[1])
    return pd.DataFrame(
        {
            "timestamp": times,
            "open": open_.round(4),
            "high": high.round(4),
            "low": low.round(4),
            "close": close.round(4),
            "volume": volume,
        }
    )


def write_sample(out: Path, seed: int = SAMPLE_SEED) -> int:
    """Write the built-in sample as CSV; returns the number of rows."""
    bars = sample_bars(seed)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        bars.to_csv(out, index=False, date_format="%Y-%m-%dT%H:%M:%S")
    except OSError as e:
        raise InputError(f"cannot write sample data to {out}: {e.strerror or e}") from e
    return len(bars)
