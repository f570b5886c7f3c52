"""Loading training data: the built-in sample, or a user's CSV/Parquet file in one of two modes.

- OHLCV mode (``open, high, low, close`` and optionally ``volume`` columns, in any case, no
  target): features are engineered (``trainer.features``) and the target is the next bar's log
  return.
- Target mode (``--target COL``): every other numeric column is a feature, as given.

The time column is the one named, else the single column called ``timestamp``, ``time``,
``datetime``, ``date`` or ``ts`` (any case), else an unnamed first column of times (a pandas
index written by ``to_csv``). The bar interval is the median step between rows. A feature
that is constant over the data tells the model nothing and is dropped before training.

Every user mistake raises ``InputError`` with a message naming the file, column or option.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import structlog

from trainer import features
from trainer.errors import InputError, describe

log = structlog.get_logger(__name__)

SAMPLE_SEED = 2024
SAMPLE_START = "2023-01-01"
SAMPLE_BARS = 731 * 24  # two years of hourly bars, 24/7
# The features that drive the sample's next-bar return; the rest is noise.
PLANTED_FEATURES = ("ret_lag_1", "volume_z_24", "hour_sin")
SAMPLE_SOURCE = f"builtin:sample(seed={SAMPLE_SEED})"
# Column names (compared in lower case) taken for the time column when none is named.
TIME_COLUMN_NAMES = ("timestamp", "time", "datetime", "date", "ts")
# What pandas calls a column whose header is empty (the index written by ``to_csv``).
_UNNAMED = re.compile(r"Unnamed: \d+")

Mode = Literal["ohlcv", "target"]


@dataclass(frozen=True)
class Dataset:
    """Rows sorted by time: ``X`` float32 (rows x features), ``y`` float64, ``times`` ns."""

    X: np.ndarray
    y: np.ndarray
    times: np.ndarray
    feature_names: list[str]
    source: str
    mode: Mode
    target: str
    notes: dict[str, int] = field(default_factory=dict)
    time_column: str = "timestamp"
    bar_interval: str = "unknown"
    dropped_constant: tuple[str, ...] = ()  # features left out for being constant

    @property
    def n_features(self) -> int:
        return len(self.feature_names)


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


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file, turning every failure into an InputError naming the file."""
    suffixes = [s.lower() for s in path.suffixes]
    if not path.exists():
        raise InputError(f"data file {path} does not exist")
    if path.is_dir():
        raise InputError(f"data file {path} is a directory, not a CSV or Parquet file")
    try:
        if suffixes and suffixes[-1] in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
            if not isinstance(frame.index, pd.RangeIndex):  # a time index saved with the frame
                frame = frame.reset_index(names=[n if n is not None else "" for n in frame.index.names])
            return frame
        if ".csv" in suffixes or ".tsv" in suffixes or ".txt" in suffixes:
            return pd.read_csv(path, sep="\t" if ".tsv" in suffixes else ",")
    except Exception as e:  # pandas/pyarrow raise many types for a bad file
        raise InputError(f"cannot read data file {path}: {describe(e)}") from e
    raise InputError(f"data file {path} is neither CSV (.csv) nor Parquet (.parquet)")


def load(
    path: Path | None,
    *,
    target: str | None = None,
    time_column: str | None = None,
) -> Dataset:
    """The training data set, from ``path`` or (``None``) the built-in sample."""
    if path is None:
        frame = sample_bars()
        return _prepare(frame, "builtin sample", SAMPLE_SOURCE, None, "timestamp")
    frame = read_table(path)
    # the source param is absolute so that `retrain` finds the file from any directory
    return _prepare(frame, str(path), str(path.resolve()), target, time_column)


def _prepare(
    frame: pd.DataFrame, where: str, source: str, target: str | None, time_column: str | None
) -> Dataset:
    if len(frame) == 0:
        raise InputError(f"data file {where} has no rows")
    time_column = find_time_column(frame, where, time_column)
    times, notes = _parse_times(frame, where, time_column)
    if notes.get("rows_sorted"):
        order = np.argsort(times, kind="stable")
        frame = frame.iloc[order]  # the index keeps each row's place in the file, for messages
        times = times[order]
        log.info("rows_sorted", file=where, rows=len(frame))
    _reject_duplicates(times, where, time_column)
    if target is None:
        dataset = _ohlcv(frame, times, where, source, notes)
    else:
        dataset = _with_target(frame, times, where, source, target, time_column, notes)
    return _without_constants(dataset, where, time_column)


