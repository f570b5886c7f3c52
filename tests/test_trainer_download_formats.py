"""Files laid out as data sites and tools write them, made here from the `arch` package's shipped
files (Yahoo's daily S&P 500 bars, Ken French's monthly factors): whole-number dates (Stooq,
Ken French), yfinance's three-line header, columns OHLCV mode leaves out, Excel's UTF-16 text.
Each is read to the shipped file's own times and values."""

from __future__ import annotations

import codecs
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import structlog
import structlog.testing

from tests.support.real_data import arch_bytes, arch_file
from tests.support.trainer_cli import error_line, store_untouched
from trainer import cli, data
from trainer.errors import InputError
from trainer.tables import read_table


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
    with structlog.testing.capture_logs() as logs:
        loaded = data.load(path)
    assert loaded.time_column == "<DATE> <TIME>"
    # Stooq's <VOL> is not a column named volume: OHLCV mode leaves it out, and says so
    assert [e["columns"] for e in logs if e["event"] == "ignored_columns"] == [["<VOL>", "<OPENINT>"]]
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


def test_adj_close_left_out_of_ohlcv_mode_is_named_in_a_log_line() -> None:
    """sp500.csv.gz as shipped: `Adj Close` is numeric but no OHLCV column; one `ignored_columns`
    line names it (and not the time column or the prices)."""
    with structlog.testing.capture_logs() as logs:
        loaded = data.load(arch_file("sp500"))
    assert loaded.mode == "ohlcv"
    assert [(e["columns"], e["count"]) for e in logs if e["event"] == "ignored_columns"] == [
        (["Adj Close"], 1)
    ]


# --------------------------------------------------------------------------------------------
# yfinance's three-line header
# --------------------------------------------------------------------------------------------


def _yfinance(tickers: list[str]) -> str:
    """sp500.csv.gz's bars as `yf.download(...).to_csv()` writes them (yfinance >= 0.2.51): the
    price names, the ticker of each column, the index name alone, then ISO dates."""
    shipped = _sp500()
    prices = ["Close", "High", "Low", "Open", "Volume"]
    columns = [(p, t) for p in prices for t in tickers]
    header = [
        ",".join(["Price", *(p for p, _ in columns)]),
        ",".join(["Ticker", *(t for _, t in columns)]),
        "Date" + "," * len(columns),
    ]
    rows = [
        ",".join([f"{day:%Y-%m-%d}", *(str(row[p]) for p, _ in columns)])
        for day, (_, row) in zip(shipped["Date"], shipped.iterrows(), strict=True)
    ]
    return "\r\n".join([*header, *rows]) + "\r\n"


def test_a_yfinance_download_reads_as_its_price_columns_with_date_as_time(tmp_path: Path) -> None:
    """The shipped bars with yfinance's header (`Price,Close,...` / `Ticker,^GSPC,...` /
    `Date,,,,,`): columns Date, Close, High, Low, Open, Volume, the Ticker and Date lines not
    rows, said in a `yfinance_header` log line; the data set is the shipped file's."""
    text = _yfinance(["^GSPC"])
    assert text.startswith(
        "Price,Close,High,Low,Open,Volume\r\nTicker,^GSPC,^GSPC,^GSPC,^GSPC,^GSPC\r\nDate,,,,,\r\n"
    )
    path = tmp_path / "SPX.csv"
    path.write_text(text, newline="")
    with structlog.testing.capture_logs() as logs:
        loaded = data.load(path)
    plain = data.load(arch_file("sp500"))
    assert loaded.time_column == "Date"
    assert loaded.feature_names == plain.feature_names
    np.testing.assert_array_equal(loaded.X, plain.X)
    np.testing.assert_array_equal(loaded.times, plain.times)
    (event,) = [e for e in logs if e["event"] == "yfinance_header"]
    assert (event["tickers"], event["time_column"]) == (["^GSPC"], "Date")


def test_a_yfinance_download_of_two_tickers_exits_2_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sqlite_uri: str
) -> None:
    """The same bars under two tickers' columns (what `yf.download(["^GSPC", "SPY"])` writes):
    one line naming the file and both tickers, exit 2, no store."""
    path = tmp_path / "two.csv"
    path.write_text(_yfinance(["^GSPC", "SPY"]))
    code = cli.main(["train", "--data", str(path), "--trials", "1", "--jobs", "1"])
    line = error_line(capsys.readouterr().err)
    assert code == 2
    assert f"data file {path} holds 2 tickers (SPY, ^GSPC) in yfinance's header" in line
    assert store_untouched(sqlite_uri)


# --------------------------------------------------------------------------------------------
# Excel's UTF-16 text
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_text_with_its_byte_order_mark_reads_like_the_shipped_file(
    tmp_path: Path, encoding: str
) -> None:
    """sp500.csv.gz's bytes saved as Excel's "Unicode Text" (UTF-16 with its byte-order mark,
    tab-separated, CRLF), and the same in big-endian: the same frame as the shipped file."""
    text = arch_bytes("sp500").decode().replace(",", "\t")
    bom = codecs.BOM_UTF16_LE if encoding.endswith("le") else codecs.BOM_UTF16_BE
    path = tmp_path / "sp500.txt"
    path.write_bytes(bom + text.encode(encoding))
    with structlog.testing.capture_logs() as logs:
        frame = read_table(path)
    pd.testing.assert_frame_equal(frame, read_table(arch_file("sp500")))
    assert [e["encoding"] for e in logs if e["event"] == "encoding"] == ["utf-16"]
