"""The time column of a user's table: which column it is, its values as UTC times, and the bar
interval they step by.

The time column is the one named, else the single column called ``timestamp``, ``time``,
``datetime``, ``date`` or ``ts`` (any case, also as ``<DATE>``), else separate ``Date`` and ``Time`` columns joined
(MT4 exports; Stooq's whole-number ``<DATE>`` 20130102 and ``<TIME>`` 153000 too), else an
unnamed first column of times (a pandas index written by ``to_csv``). Times are ISO 8601 text,
text in one consistent format (day-first or month-first decided from the values), whole numbers
written as dates (``20130102`` as YYYYMMDD, ``192607`` as YYYYMM, when every value reads so), or
whole Unix epoch numbers (the unit decided from their size). The bar interval
is the median step between rows, in calendar units (``1mo``, ``1q``, ``1y``) for rows a whole
number of calendar months apart.

Times written with a UTC offset (``2013-01-02 00:00:00-05:00``, as yfinance writes them) are
ordered and split in UTC, but their calendar features come from the wall clock the file wrote:
daily bars stamped at local midnight have no hour of day, whatever daylight saving time does to
their UTC hour, and a Tokyo bar stays on its own weekday.

Problems raise ``DataError`` (the loader names the file).
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import structlog
from pandas.tseries.api import guess_datetime_format

from trainer.errors import DataError, describe
from trainer.tables import column_key, is_number, listed, unnamed

log = structlog.get_logger(__name__)

# Column names (compared in lower case) taken for the time column when none is named.
TIME_COLUMN_NAMES = ("timestamp", "time", "datetime", "date", "ts")
# Epoch units by the size of a typical value: below 1e8 no unit gives a date after 1973.
_EPOCH_UNITS = ((1e11, "s"), (1e14, "ms"), (1e17, "us"), (float("inf"), "ns"))
_MIN_EPOCH = 1e8
# Whole numbers written as dates, by their number of digits: YYYYMMDD (Stooq, CRSP) and YYYYMM
# (Ken French's monthly files). All are below _MIN_EPOCH, so no epoch time reads as one.
_DATE_NUMBERS = {8: ("%Y%m%d", "YYYYMMDD"), 6: ("%Y%m", "YYYYMM")}
_ISO_EXAMPLE = "2024-01-31T15:00:00"
# Calendar steps by their number of months, largest first, spelt as bar intervals.
_CALENDAR_UNITS = ((12, "y"), (3, "q"), (1, "mo"))
# How far a row may sit from its anchor (the same day of the month, or the month's end) and
# still count as anchored: a weekend and a holiday move a month's first or last trading day.
_ANCHOR_DAYS = 3
# Formats pandas does not guess: a 12-hour clock with AM/PM (US exports) and two-digit years
# (Excel's short dates), month-first and day-first; a column both fit is ambiguous as any other.
_UNGUESSED_FORMATS = tuple(
    f"{date} {clock}".strip()
    for date in ("%m/%d/%Y", "%d/%m/%Y", "%m/%d/%y", "%d/%m/%y", "%d.%m.%y", "%d-%m-%y")
    for clock in ("", "%I:%M:%S %p", "%I:%M %p", "%H:%M:%S", "%H:%M")
)
# A time of day followed by its UTC offset at the end of a time value: ``15:00:00-05:00``, ``Z``.
_UTC_OFFSET = re.compile(
    r"\d:\d\d(?::\d\d(?:\.\d+)?)?\s*(?:Z|(?P<sign>[+-])(?P<hours>\d\d):?(?P<minutes>\d\d))$"
)


def joined_date_and_time(frame: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """Separate ``Date`` and ``Time`` columns (MT4, FX exports) joined into one time column when
    no single time column exists and the joined values read as times; ``(frame, None)``
    otherwise."""
    by_lower: dict[str, list[str]] = {}
    for column in frame.columns:
        by_lower.setdefault(column_key(column), []).append(str(column))
    others = [n for n in TIME_COLUMN_NAMES if n not in ("date", "time") and n in by_lower]
    if others or len(by_lower.get("date", [])) != 1 or len(by_lower.get("time", [])) != 1:
        return frame, None
    (date,), (time,) = by_lower["date"], by_lower["time"]
    name = f"{date} {time}"
    joined = _date_text(frame[date]) + " " + _clock_text(frame[time])
    parsed, ambiguous = to_times(joined)
    if ambiguous is None and (parsed.isna() & joined.notna()).any():
        return frame, None  # not a date and a time of day: two candidates, the user picks one
    rest = frame.drop(columns=[date, time])
    log.info("date_and_time_joined", columns=[date, time], time_column=name)
    return pd.concat([joined.rename(name).to_frame(), rest], axis=1), name


def _date_text(raw: pd.Series) -> pd.Series:
    """A date column as text to join with a time of day: whole-number dates (YYYYMMDD) as ISO."""
    dates = date_numbers(raw)
    if dates is not None:
        return dates.dt.strftime("%Y-%m-%d").astype("string")
    return raw.astype("string").str.strip()


def _clock_text(raw: pd.Series) -> pd.Series:
    """A time-of-day column as text: whole numbers HHMMSS (Stooq's ``000000``, read as 0) as
    ``HH:MM:SS`` when every one is a time of day."""
    if _whole_numbers(raw) is not None:
        digits = raw.astype("Int64").astype("string").str.zfill(6)
        clock = pd.to_datetime(digits, format="%H%M%S", errors="coerce")
        if len(digits) and not (clock.isna() & raw.notna()).any():
            return digits.str[:2] + ":" + digits.str[2:4] + ":" + digits.str[4:]
    return raw.astype("string").str.strip()


def find_time_column(frame: pd.DataFrame, named: str | None) -> str:
    """The time column: ``named``, else the one candidate (see the module docstring)."""
    columns = [str(c) for c in frame.columns]
    if named is not None:
        if named not in columns:
            raise DataError(f"has no time column {named!r} (columns: {listed(frame.columns)})")
        return named
    found = [c for c in columns if column_key(c) in TIME_COLUMN_NAMES]
    first = columns[0]
    if unnamed(first) and first not in found:
        raw = frame[frame.columns[0]]
        if not is_number(raw) and not to_times(raw)[0].isna().any():
            found.append(first)
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(
            f"has no time column: none is named {', '.join(TIME_COLUMN_NAMES)} (any case) and the "
            f"first column is not an unnamed column of times (columns: {listed(frame.columns)}); "
            "name it with --time-column"
        )
    raise DataError(
        f"has several time columns ({', '.join(repr(c) for c in found)}); pick one with --time-column"
    )


def to_times(raw: pd.Series) -> tuple[pd.Series, str | None]:
    """UTC times, NaT where a value is empty or not a time, read with one format for the whole
    column: ISO 8601, else the format guessed from the values under which the fewest values fail.
    A day-first and a month-first format that both fit every value but disagree make the column
    ambiguous (unless one of them puts every row of several years in one month): the second item
    is then a value they read differently (else None)."""
    if pd.api.types.is_datetime64_any_dtype(raw):
        return pd.to_datetime(raw, utc=True), None
    try:
        return pd.to_datetime(raw, utc=True, format="ISO8601"), None
    except (ValueError, TypeError, OverflowError):
        pass
    readings: list[tuple[int, pd.Series]] = []
    for fmt in ("ISO8601", *_guessed_formats(raw)):
        try:
            parsed = pd.to_datetime(raw, utc=True, format=fmt, errors="coerce")
        except (ValueError, TypeError, OverflowError):
            continue
        readings.append((int((parsed.isna() & raw.notna()).sum()), parsed))
    fits = [parsed for failed, parsed in readings if failed == 0]
    # Monthly data on the 1st written month-first (FRED: 1/1/1957, 2/1/1957, ...) fits day-first
    # too, but puts every row of many years in January: a reading like that is not the one.
    fits = [parsed for parsed in fits if not _one_month_over_years(parsed)] or fits
    for other in fits[1:]:
        differs = (fits[0] != other).to_numpy()
        if differs.any():
            return fits[0], str(raw.iloc[int(np.flatnonzero(differs)[0])])
    if fits:
        return fits[0], None
    return min(readings, key=lambda r: r[0])[1], None


def _one_month_over_years(parsed: pd.Series) -> bool:
    return bool(parsed.dt.month.nunique() == 1 and parsed.dt.year.nunique() > 1)


def _guessed_formats(raw: pd.Series, sample: int = 50) -> list[str]:
    """strftime formats pandas guesses for the first distinct values, month-first and day-first
    (year-first dates are always read year-month-day), then the common ones it does not guess
    that read every sampled value."""
    formats: list[str] = []
    values = pd.unique(raw.dropna().astype(str).str.strip())[:sample]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas warns when a guess contradicts dayfirst
        for value in values:
            for dayfirst in (False, True):
                fmt = guess_datetime_format(str(value), dayfirst=dayfirst)
                if fmt is None or (dayfirst and fmt.startswith("%Y")) or fmt in formats:
                    continue
                formats.append(fmt)
    head = pd.Series(values)
    for fmt in _UNGUESSED_FORMATS:  # kept only when it reads every sampled value
        if (
            fmt not in formats
            and len(head)
            and not pd.to_datetime(head, format=fmt, errors="coerce").isna().any()
        ):
            formats.append(fmt)
    return formats


def _whole_numbers(raw: pd.Series) -> np.ndarray | None:
    """The present values of a numeric column when every one is a whole number, else None."""
    if not is_number(raw):
        return None
    values = raw.to_numpy(dtype="float64", na_value=np.nan)
    present = values[np.isfinite(values)]
    if len(present) == 0 or not np.all(present == np.round(present)):
        return None
    return present


def date_numbers(raw: pd.Series) -> pd.Series | None:
    """UTC dates from whole numbers written as dates, ``20130102`` (YYYYMMDD) or ``192607``
    (YYYYMM, the month's first day), when every value has the same 8 or 6 digits and reads as
    such a date; None otherwise."""
    present = _whole_numbers(raw)
    if present is None or np.any(present <= 0):
        return None
    digits = set(np.floor(np.log10(present)).astype(int) + 1)
    if len(digits) != 1 or (size := int(digits.pop())) not in _DATE_NUMBERS:
        return None
    fmt, spelt = _DATE_NUMBERS[size]
    parsed = pd.to_datetime(raw.astype("Int64").astype("string"), format=fmt, utc=True, errors="coerce")
    if (parsed.isna() & raw.notna()).any():
        return None
    log.info("date_numbers", column=str(raw.name), format=spelt)
    return pd.Series(parsed, index=raw.index)


def _epoch_times(raw: pd.Series, subject: str) -> pd.Series:
    """UTC times from whole Unix epoch numbers; the unit (s, ms, us, ns) from their size."""
    present = _whole_numbers(raw)
    if present is None:
        raise DataError(
            "holds numbers that are not whole Unix epoch times; write timestamps as ISO 8601 text "
            f"such as {_ISO_EXAMPLE}",
            subject,
        )
    size = float(np.median(np.abs(present)))
    if size < _MIN_EPOCH:
        raise DataError(
            f"holds numbers too small for Unix epoch times (typical value {size:.0f}); write "
            f"timestamps as ISO 8601 text such as {_ISO_EXAMPLE}",
            subject,
        )
    unit = next(name for limit, name in _EPOCH_UNITS if size < limit)
    try:
        parsed = pd.to_datetime(raw.astype("Int64"), unit=unit, utc=True)
    except (ValueError, OverflowError) as e:
        raise DataError(f"holds epoch numbers out of range: {describe(e)}", subject) from e
    log.info("epoch_times", column=str(raw.name), unit=unit)
    return pd.Series(parsed, index=raw.index)


def parse_times(frame: pd.DataFrame, col: str) -> tuple[np.ndarray, dict[str, int]]:
    """Column ``col`` as UTC times (``datetime64[ns]``, naive) in the file's order, and the note
    ``rows_sorted`` (1 when they are not in order)."""
    raw = frame[col]
    subject = f"time column {col!r}"
    if is_number(raw):
        dates = date_numbers(raw)
        parsed = dates if dates is not None else _epoch_times(raw, subject)
    else:
        parsed, ambiguous = to_times(raw)
        if ambiguous is not None:
            raise DataError(
                f"reads both day-first and month-first (e.g. {ambiguous!r}); write times as ISO "
                f"8601 such as {_ISO_EXAMPLE}, or in a format where day and month cannot be swapped",
                subject,
            )
    bad = (parsed.isna() & raw.notna()).to_numpy()
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(f"has a value that is not a time: {raw.iloc[first]!r} in row {first + 1}", subject)
    missing = int(parsed.isna().sum())
    if missing:
        first = int(np.flatnonzero(parsed.isna().to_numpy())[0])
        raise DataError(f"is empty in {missing} row(s), first at row {first + 1}", subject)
    times = parsed.dt.tz_convert(None).to_numpy(dtype="datetime64[ns]")
    notes = {"rows_sorted": 0 if bool(np.all(times[1:] >= times[:-1])) else 1}
    return times, notes


def wall_clock(raw: pd.Series, times: np.ndarray) -> np.ndarray:
    """The local times the file wrote for UTC ``times`` parsed from ``raw`` (in its order): each
    UTC time plus the value's own UTC offset; ``times`` itself when no value carries one."""
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        return raw.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    if is_number(raw) or pd.api.types.is_datetime64_any_dtype(raw):
        return times
    parts = raw.astype("string").str.strip().str.extract(_UTC_OFFSET)
    if parts["hours"].isna().all():
        return times
    sign = np.where(parts["sign"].to_numpy(dtype=object, na_value="+") == "-", -1, 1)
    hours = parts["hours"].astype("float64").fillna(0.0).to_numpy()
    minutes = parts["minutes"].astype("float64").fillna(0.0).to_numpy()
    offset = (sign * (hours * 60 + minutes)).astype("int64").astype("timedelta64[m]")
    return times + offset.astype("timedelta64[ns]")


def reject_duplicates(times: np.ndarray, col: str) -> None:
    """DataError when sorted ``times`` hold one time twice."""
    dup = times[1:] == times[:-1]
    if dup.any():
        first = times[1:][dup][0]
        raise DataError(
            f"has {int(dup.sum())} duplicate timestamp(s), first "
            f"{np.datetime_as_string(first, unit='s')}; keep one row per time",
            f"time column {col!r}",
        )


def bar_interval(times: np.ndarray) -> str:
    """The median step between sorted ``times``, spelt like ``1h``, ``15min``, ``1d``, ``1w``, or
    in calendar units (``1mo``, ``1q``, ``1y``) when the rows step by whole calendar months."""
    if len(times) < 2:
        return "unknown"
    calendar = _calendar_interval(times)
    if calendar is not None:
        return calendar
    step = int(np.median(np.diff(np.asarray(times, dtype="datetime64[ns]")).astype(np.int64)))
    second = 1_000_000_000
    for unit, size in (("w", 7 * 86400 * second), ("d", 86400 * second), ("h", 3600 * second),
                       ("min", 60 * second), ("s", second), ("ms", second // 1000)):  # fmt: skip
        if step >= size and step % size == 0:
            return f"{step // size}{unit}"
    return f"{step}ns"


def _calendar_interval(times: np.ndarray) -> str | None:
    """``1mo``, ``1q``, ``1y`` (or ``2mo``, ``2q``, ...) when sorted ``times`` step by whole
    calendar months: the median step is k >= 1 months and the rows keep to one day of the month
    (the 1st, the 15th, ... within a few days) or to the month's end. None otherwise (daily and
    weekly bars step less than a month; four-weekly ones drift through the month)."""
    stamps = pd.DatetimeIndex(times)
    months = np.diff(stamps.year.to_numpy() * 12 + stamps.month.to_numpy())
    step = float(np.median(months))
    if step < 1 or step != int(step):
        return None
    day = stamps.day.to_numpy()
    to_end = (stamps.days_in_month - stamps.day).to_numpy()
    same_day = np.abs(day - np.median(day)) <= _ANCHOR_DAYS
    month_end = to_end <= _ANCHOR_DAYS
    if not (same_day.mean() >= 0.9 or month_end.mean() >= 0.9):
        return None
    size, unit = next((size, unit) for size, unit in _CALENDAR_UNITS if int(step) % size == 0)
    return f"{int(step) // size}{unit}"