def find_time_column(frame: pd.DataFrame, where: str, named: str | None) -> str:
    """The time column: ``named``, else the one candidate (see the module docstring)."""
    columns = [str(c) for c in frame.columns]
    if named is not None:
        if named not in columns:
            raise InputError(
                f"data file {where} has no time column {named!r} (columns: {_list(frame.columns)})"
            )
        return named
    found = [c for c in columns if c.strip().lower() in TIME_COLUMN_NAMES]
    first = columns[0]
    if (first.strip() == "" or _UNNAMED.fullmatch(first)) and first not in found:
        raw = frame[frame.columns[0]]
        if not _is_number(raw) and not _to_times(raw).isna().any():
            found.append(first)
    if len(found) == 1:
        return found[0]
    if not found:
        raise InputError(
            f"data file {where} has no time column: none is named "
            f"{', '.join(TIME_COLUMN_NAMES)} (any case) and the first column is not an unnamed "
            f"column of times (columns: {_list(frame.columns)}); name it with --time-column"
        )
    raise InputError(
        f"data file {where} has several time columns ({', '.join(repr(c) for c in found)}); "
        "pick one with --time-column"
    )


def _is_number(raw: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw))


def _to_times(raw: pd.Series) -> pd.Series:
    """UTC times; NaT where a value is empty or not a time."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas warns when it infers a format per element
            return pd.to_datetime(raw, utc=True)  # one format for the whole column: fast
    except (ValueError, TypeError, OverflowError):
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pd.to_datetime(raw, utc=True, format="mixed", errors="coerce")


def _parse_times(frame: pd.DataFrame, where: str, col: str) -> tuple[np.ndarray, dict[str, int]]:
    raw = frame[col]
    if _is_number(raw):
        raise InputError(
            f"time column {col!r} in {where} holds numbers; write timestamps as ISO 8601 "
            "text such as 2024-01-31T15:00:00"
        )
    parsed = _to_times(raw)
    bad = (parsed.isna() & raw.notna()).to_numpy()
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"time column {col!r} in {where} has a value that is not a time: "
            f"{raw.iloc[first]!r} in row {first + 1}"
        )
    missing = int(parsed.isna().sum())
    if missing:
        first = int(np.flatnonzero(parsed.isna().to_numpy())[0])
        raise InputError(
            f"time column {col!r} in {where} is empty in {missing} row(s), first at row {first + 1}"
        )
    times = parsed.dt.tz_convert(None).to_numpy(dtype="datetime64[ns]")
    notes = {"rows_sorted": 0 if bool(np.all(times[1:] >= times[:-1])) else 1}
    return times, notes


def bar_interval(times: np.ndarray) -> str:
    """The median step between sorted ``times``, spelt like ``1h``, ``15min``, ``1d``, ``1w``."""
    if len(times) < 2:
        return "unknown"
    step = int(np.median(np.diff(np.asarray(times, dtype="datetime64[ns]")).astype(np.int64)))
    second = 1_000_000_000
    for unit, size in (("w", 7 * 86400 * second), ("d", 86400 * second), ("h", 3600 * second),
                       ("min", 60 * second), ("s", second), ("ms", second // 1000)):  # fmt: skip
        if step >= size and step % size == 0:
            return f"{step // size}{unit}"
    return f"{step}ns"


def _without_constants(dataset: Dataset, where: str, time_column: str) -> Dataset:
    """The data set without features that take one value (or none) over all its rows."""
    X = dataset.X
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column
        varies = np.nanmax(X, axis=0) > np.nanmin(X, axis=0) if len(X) else np.zeros(X.shape[1], bool)
    interval = bar_interval(dataset.times)
    dropped = tuple(name for name, keep in zip(dataset.feature_names, varies, strict=True) if not keep)
    if len(dropped) == len(dataset.feature_names):
        raise InputError(
            f"data file {where}: every feature is constant over the data "
            f"({_list(pd.Index(dropped))}), so there is nothing to learn from"
        )
    if dropped:
        X = np.ascontiguousarray(X[:, varies])
        log.info("constant_features_dropped", file=where, count=len(dropped), features=list(dropped[:20]))
    return Dataset(
        X=X,
        y=dataset.y,
        times=dataset.times,
        feature_names=[n for n, keep in zip(dataset.feature_names, varies, strict=True) if keep],
        source=dataset.source,
        mode=dataset.mode,
        target=dataset.target,
        notes=dataset.notes,
        time_column=time_column,
        bar_interval=interval,
        dropped_constant=dropped,
    )


def _reject_duplicates(times: np.ndarray, where: str, col: str) -> None:
    dup = times[1:] == times[:-1]
    if dup.any():
        first = times[1:][dup][0]
        raise InputError(
            f"time column {col!r} in {where} has {int(dup.sum())} duplicate timestamp(s), "
            f"first {np.datetime_as_string(first, unit='s')}; keep one row per time"
        )


def _numeric(frame: pd.DataFrame, col: str, where: str, role: str) -> np.ndarray:
    series = frame[col]
    if pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype="float64")
    if not pd.api.types.is_numeric_dtype(series):
        bad = (pd.to_numeric(series, errors="coerce").isna() & series.notna()).to_numpy()
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            row = _file_row(frame, first)
            raise InputError(
                f"{role} column {col!r} in {where} is not numeric: {series.iloc[first]!r} in row {row}"
            )
        return pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    return series.to_numpy(dtype="float64", na_value=np.nan)


def _mostly_numbers(series: pd.Series) -> bool:
    """A text column most of whose values are numbers: a feature with a few bad values, not a
    label to ignore."""
    if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        return False
    present = series.dropna()
    return len(present) > 0 and bool(pd.to_numeric(present, errors="coerce").notna().mean() >= 0.5)


def _file_row(frame: pd.DataFrame, position: int) -> int:
    """1-based row in the file of the row at ``position`` (rows may have been sorted)."""
    label = frame.index[position]
    return int(label) + 1 if isinstance(label, int | np.integer) else position + 1


def _ohlcv(frame: pd.DataFrame, times: np.ndarray, where: str, source: str, notes: dict[str, int]) -> Dataset:
    by_lower: dict[str, list[str]] = {}
    for column in frame.columns:
        by_lower.setdefault(str(column).strip().lower(), []).append(str(column))
    missing = [k for k in features.PRICES if k not in by_lower]
    if missing:
        raise InputError(
            f"data file {where} lacks OHLCV column(s) {', '.join(missing)} "
            f"(columns: {_list(frame.columns)}); to train on your own columns pass --target COL"
        )
    present = [k for k in features.OHLCV if k in by_lower]
    for k in present:
        if len(by_lower[k]) > 1:
            raise InputError(
                f"data file {where} has several {k} columns ({', '.join(repr(c) for c in by_lower[k])}); "
                "keep one"
            )
    bars = pd.DataFrame({k: _numeric(frame, by_lower[k][0], where, "OHLCV") for k in present})
    feats = features.engineer(bars, pd.Series(times))
    y = features.next_return(bars["close"]).to_numpy()
    keep = np.isfinite(y)
    keep[: features.WARMUP_BARS] = False
    if not keep.any():
        raise InputError(
            f"data file {where} has {len(frame)} rows; OHLCV mode needs more than "
            f"{features.WARMUP_BARS + 1} (the longest feature window is {features.WARMUP_BARS - 1} bars)"
        )
    notes = {**notes, "rows_dropped": int((~keep).sum())}
    return Dataset(
        X=np.ascontiguousarray(feats.to_numpy(dtype="float32")[keep]),
        y=y[keep],
        times=times[keep],
        feature_names=list(feats.columns),
        source=source,
        mode="ohlcv",
        target=features.TARGET,
        notes=notes,
    )


def _with_target(
    frame: pd.DataFrame,
    times: np.ndarray,
    where: str,
    source: str,
    target: str,
    time_column: str,
    notes: dict[str, int],
) -> Dataset:
    if target not in frame.columns:
        raise InputError(
            f"data file {where} has no target column {target!r} (columns: {_list(frame.columns)})"
        )
    y = _numeric(frame, target, where, "target")
    for column in frame.columns:
        if column not in (target, time_column) and _mostly_numbers(frame[column]):
            _numeric(frame, column, where, "feature")  # names the first value that is not a number
    names = [
        str(c)
        for c in frame.columns
        if c not in (target, time_column)
        and (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))
    ]
    if not names:
        raise InputError(
            f"data file {where} has no numeric feature column besides target {target!r} "
            f"and time column {time_column!r}"
        )
    if len(set(names)) != len(names):
        raise InputError(f"data file {where} has duplicate column names")
    ignored = len(frame.columns) - len(names) - 2
    X = np.column_stack([_numeric(frame, c, where, "feature") for c in names]).astype("float32")
    X[~np.isfinite(X)] = np.nan
    keep = np.isfinite(y)
    notes = {**notes, "rows_dropped": int((~keep).sum()), "columns_ignored": ignored}
    return Dataset(
        X=np.ascontiguousarray(X[keep]),
        y=y[keep],
        times=times[keep],
        feature_names=names,
        source=source,
        mode="target",
        target=target,
        notes=notes,
    )


def _list(columns: pd.Index, limit: int = 12) -> str:
    names = [str(c) for c in columns]
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
