"""OHLC(V) bars as people download them, for trainer tests: a random walk with a mild planted
mean reversion, so a model has something to find."""

from __future__ import annotations

import numpy as np
import pandas as pd


def bars(times: pd.DatetimeIndex, seed: int = 0, volume: bool = True) -> pd.DataFrame:
    """Columns open, high, low, close (and volume) indexed by ``times``."""
    rng = np.random.default_rng(seed)
    n = len(times)
    ret = np.zeros(n)
    noise = rng.normal(0.0, 0.004, n)
    for i in range(1, n):
        ret[i] = -0.2 * ret[i - 1] + noise[i]
    close = 100.0 * np.exp(np.cumsum(ret))
    open_ = np.concatenate([[100.0], close[:-1]])
    wick = np.abs(rng.normal(0.0, 0.002, (2, n)))
    frame = pd.DataFrame(
        {
            "open": open_,
            "high": np.maximum(open_, close) * (1 + wick[0]),
            "low": np.minimum(open_, close) * (1 - wick[1]),
            "close": close,
        },
        index=times,
    )
    if volume:
        frame["volume"] = np.round(np.exp(rng.normal(10.0, 0.3, n)))
    return frame.round(5)
