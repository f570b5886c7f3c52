"""Files laid out as data sites and tools write them, made here from the `arch` package's shipped
files (Yahoo's daily S&P 500 bars, Ken French's monthly factors): whole-number dates (Stooq,
Ken French), yfinance's three-line header, columns OHLCV mode leaves out, Excel's UTF-16 text.
Each is read to the shipped file's own times and values."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import structlog
import structlog.testing

from tests.support.real_data import arch_bytes, arch_file
from trainer import data
from trainer.errors import InputError


def _sp500() -> pd.DataFrame:
    """sp500.csv.gz as shipped, its dates (month-first text) as times."""
    shipped = pd.read_csv(io.BytesIO(arch_bytes("sp500")))
    return shipped.assign(Date=pd.to_datetime(shipped["Date"], format="%m/%d/%Y"))


def _same_bars(loaded: data.Dataset, plain: data.Dataset) -> None:
    np.testing.assert_array_equal(loaded.times, plain.times)
    np.testing.assert_array_equal(loaded.y, plain.y)
    lag = plain.feature_names.index("ret_lag_1")
    np.testing.assert_array_equal(loaded.X[:, loaded.feature_names.index("ret_lag_1")], plain.X[:, lag])


# --------------------------------------------------------------------------------------------
# Whole-number dates
# --------------------------------------------------------------------------------------------


def test_ken_french_yyyymm_dates_are_months() -> None:
    """frenchdata.csv.gz as shipped: `Date` is 192607, 192608, ... (YYYYMM): monthly rows from
    July 1926, bar interval 1mo, said in a `date_numbers` log line."""
    assert arch_bytes("frenchdata").startswith(b"Date,Mkt-RF,SMB,HML,RF\r\n192607,")
    with structlog.testing.capture_logs() as logs:
        loaded = data.load(arch_file("frenchdata"), target="Mkt-RF")
    assert list(loaded.times[:2].astype("datetime64[D]").astype(str)) == ["1926-07-01", "1926-08-01"]
    assert loaded.bar_interval == "1mo"
    assert len(loaded.y) == 1109
    assert [(e["column"], e["format"]) for e in logs if e["event"] == "date_numbers"] == [("Date", "YYYYMM")]


def test_a_stooq_bulk_file_joins_its_yyyymmdd_date_and_hhmmss_time(tmp_path: Path) -> None:
    """sp500.csv.gz's bars laid out as Stooq's bulk .txt files (`<TICKER>,<PER>,<DATE>,<TIME>,...`,
    `<DATE>` 19990104, `<TIME>` 000000): one time column `<DATE> <TIME>`, the shipped times and
    returns."""
    shipped = _sp500()
    stooq = pd.DataFrame(
        {
            "<TICKER>": "^SPX",
            "<PER>": "D",
            "<DATE>": shipped["Date"].dt.strftime("%Y%m%d"),
            "<TIME>": "000000",
            **{f"<{c.upper()}>": shipped[c] for c in ("Open", "High", "Low", "Close")},
            "<VOL>": shipped["Volume"],
            "<OPENINT>": 0,
        }
    )
    text = stooq.to_csv(index=False)
    assert text.splitlines()[1].startswith("^SPX,D,19990104,000000,1229.22998,")
    path = tmp_path / "^spx_d.txt"
    path.write_text(text)
    loaded = data.load(path)
    assert loaded.time_column == "<DATE> <TIME>"
    _same_bars(loaded, data.load(arch_file("sp500")))


def test_yyyymmdd_dates_of_a_real_file_read_alone_and_epochs_still_refuse_small_numbers(
    tmp_path: Path,
) -> None:
    """sp500.csv.gz with `Date` as 19990104 (CRSP's spelling) reads to the shipped times; a
    column of small numbers that are no dates (19990104 with its last digit cut) still exits as
    too small for epoch times."""
    shipped = _sp500()
    (tmp_path / "ymd.csv").write_text(
        shipped.assign(Date=shipped["Date"].dt.strftime("%Y%m%d")).to_csv(index=False)
    )
    _same_bars(data.load(tmp_path / "ymd.csv"), data.load(arch_file("sp500")))
    cut = shipped.assign(Date=shipped["Date"].dt.strftime("%Y%m%d").str[:7])
    (tmp_path / "cut.csv").write_text(cut.to_csv(index=False))
    with pytest.raises(InputError, match=r"cut.csv.*too small for Unix epoch"):
        data.load(tmp_path / "cut.csv")
