"""Data loading: the built-in sample, OHLCV and target modes, and every bad-input message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import structlog.testing

from trainer import data, features
from trainer.errors import InputError
from trainer.sample import PLANTED_FEATURES, SAMPLE_BARS, sample_bars, write_sample
from trainer.times import bar_interval


@pytest.fixture(scope="module")
def sample() -> data.Dataset:
    return data.load(None)


def test_sample_is_deterministic_two_years_of_hourly_bars() -> None:
    """The same seed gives the same bars; they span at least two years, hourly, sorted."""
    a, b = sample_bars(), sample_bars()
    pd.testing.assert_frame_equal(a, b)
    assert not sample_bars(seed=1).equals(a)
    span = a["timestamp"].iloc[-1] - a["timestamp"].iloc[0]
    assert span >= pd.Timedelta(days=729)
    assert (a["timestamp"].diff().dropna() == pd.Timedelta(hours=1)).all()
    assert (a["high"] >= a[["open", "close"]].max(axis=1)).all()
    assert (a["low"] <= a[["open", "close"]].min(axis=1)).all()


def test_ohlcv_mode_engineers_about_150_named_features(sample: data.Dataset) -> None:
    """OHLCV data gives ~150 uniquely named features including the planted ones, no warm-up NaNs."""
    names = sample.feature_names
    assert 140 <= len(names) <= 160
    assert len(set(names)) == len(names)
    assert set(PLANTED_FEATURES) <= set(names)
    for family in ("ret_lag_", "volatility_", "close_sma_ratio_", "rsi_", "macd_", "volume_z_", "hour_sin"):
        assert any(n.startswith(family) for n in names), family
    assert sample.X.shape == (len(sample.y), len(names))
    assert sample.X.dtype == np.float32
    assert not np.isnan(sample.X).any()
    assert np.isfinite(sample.y).all()
    assert sample.mode == "ohlcv"
    assert sample.target == features.TARGET


def test_planted_signal_is_in_the_target(sample: data.Dataset) -> None:
    """The planted features correlate with the next-bar return; a noise feature does not."""
    col = sample.feature_names.index
    ret1 = sample.X[:, col("ret_lag_1")].astype("float64")
    hour = sample.X[:, col("hour_sin")].astype("float64")
    assert abs(np.corrcoef(ret1, sample.y)[0, 1]) > 0.05
    assert abs(np.corrcoef(hour, sample.y)[0, 1]) > 0.1
    noise = sample.X[:, col("month_cos")].astype("float64")
    assert abs(np.corrcoef(noise, sample.y)[0, 1]) < 0.05


def test_sample_csv_loads_to_the_same_data(tmp_path: Path, sample: data.Dataset) -> None:
    """`sample-data` output read back as a CSV file gives the built-in data set's features."""
    out = tmp_path / "sample.csv"
    rows = write_sample(out)
    assert rows == SAMPLE_BARS
    loaded = data.load(out)
    assert loaded.feature_names == sample.feature_names
    np.testing.assert_array_equal(loaded.times, sample.times)
    np.testing.assert_allclose(loaded.y, sample.y, atol=1e-5)
    assert loaded.source == str(out.resolve())


def _bars(n: int = 24 * 70) -> pd.DataFrame:
    return sample_bars(n_bars=n)


def test_unsorted_rows_are_sorted(tmp_path: Path) -> None:
    """Rows given out of order are sorted by time before anything else."""
    bars = _bars()
    path = tmp_path / "shuffled.parquet"
    bars.sample(frac=1.0, random_state=0).to_parquet(path)
    loaded = data.load(path)
    assert loaded.notes["rows_sorted"] == 1
    assert (np.diff(loaded.times) > np.timedelta64(0)).all()
    np.testing.assert_allclose(loaded.y, data._prepare(bars, "x", None, "timestamp").y)


def test_target_mode_uses_every_other_numeric_column(tmp_path: Path) -> None:
    """With --target, other numeric columns are the features as given; text columns are ignored."""
    frame = pd.DataFrame(
        {
            "when": pd.date_range("2024-01-01", periods=50, freq="D").astype(str),
            "a": np.arange(50.0),
            "flag": [True, False] * 25,
            "label": ["x"] * 50,
            "y": np.arange(50.0) * 2,
            "b": np.arange(50),
        }
    )
    path = tmp_path / "own.csv"
    frame.to_csv(path, index=False)
    loaded = data.load(path, target="y", time_column="when")
    assert loaded.feature_names == ["a", "flag", "b"]
    assert loaded.mode == "target"
    assert loaded.notes["columns_ignored"] == 1
    np.testing.assert_array_equal(loaded.y, frame["y"].to_numpy())


