"""A training data set from the built-in sample or a user's CSV/Parquet file, in one of two modes.

- OHLCV mode (``open, high, low, close`` and optionally ``volume`` columns, in any case, no
  target): features are engineered (``trainer.features``) and the target is the next bar's log
  return. Isolated holes in OHLCV columns are filled: prices carry the last one forward, volume
  becomes 0.
- Target mode (``--target COL``): every other numeric column is a feature, as given.

Reading the file is ``trainer.tables``, its time column ``trainer.times``. A feature that is
constant over the data tells the model nothing and is dropped before training, and so is one
with no value at all.

Every user mistake raises ``InputError`` with a message naming the file, column or option: the
code below raises ``DataError`` and ``load``, which knows the file, names it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import structlog

from trainer import features
from trainer.errors import DataError
from trainer.sample import SAMPLE_SOURCE, sample_bars
from trainer.tables import column_key, is_number, listed, read_table, without_row_numbers
from trainer.times import (
    bar_interval,
    find_time_column,
    joined_date_and_time,
    parse_times,
    reject_duplicates,
    wall_clock,
)

log = structlog.get_logger(__name__)

# An OHLCV column with more than this share of empty values is an error, not holes to fill.
MAX_EMPTY_SHARE = 0.5

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
    dropped_empty: tuple[str, ...] = ()  # features left out for having no value at all
    # OHLCV mode: the log return over the task's horizon (``y`` before a classifier's labels)
    # and the next bar's log return, per row; None in target mode (no trading scores there)
    returns: np.ndarray | None = None
    bar_returns: np.ndarray | None = None

    @property
    def n_features(self) -> int:
        return len(self.feature_names)


def load(
    path: Path | None,
    *,
    target: str | None = None,
    time_column: str | None = None,
    horizon: int = 1,
) -> Dataset:
    """The training data set, from ``path`` or (``None``) the built-in sample; in OHLCV mode its
    target is the log return over the next ``horizon`` bars."""
    if path is None:
        with _about("builtin sample"):
            return _prepare(sample_bars(), SAMPLE_SOURCE, None, "timestamp", horizon)
    frame = read_table(path)
    with _about(str(path)):
        # the source param is absolute so that `retrain` finds the file from any directory
        return _prepare(frame, str(path.resolve()), target, time_column, horizon)


@contextmanager
def _about(name: str) -> Iterator[None]:
    """Within: log events carry ``file=name`` and a DataError becomes an InputError naming it."""
    with structlog.contextvars.bound_contextvars(file=name):
        try:
            yield
        except DataError as e:
            raise e.in_file(name) from e


def _prepare(
    frame: pd.DataFrame, source: str, target: str | None, time_column: str | None, horizon: int = 1
) -> Dataset:
    if len(frame) == 0:
        raise DataError("has no rows")
    frame = without_row_numbers(frame)
    if time_column is None:
        frame, time_column = joined_date_and_time(frame)
    time_column = find_time_column(frame, time_column)
    times, notes = parse_times(frame, time_column)
    local = wall_clock(frame[time_column], times)
    if notes.get("rows_sorted"):
        order = np.argsort(times, kind="stable")
        frame = frame.iloc[order]  # the index keeps each row's place in the file, for messages
        times = times[order]
        local = local[order]
        log.info("rows_sorted", rows=len(frame))
    reject_duplicates(times, time_column)
    if target is None:
        dataset = _ohlcv(frame, times, local, source, time_column, notes, horizon)
    else:
        dataset = _with_target(frame, times, source, target, time_column, notes)
    return _without_constants(dataset, time_column)


def _without_constants(dataset: Dataset, time_column: str) -> Dataset:
    """The data set without features that take one value, or none at all, over all its rows."""
    X = dataset.X
    names = dataset.feature_names
    empty = np.isnan(X).all(axis=0) if len(X) else np.ones(X.shape[1], bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column
        varies = np.nanmax(X, axis=0) > np.nanmin(X, axis=0) if len(X) else np.zeros(X.shape[1], bool)
    interval = bar_interval(dataset.times)
    dropped = tuple(
        name for name, keep, none in zip(names, varies, empty, strict=True) if not keep and not none
    )
    dropped_empty = tuple(name for name, none in zip(names, empty, strict=True) if none)
    if not varies.any():
        raise DataError(
            f": every feature is constant or empty over the data ({listed(pd.Index(names))}), "
            "so there is nothing to learn from"
        )
    if dropped or dropped_empty:
        X = np.ascontiguousarray(X[:, varies])
    if dropped:
        log.info("constant_features_dropped", count=len(dropped), features=list(dropped[:20]))
    if dropped_empty:
        log.warning("empty_features_dropped", count=len(dropped_empty), features=list(dropped_empty[:20]))
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
        dropped_empty=dropped_empty,
        returns=dataset.returns,
        bar_returns=dataset.bar_returns,
    )


def _numeric(frame: pd.DataFrame, col: str, role: str) -> np.ndarray:
    series = frame[col]
    if pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype="float64")
    if not pd.api.types.is_numeric_dtype(series):
        bad = (pd.to_numeric(series, errors="coerce").isna() & series.notna()).to_numpy()
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            row = _file_row(frame, first)
            raise DataError(f"is not numeric: {series.iloc[first]!r} in row {row}", f"{role} column {col!r}")
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


def _ohlcv(
    frame: pd.DataFrame,
    times: np.ndarray,
    local: np.ndarray,
    source: str,
    time_column: str,
    notes: dict[str, int],
    horizon: int = 1,
) -> Dataset:
    """OHLCV mode; ``local`` holds the wall-clock times the calendar features come from, and the
    target is the log return over the next ``horizon`` bars. Numeric columns besides the prices,
    volume and time (``Adj Close``) are named in a log line."""
    by_lower: dict[str, list[str]] = {}
    for column in frame.columns:
        by_lower.setdefault(column_key(column), []).append(str(column))
    missing = [k for k in features.PRICES if k not in by_lower]
    if missing:
        raise DataError(
            f"lacks OHLCV column(s) {', '.join(missing)} (columns: {listed(frame.columns)}); "
            "to train on your own columns pass --target COL"
        )
    present = [k for k in features.OHLCV if k in by_lower]
    for k in present:
        if len(by_lower[k]) > 1:
            raise DataError(f"has several {k} columns ({', '.join(repr(c) for c in by_lower[k])}); keep one")
    used = {time_column, *(by_lower[k][0] for k in present)}
    ignored = [str(c) for c in frame.columns if str(c) not in used and is_number(frame[c])]
    if ignored:
        log.info("ignored_columns", columns=ignored[:20], count=len(ignored))
    bars = pd.DataFrame({k: _numeric(frame, by_lower[k][0], "OHLCV") for k in present})
    missing_values = _missing_counted({by_lower[k][0]: bars[k].to_numpy() for k in present})
    bars, filled = _holes_filled(bars, {k: by_lower[k][0] for k in present})
    feats = features.engineer(bars, pd.Series(local))
    y = features.forward_return(bars["close"], horizon).to_numpy()
    keep = np.isfinite(y)
    keep[: features.WARMUP_BARS] = False
    if not keep.any():
        raise DataError(
            f"has {len(frame)} rows; OHLCV mode needs more than {features.WARMUP_BARS + 1} "
            f"(the longest feature window is {features.WARMUP_BARS - 1} bars)"
        )
    if y[keep].min() == y[keep].max():
        raise DataError(
            "never changes, so the next-bar return is constant and there is nothing to predict",
            f"OHLCV column {by_lower['close'][0]!r}",
        )
    notes = {
        **notes,
        "rows_dropped": int((~keep).sum()),
        "prices_filled": filled,
        "values_missing": missing_values,
    }
    return Dataset(
        X=np.ascontiguousarray(feats.to_numpy(dtype="float32")[keep]),
        y=y[keep],
        times=times[keep],
        feature_names=list(feats.columns),
        source=source,
        mode="ohlcv",
        target=features.target_name(horizon),
        notes=notes,
        returns=y[keep],
        bar_returns=features.forward_return(bars["close"], 1).to_numpy()[keep],
    )


def _missing_counted(columns: dict[str, np.ndarray]) -> int:
    """How many values the columns the model uses lack (an empty field or a missing-value marker
    such as FRED's ``.`` in the file); a warning log line names each such column and its count."""
    counts = {name: int(np.isnan(values).sum()) for name, values in columns.items()}
    counts = {name: count for name, count in counts.items() if count}
    if counts:
        log.warning("values_missing", count=sum(counts.values()), columns=dict(list(counts.items())[:20]))
    return sum(counts.values())


def _holes_filled(bars: pd.DataFrame, names: dict[str, str]) -> tuple[pd.DataFrame, int]:
    """OHLCV bars (rows sorted by time) with holes filled: a price carries the last one forward,
    a missing volume is 0. Returns the bars and how many values were filled; a column more than
    half empty is a DataError naming it."""
    out = bars.copy()
    total = 0
    for key, column in bars.items():
        missing = column.isna()
        count = int(missing.sum())
        if count == 0:
            continue
        name = names[str(key)]
        if count > MAX_EMPTY_SHARE * len(column):
            raise DataError(
                f"is mostly empty ({count} of {len(column)} rows have no value)", f"OHLCV column {name!r}"
            )
        out[key] = column.fillna(0.0) if key == "volume" else column.ffill()
        count = int((missing & out[key].notna()).sum())  # leading holes have no last price
        total += count
        if count:
            log.warning("prices_filled", column=name, count=count)
    return out, total


def _with_target(
    frame: pd.DataFrame,
    times: np.ndarray,
    source: str,
    target: str,
    time_column: str,
    notes: dict[str, int],
) -> Dataset:
    if target not in frame.columns:
        raise DataError(f"has no target column {target!r} (columns: {listed(frame.columns)})")
    y = _numeric(frame, target, "target")
    for column in frame.columns:
        if column not in (target, time_column) and _mostly_numbers(frame[column]):
            _numeric(frame, column, "feature")  # names the first value that is not a number
    names = [
        str(c)
        for c in frame.columns
        if c not in (target, time_column)
        and (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))
    ]
    if not names:
        raise DataError(
            f"has no numeric feature column besides target {target!r} and time column {time_column!r}"
        )
    if len(set(names)) != len(names):
        raise DataError("has duplicate column names")
    ignored = len(frame.columns) - len(names) - 2
    X = np.column_stack([_numeric(frame, c, "feature") for c in names]).astype("float32")
    X[~np.isfinite(X)] = np.nan
    missing_values = _missing_counted({target: y, **{c: X[:, i] for i, c in enumerate(names)}})
    keep = np.isfinite(y)
    if not keep.any():
        raise DataError("has no value in any row", f"target column {target!r}")
    if y[keep].min() == y[keep].max():
        raise DataError(
            f"is constant ({y[keep][0]:g} in every row), so there is nothing to predict",
            f"target column {target!r}",
        )
    notes = {
        **notes,
        "rows_dropped": int((~keep).sum()),
        "columns_ignored": ignored,
        "values_missing": missing_values,
    }
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
