"""Features engineered from OHLCV bars, and the return over the next bars they predict.

Every feature uses only bars up to and including its own row, and its name says what it is
(windows are counted in bars). Without a volume column the volume features are left out;
calendar features are made only for the parts of the date that vary over the data (no hour
of day on daily bars). ``ret_lag_1`` is the log return of the bar just closed,
``ret_lag_2`` the one before it, and so on. The target is the log return over the next
``horizon`` bars (default 1: the next bar's), from this bar's close to the close ``horizon``
bars later; the last ``horizon`` rows have none.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

OHLCV = ("open", "high", "low", "close", "volume")
PRICES = OHLCV[:4]  # volume is optional
TARGET = "next_return"  # the target's name with a horizon of 1 (target_name for others)

RETURN_LAGS = 24
WINDOWS = (3, 6, 12, 24, 48, 72, 120, 168)
LONG_WINDOWS = (24, 72, 168)
RSI_WINDOWS = (6, 14, 24, 48)
MACD_SPANS = ((6, 13, 5), (12, 26, 9), (24, 52, 18))
ATR_WINDOWS = (14, 24)
# Rows before this many bars have incomplete windows; they are dropped.
WARMUP_BARS = max(WINDOWS) + 1


def _safe_div(a: pd.Series, b: pd.Series) -> pd.Series:
    return a / b.where(b != 0)


def _rsi(ret: pd.Series, n: int) -> pd.Series:
    gain = ret.clip(lower=0).ewm(alpha=1 / n, adjust=False).mean()
    loss = (-ret).clip(lower=0).ewm(alpha=1 / n, adjust=False).mean()
    return 100 - 100 / (1 + _safe_div(gain, loss))


def engineer(bars: pd.DataFrame, times: pd.Series) -> pd.DataFrame:
    """About 150 named features for each bar; ``bars`` holds float OHLC (and optionally
    volume) columns, rows sorted.

    The result has the same row order (a fresh RangeIndex); warm-up rows contain NaN.
    """
    o, h, low, c = (bars[k].astype("float64").reset_index(drop=True) for k in PRICES)
    has_volume = "volume" in bars.columns
    v = (
        bars["volume"].astype("float64").reset_index(drop=True)
        if has_volume
        else pd.Series(np.nan, index=c.index)
    )
    t = pd.DatetimeIndex(pd.to_datetime(times)).tz_localize(None)
    ret = np.log(_safe_div(c, c.shift(1)))
    log_v = np.log1p(v.clip(lower=0))
    bar_range = _safe_div(h - low, c)
    f: dict[str, pd.Series] = {}

    for k in range(1, RETURN_LAGS + 1):
        f[f"ret_lag_{k}"] = ret.shift(k - 1)
    for w in WINDOWS:
        roll_c = c.rolling(w)
        sma = roll_c.mean()
        std_c = roll_c.std()
        f[f"ret_sum_{w}"] = ret.rolling(w).sum()
        f[f"close_sma_ratio_{w}"] = _safe_div(c, sma) - 1
        f[f"close_ema_ratio_{w}"] = _safe_div(c, c.ewm(span=w, adjust=False).mean()) - 1
        f[f"close_zscore_{w}"] = _safe_div(c - sma, std_c)
        f[f"volatility_{w}"] = ret.rolling(w).std()
        f[f"range_mean_{w}"] = bar_range.rolling(w).mean()
        if has_volume:
            vol_mean = v.rolling(w).mean()
            f[f"volume_z_{w}"] = _safe_div(v - vol_mean, v.rolling(w).std())
            f[f"volume_ratio_{w}"] = _safe_div(v, vol_mean)
        lo_w, hi_w = low.rolling(w).min(), h.rolling(w).max()
        f[f"stoch_pos_{w}"] = _safe_div(c - lo_w, hi_w - lo_w)
    for w in WINDOWS[:-1]:
        f[f"volatility_ratio_{w}_{WINDOWS[-1]}"] = _safe_div(
            f[f"volatility_{w}"], f[f"volatility_{WINDOWS[-1]}"]
        )
    for w in LONG_WINDOWS:
        f[f"ret_skew_{w}"] = ret.rolling(w).skew()
        f[f"ret_max_{w}"] = ret.rolling(w).max()
        f[f"ret_min_{w}"] = ret.rolling(w).min()
        f[f"drawdown_{w}"] = _safe_div(c, h.rolling(w).max()) - 1
    f["ret_skew_120"] = ret.rolling(120).skew()
    for n in RSI_WINDOWS:
        f[f"rsi_{n}"] = _rsi(ret, n)
    for fast, slow, sig in MACD_SPANS:
        macd = (c.ewm(span=fast, adjust=False).mean() - c.ewm(span=slow, adjust=False).mean()) / c
        signal = macd.ewm(span=sig, adjust=False).mean()
        f[f"macd_{fast}_{slow}"] = macd
        f[f"macd_signal_{fast}_{slow}_{sig}"] = signal
        f[f"macd_hist_{fast}_{slow}_{sig}"] = macd - signal
    true_range = pd.concat([h - low, (h - c.shift(1)).abs(), (low - c.shift(1)).abs()], axis=1).max(axis=1)
    for n in ATR_WINDOWS:
        f[f"atr_{n}"] = _safe_div(true_range.rolling(n).mean(), c)
    body_top = pd.concat([o, c], axis=1).max(axis=1)
    body_bottom = pd.concat([o, c], axis=1).min(axis=1)
    f["bar_range"] = bar_range
    f["bar_body"] = _safe_div(c - o, o)
    f["upper_wick"] = _safe_div(h - body_top, c)
    f["lower_wick"] = _safe_div(body_bottom - low, c)
    f["range_z_24"] = _safe_div(bar_range - bar_range.rolling(24).mean(), bar_range.rolling(24).std())
    if has_volume:
        f["log_volume"] = log_v
        f["volume_trend_24_168"] = np.log(_safe_div(v.rolling(24).mean(), v.rolling(168).mean()))
        f["volume_change_1"] = log_v.diff()

    hour = pd.Series(t.hour + t.minute / 60.0, dtype="float64")
    dow = pd.Series(t.day_of_week, dtype="float64")
    day = pd.Series(t.day, dtype="float64")
    month = pd.Series(t.month, dtype="float64")
    if _varies(hour):
        f["hour"] = hour
        f["hour_sin"] = np.sin(2 * np.pi * hour / 24)
        f["hour_cos"] = np.cos(2 * np.pi * hour / 24)
    if _varies(dow):
        f["day_of_week"] = dow
        f["dow_sin"] = np.sin(2 * np.pi * dow / 7)
        f["dow_cos"] = np.cos(2 * np.pi * dow / 7)
        f["is_weekend"] = (dow >= 5).astype("float64")
    if _varies(day):
        f["day_of_month"] = day
    if _varies(month):
        f["month"] = month
        f["month_sin"] = np.sin(2 * np.pi * month / 12)
        f["month_cos"] = np.cos(2 * np.pi * month / 12)

    out = pd.DataFrame(f)
    return out.replace([np.inf, -np.inf], np.nan).astype("float32")


def _varies(values: pd.Series) -> bool:
    return bool(values.nunique(dropna=True) > 1)


def target_name(horizon: int = 1) -> str:
    """``next_return``, or ``next_return_{horizon}`` over more than one bar."""
    return TARGET if horizon == 1 else f"{TARGET}_{horizon}"


def forward_return(close: pd.Series, horizon: int = 1) -> pd.Series:
    """Log return from each bar's close to the close ``horizon`` bars later (NaN on the last
    ``horizon`` rows)."""
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1 bar, not {horizon}")
    c = close.astype("float64").reset_index(drop=True)
    return np.log(_safe_div(c.shift(-horizon), c))