def _write(tmp_path: Path, frame: pd.DataFrame, name: str = "d.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("case", "kwargs", "expected"),
    [
        ("missing_file", {}, "does not exist"),
        ("not_a_table", {}, "cannot read data file"),
        ("wrong_suffix", {}, "neither CSV"),
        ("no_time_column", {}, "has no time column: none is named timestamp, time, datetime, date, ts"),
        ("several_time_columns", {}, "several time columns ('timestamp', 'Date')"),
        ("named_time_column_missing", {"time_column": "when"}, "no time column 'when'"),
        ("bad_time", {}, "time column 'timestamp' in"),
        ("duplicate_time", {}, "duplicate timestamp"),
        ("missing_target", {"target": "nope"}, "no target column 'nope'"),
        ("text_target", {"target": "y"}, "target column 'y'"),
        (
            "bad_feature_value",
            {"target": "close"},
            "feature column 'open' in {path} is not numeric: '1,5' in row 9",
        ),
        ("no_ohlcv", {}, "lacks OHLCV column(s) close"),
        ("two_close_columns", {}, "several close columns ('close', 'Close')"),
        ("text_close", {}, "OHLCV column 'close' in"),
        ("empty", {}, "has no rows"),
        ("too_short_for_features", {}, "OHLCV mode needs more than 170"),
    ],
)
def test_bad_input_names_file_and_column(
    tmp_path: Path, case: str, kwargs: dict[str, str], expected: str
) -> None:
    """Each kind of bad data raises InputError with a message naming the file and what is wrong."""
    bars = _bars(200)
    path: Path
    if case == "missing_file":
        path = tmp_path / "absent.csv"
    elif case == "not_a_table":
        path = tmp_path / "broken.parquet"
        path.write_bytes(b"this is not parquet")
    elif case == "wrong_suffix":
        path = tmp_path / "d.xlsx"
        path.write_text("x")
    elif case == "no_time_column":
        path = _write(tmp_path, bars.rename(columns={"timestamp": "t"}))
    elif case == "several_time_columns":
        path = _write(tmp_path, bars.assign(Date=bars["timestamp"].dt.date))
    elif case == "named_time_column_missing":
        path = _write(tmp_path, bars)
    elif case == "bad_time":
        frame = bars.astype({"timestamp": str})
        frame.loc[5, "timestamp"] = "yesterday-ish"
        path = _write(tmp_path, frame)
        expected = (
            "time column 'timestamp' in {path} has a value that is not a time: 'yesterday-ish' in row 6"
        )
    elif case == "duplicate_time":
        path = _write(tmp_path, pd.concat([bars, bars.iloc[[3]]]))
    elif case == "missing_target":
        path = _write(tmp_path, bars)
    elif case == "bad_feature_value":
        frame = bars.astype({"open": str})
        frame.loc[8, "open"] = "1,5"
        path = _write(tmp_path, frame)
    elif case == "text_target":
        path = _write(tmp_path, bars.assign(y=["up", "down"] * 100))
    elif case == "no_ohlcv":
        path = _write(tmp_path, bars.drop(columns="close"))
    elif case == "two_close_columns":
        path = _write(tmp_path, bars.assign(Close=bars["close"]))
    elif case == "text_close":
        frame = bars.astype({"close": str})
        frame.loc[7, "close"] = "n/a?"
        path = _write(tmp_path, frame.sample(frac=1.0, random_state=1))  # rows out of order
        row = list(frame.sample(frac=1.0, random_state=1).index).index(7) + 1
        expected = f"OHLCV column 'close' in {{path}} is not numeric: 'n/a?' in row {row}"
    elif case == "too_short_for_features":
        path = _write(tmp_path, bars.iloc[:100])
    else:
        path = _write(tmp_path, bars.iloc[:0])
    with pytest.raises(InputError) as info:
        data.load(path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert expected.format(path=path) in message
    assert str(path) in message
    assert "\n" not in message


def test_a_pandas_index_is_the_time_column_and_ohlcv_may_be_capitalised(tmp_path: Path) -> None:
    """`df.to_csv()` of bars indexed by time, columns Open..Close and no volume: the unnamed first
    column is the time, and the volume features are left out."""
    bars = _bars().set_index("timestamp").drop(columns="volume").rename(columns=str.capitalize)
    bars.index.name = None
    path = tmp_path / "fx.csv"
    bars.to_csv(path)
    assert path.read_text().startswith(",Open,High,Low,Close\n")
    loaded = data.load(path)
    assert loaded.time_column == "Unnamed: 0"
    assert loaded.mode == "ohlcv"
    assert not [n for n in loaded.feature_names if "volume" in n]
    assert "hour_sin" in loaded.feature_names
    assert loaded.bar_interval == "1h"


def test_a_parquet_time_index_is_the_time_column(tmp_path: Path) -> None:
    """A Parquet file that kept its DatetimeIndex (named or not) gives that index as the time column."""
    bars = _bars().set_index("timestamp")
    for name in (None, "Datetime"):
        bars.index.name = name
        path = tmp_path / f"{name}.parquet"
        bars.to_parquet(path)
        assert data.load(path).time_column == ("" if name is None else "Datetime")


def test_an_unnamed_first_column_of_numbers_is_not_a_time_column(tmp_path: Path) -> None:
    """`to_csv()` of a frame with a plain row index: that index is no time column, `Date` is."""
    frame = _bars().rename(columns={"timestamp": "Date"})
    path = tmp_path / "rows.csv"
    frame.to_csv(path)
    assert data.load(path).time_column == "Date"


@pytest.mark.parametrize(
    ("freq", "business", "interval"),
    [
        ("h", False, "1h"),
        ("15min", False, "15min"),
        ("D", False, "1d"),
        ("D", True, "1d"),
        ("W", False, "1w"),
    ],
)
def test_bar_interval_is_the_median_step(freq: str, business: bool, interval: str) -> None:
    """Weekends and gaps do not change the interval: the median step decides."""
    times = pd.date_range("2024-01-01", periods=400, freq=freq)
    if business:
        times = times[times.day_of_week < 5]
    assert bar_interval(times.to_numpy(dtype="datetime64[ns]")) == interval


@pytest.mark.parametrize(
    ("freq", "interval"),
    [
        ("MS", "1mo"),
        ("ME", "1mo"),
        ("BMS", "1mo"),
        ("BME", "1mo"),
        ("QS", "1q"),
        ("QE", "1q"),
        ("YS", "1y"),
        ("YE", "1y"),
        ("2MS", "2mo"),
        ("28D", "4w"),
    ],
)
def test_calendar_steps_are_named_in_calendar_units(freq: str, interval: str) -> None:
    """Steps of whole calendar months at the month's start, end or last business day are 1mo, 1q,
    1y; four-weekly bars drift through the month: day units."""
    times = pd.date_range("2001-01-01", periods=60, freq=freq)
    assert bar_interval(times.to_numpy(dtype="datetime64[ns]")) == interval


def test_daily_bars_get_no_hour_features_and_constant_columns_are_dropped(tmp_path: Path) -> None:
    """On business-day bars the hour is never engineered and is_weekend (always 0) is dropped."""
    bars = _bars(400)
    bars["timestamp"] = pd.bdate_range("2022-01-03", periods=400)
    path = _write(tmp_path, bars, "daily.csv")
    loaded = data.load(path)
    assert not [n for n in loaded.feature_names if n.startswith("hour")]
    assert loaded.dropped_constant == ("is_weekend",)
    assert "is_weekend" not in loaded.feature_names
    assert loaded.X.shape[1] == len(loaded.feature_names)
    assert loaded.bar_interval == "1d"


def test_target_mode_drops_constant_columns(tmp_path: Path) -> None:
    """A feature column with one value, or none at all, is dropped (counted apart); every one
    constant is an error."""
    frame = pd.DataFrame(
        {
            "time": pd.date_range("2024-01-01", periods=30, freq="D"),
            "a": np.arange(30.0),
            "same": 1.0,
            "empty": np.nan,
            "y": np.arange(30.0),
        }
    )
    path = _write(tmp_path, frame)
    loaded = data.load(path, target="y")
    assert loaded.feature_names == ["a"]
    assert loaded.dropped_constant == ("same",)
    assert loaded.dropped_empty == ("empty",)
    path = _write(tmp_path, frame.drop(columns="a"), "flat.csv")
    with pytest.raises(InputError, match="every feature is constant"):
        data.load(path, target="y")


def _hourly(n: int = 24 * 20) -> pd.DataFrame:
    return sample_bars(n_bars=n)


@pytest.mark.parametrize(
    ("fmt", "freq"),
    [("%d.%m.%Y %H:%M", "h"), ("%d/%m/%Y", "D"), ("%m/%d/%Y %H:%M", "h"), ("%Y.%m.%d %H:%M", "h")],
)
def test_non_iso_times_are_read_with_one_format_decided_from_the_data(
    tmp_path: Path, fmt: str, freq: str
) -> None:
    """Day-first or month-first text is read with the one format every value fits, never a mix
    (02.01.2024 is the 2nd of January when 13.01.2024 is in the same column)."""
    bars = _hourly(400 if freq == "D" else 24 * 20)
    bars["timestamp"] = pd.date_range("2024-01-01", periods=len(bars), freq=freq)
    path = _write(tmp_path, bars.assign(timestamp=bars["timestamp"].dt.strftime(fmt)))
    loaded = data.load(path)
    assert loaded.notes["rows_sorted"] == 0
    np.testing.assert_array_equal(loaded.times, data.load(_write(tmp_path, bars, "iso.csv")).times)


def test_times_that_read_both_day_first_and_month_first_are_an_error(tmp_path: Path) -> None:
    """Dates whose day never passes 12 fit both readings: an error naming the column, asking for
    ISO 8601."""
    frame = pd.DataFrame(
        {
            "when": pd.date_range("2024-01-01", periods=12, freq="D").strftime("%d/%m/%Y"),
            "a": np.arange(12.0),
            "y": np.arange(12.0) ** 2,
        }
    )
    path = _write(tmp_path, frame)
    with pytest.raises(InputError) as info:
        data.load(path, target="y", time_column="when")
    message = str(info.value)
    assert f"time column 'when' in {path} reads both day-first and month-first" in message
    assert "ISO 8601" in message


def test_a_value_no_reading_fits_is_named_with_its_row(tmp_path: Path) -> None:
    """In a day-first column, a value that is no date under any reading is named with its row."""
    bars = _hourly()
    text = bars["timestamp"].dt.strftime("%d.%m.%Y %H:%M")
    text[300] = "32.01.2024 12:00"
    path = _write(tmp_path, bars.assign(timestamp=text))
    with pytest.raises(InputError, match=r"not a time: '32\.01\.2024 12:00' in row 301"):
        data.load(path)


def test_separate_date_and_time_columns_are_joined(tmp_path: Path) -> None:
    """MT4/FX exports (`Date` 2024.01.02, `Time` 00:00) give one time column, said in a log line."""
    bars = _hourly()
    frame = bars.drop(columns="timestamp")
    frame.insert(0, "Time", bars["timestamp"].dt.strftime("%H:%M"))
    frame.insert(0, "Date", bars["timestamp"].dt.strftime("%Y.%m.%d"))
    path = _write(tmp_path, frame)
    with structlog.testing.capture_logs() as logs:
        loaded = data.load(path)
    assert loaded.time_column == "Date Time"
    np.testing.assert_array_equal(loaded.times, data.load(_write(tmp_path, bars, "iso.csv")).times)
    assert [e["columns"] for e in logs if e["event"] == "date_and_time_joined"] == [["Date", "Time"]]
    both = _write(tmp_path, frame.assign(Time=bars["timestamp"].astype(str)), "both.csv")
    with pytest.raises(InputError, match=r"several time columns \('Date', 'Time'\); pick one"):
        data.load(both)  # `Time` holds whole times: no date and time of day to join


@pytest.mark.parametrize(
    ("name", "sep", "decimal"), [("d.csv", ";", ","), ("d.txt", "\t", "."), ("d.csv", ";", ".")]
)
def test_semicolon_and_tab_separated_files_are_read(
    tmp_path: Path, name: str, sep: str, decimal: str
) -> None:
    """The separator is sniffed from the header line; with `;`, decimal commas are numbers."""
    bars = _hourly()
    path = tmp_path / name
    bars.to_csv(path, index=False, sep=sep, decimal=decimal)
    loaded = data.load(path)
    reference = data.load(_write(tmp_path, bars, "comma.csv"))
    assert loaded.feature_names == reference.feature_names
    np.testing.assert_allclose(loaded.y, reference.y, atol=1e-6)


@pytest.mark.parametrize("start", [0, 1])
def test_an_unnamed_row_counter_is_not_a_feature(tmp_path: Path, start: int) -> None:
    """`df.to_csv()` of a frame with a plain index in target mode: the 0..n-1 (or 1..n) counter
    is dropped, not used as a feature."""
    frame = pd.DataFrame(
        {
            "timestamp": pd.date_range("2024-01-01", periods=40, freq="D").astype(str),
            "a": np.sin(np.arange(40.0)),
            "y": np.cos(np.arange(40.0)),
        },
        index=np.arange(start, 40 + start),
    )
    path = tmp_path / "indexed.csv"
    frame.to_csv(path)
    loaded = data.load(path, target="y")
    assert loaded.feature_names == ["a"]


@pytest.mark.parametrize(("unit", "scale"), [("s", 10**9), ("ms", 10**6), ("us", 10**3), ("ns", 1)])
def test_integer_epoch_times_are_read_with_the_unit_from_their_size(
    tmp_path: Path, unit: str, scale: int
) -> None:
    """Whole Unix epoch numbers are times; the unit comes from their magnitude and is logged."""
    bars = _hourly()
    epoch = bars["timestamp"].to_numpy(dtype="datetime64[ns]").astype(np.int64) // scale
    path = _write(tmp_path, bars.assign(timestamp=epoch))
    with structlog.testing.capture_logs() as logs:
        loaded = data.load(path)
    np.testing.assert_array_equal(loaded.times, data.load(_write(tmp_path, bars, "iso.csv")).times)
    assert [e["unit"] for e in logs if e["event"] == "epoch_times"] == [unit]


def test_price_holes_are_filled_counted_and_logged(tmp_path: Path) -> None:
    """4% NaN closes: carried forward (NaN volume becomes 0), counted in `prices_filled`, one
    warning naming the column; no long-window feature turns empty or constant."""
    bars = _hourly(24 * 70)
    holes = np.random.default_rng(0).choice(np.arange(200, len(bars)), size=len(bars) // 25, replace=False)
    holed = bars.copy()
    holed.loc[holes, "close"] = np.nan
    holed.loc[holes[:5], "volume"] = np.nan
    with structlog.testing.capture_logs() as logs:
        loaded = data.load(_write(tmp_path, holed))
    clean = data.load(_write(tmp_path, bars, "clean.csv"))
    assert loaded.notes["prices_filled"] == len(holes) + 5
    warned = {e["column"]: e["count"] for e in logs if e["event"] == "prices_filled"}
    assert warned == {"close": len(holes), "volume": 5}
    assert [e["log_level"] for e in logs if e["event"] == "prices_filled"] == ["warning", "warning"]
    assert loaded.feature_names == clean.feature_names
    assert (loaded.dropped_constant, loaded.dropped_empty) == ((), ())
    assert not np.isnan(loaded.X).all(axis=0).any()


def test_a_mostly_empty_price_column_is_an_error(tmp_path: Path) -> None:
    """More than half of a price column empty is not holes to fill: an error naming the column."""
    bars = _hourly().rename(columns={"high": "High"})
    bars.loc[bars.index[::3], "High"] = np.nan
    bars.loc[bars.index[1::3], "High"] = np.nan
    path = _write(tmp_path, bars)
    with pytest.raises(InputError, match=f"OHLCV column 'High' in {path} is mostly empty"):
        data.load(path)


def test_a_constant_target_is_an_error(tmp_path: Path) -> None:
    """A target with one value has nothing to predict (R² undefined): an error naming it."""
    frame = pd.DataFrame(
        {"time": pd.date_range("2024-01-01", periods=30, freq="D"), "a": np.arange(30.0), "y": 5.0}
    )
    path = _write(tmp_path, frame)
    with pytest.raises(InputError, match=f"target column 'y' in {path} is constant"):
        data.load(path, target="y")
