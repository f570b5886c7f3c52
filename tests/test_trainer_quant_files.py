"""Files as quants download them, read from the `arch` package's data (Yahoo daily bars and FRED
series, gzipped): compressed CSVs, FRED's missing-value markers, a byte-order mark, calendar-month
bars, and `train --data` on them into a real MLflow store. Where a case needs a form the package
does not ship (bz2, xz, zip, markers in a price column), it is made here from a shipped file's own
bytes, and the test says so."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import structlog
import structlog.testing

from tests.support.mlflow_server import sqlite_uri as sqlite_uri_of
from tests.support.real_data import arch_bytes, arch_file
from tests.support.trainer_cli import error_line, experiment_runs, store_untouched, train
from trainer import cli, data
from trainer.config import load_config
from trainer.tables import read_table

SP500_COLUMNS = ["Date", "Open", "High", "Low", "Close", "Adj Close", "Volume"]


def _rows(name: str) -> list[dict[str, str]]:
    """The shipped file's rows as text, as written (markers kept)."""
    return list(csv.DictReader(io.StringIO(arch_bytes(name).decode("utf-8-sig"))))


def _zipped(raw: bytes, member: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(member, raw)

    return write


def _semicolons(raw: bytes) -> bytes:
    """The European spelling of the same table: semicolons between fields, decimal commas."""
    return raw.replace(b",", b";").replace(b".", b",")


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "compress"),
    [
        ("sp500.csv.bz2", bz2.compress),
        ("sp500.csv.xz", lzma.compress),
        ("sp500.csv.zip", None),
        ("sp500.zip", None),
        ("sp500.txt.gz", gzip.compress),
        ("sp500_eu.csv.xz", None),
    ],
)
def test_recompressed_real_bars_read_like_the_shipped_gzip(
    tmp_path: Path, name: str, compress: Callable[[bytes], bytes] | None
) -> None:
    """sp500.csv.gz's own bytes, recompressed here (bz2, xz, a one-file zip named with or without
    .csv, a .txt.gz, and a semicolon/decimal-comma copy in xz) read to the shipped gzip's frame:
    the separator and decimal mark are sniffed from the decompressed bytes."""
    shipped = read_table(arch_file("sp500"))
    assert list(shipped.columns) == SP500_COLUMNS
    assert len(shipped) == 5031
    raw = arch_bytes("sp500")
    path = tmp_path / name
    if name.endswith(".zip"):
        _zipped(raw, "sp500.csv")(path)
    elif name == "sp500_eu.csv.xz":
        path.write_bytes(lzma.compress(_semicolons(raw)))
    else:
        assert compress is not None
        path.write_bytes(compress(raw))
    pd.testing.assert_frame_equal(read_table(path), shipped)


def test_a_real_byte_order_mark_is_not_part_of_the_time_column(tmp_path: Path) -> None:
    """crude.csv.gz starts with a UTF-8 byte-order mark and ends its lines with CRLF, as shipped;
    its time column is `Date`, read from the gzip and from the same bytes zipped."""
    raw = arch_bytes("crude")
    assert raw.startswith(b"\xef\xbb\xbfDate,")
    assert b"\r\n" in raw[:40]
    zipped = tmp_path / "crude.zip"
    _zipped(raw, "crude.csv")(zipped)
    for path in (arch_file("crude"), zipped):
        loaded = data.load(path, target="WTI")
        assert (loaded.time_column, loaded.feature_names) == ("Date", ["Brent"])
        assert len(loaded.y) == 393


def test_a_windows_1252_header_reads_as_excel_wrote_it(tmp_path: Path) -> None:
    """crude.csv.gz's rows under a header with a euro sign and an eszett, saved in Windows-1252 as
    Excel on Windows saves a CSV: the columns keep their names and the rows read as from the
    shipped file."""
    text = arch_bytes("crude").decode("utf-8-sig")
    header, rest = text.split("\r\n", 1)
    assert header == "Date,Brent,WTI"
    path = tmp_path / "crude_de.csv"
    path.write_bytes(("Date,Brent (€/bbl),WTI Schluß\r\n" + rest).encode("cp1252"))
    loaded = data.load(path, target="WTI Schluß")
    shipped = data.load(arch_file("crude"), target="WTI")
    assert loaded.feature_names == ["Brent (€/bbl)"]
    np.testing.assert_array_equal(loaded.y, shipped.y)
    np.testing.assert_array_equal(loaded.X, shipped.X)


@pytest.mark.parametrize(("name", "column"), [("wti", "DCOILWTICO"), ("vix", "vix")])
def test_fred_dot_markers_read_as_missing_values(name: str, column: str) -> None:
    """FRED writes `.` for a day without a value (wti: 290 of them, vix: 46): the column reads as
    numbers, missing exactly where the file has a `.`."""
    rows = _rows(name)
    marked = np.array([row[column] == "." for row in rows])
    assert marked.sum() in (290, 46)
    frame = read_table(arch_file(name))
    assert frame[column].dtype == np.float64
    np.testing.assert_array_equal(frame[column].isna().to_numpy(), marked)
    expected = [float(row[column]) for row in rows if row[column] != "."]
    np.testing.assert_array_equal(frame[column].to_numpy()[~marked], expected)


def test_markers_in_target_mode_drop_the_row_or_stay_a_hole_and_are_counted(tmp_path: Path) -> None:
    """FRED's WTI and VIX on the days both series list, as FRED wrote them (this file is made here
    from the two shipped files' rows, markers kept): a `.` in the target drops its row, one in the
    feature stays a hole for XGBoost, and both are counted in `values_missing` and in one log line
    naming each column."""
    wti = {row["Date"]: row["DCOILWTICO"] for row in _rows("wti")}
    vix = {row["Date"]: row["vix"] for row in _rows("vix")}
    days = [day for day in vix if day in wti]
    text = "Date,DCOILWTICO,vix\n" + "".join(f"{day},{wti[day]},{vix[day]}\n" for day in days)
    path = tmp_path / "oil_and_vix.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    target_marked = sum(wti[day] == "." for day in days)
    feature_marked = sum(vix[day] == "." for day in days)
    feature_holes = sum(vix[day] == "." and wti[day] != "." for day in days)
    assert (target_marked, feature_marked, feature_holes) == (49, 46, 1)
    with structlog.testing.capture_logs() as logs:
        loaded = data.load(path, target="DCOILWTICO")
    assert loaded.notes["rows_dropped"] == target_marked
    assert loaded.notes["values_missing"] == target_marked + feature_marked
    assert len(loaded.y) == len(days) - target_marked
    assert int(np.isnan(loaded.X[:, 0]).sum()) == feature_holes
    (event,) = [e for e in logs if e["event"] == "values_missing"]
    assert event["columns"] == {"DCOILWTICO": target_marked, "vix": feature_marked}


def test_every_marker_in_a_price_column_is_carried_forward_like_a_hole(tmp_path: Path) -> None:
    """The shipped S&P 500 bars with seven closes replaced here by the markers people's sources
    write (`.`, `NA`, `N/A`, `null`, `-`, `#N/A`, empty) train on exactly the data set of the same
    bars whose closes carry the last one forward by hand; prices_filled counts the seven."""
    markers = [".", "NA", "N/A", "null", "-", "#N/A", ""]
    lines = arch_bytes("sp500").decode().splitlines()
    marked, filled = list(lines), list(lines)
    for marker, line in zip(markers, range(500, 500 + 300 * len(markers), 300), strict=True):
        fields = lines[line].split(",")
        previous_close = lines[line - 1].split(",")[4]
        marked[line] = ",".join([*fields[:4], marker, *fields[5:]])
        filled[line] = ",".join([*fields[:4], previous_close, *fields[5:]])
    (tmp_path / "marked.csv").write_text("\n".join(marked) + "\n")
    (tmp_path / "filled.csv").write_text("\n".join(filled) + "\n")
    with_markers = data.load(tmp_path / "marked.csv")
    by_hand = data.load(tmp_path / "filled.csv")
    assert with_markers.notes["prices_filled"] == with_markers.notes["values_missing"] == len(markers)
    assert by_hand.notes["prices_filled"] == 0
    np.testing.assert_array_equal(with_markers.X, by_hand.X)
    np.testing.assert_array_equal(with_markers.y, by_hand.y)


def test_daily_bars_stamped_with_new_york_offsets_get_no_hour_of_day(tmp_path: Path) -> None:
    """sp500.csv.gz's bars dated as yfinance writes a daily download (`1999-01-04
    00:00:00-05:00`, `-04:00` in summer): the same features and values as the plain file, no
    hour of day made from daylight saving time, and times in UTC (05:00 in winter, 04:00 in
    summer)."""
    plain = data.load(arch_file("sp500"))
    lines = arch_bytes("sp500").decode().splitlines()
    dates = pd.to_datetime([line.split(",", 1)[0] for line in lines[1:]], format="%m/%d/%Y")
    stamped = dates.tz_localize("America/New_York").strftime("%Y-%m-%d %H:%M:%S%z")
    stamped = [f"{s[:-2]}:{s[-2:]}" for s in stamped]
    rows = [f"{s},{line.split(',', 1)[1]}" for s, line in zip(stamped, lines[1:], strict=True)]
    path = tmp_path / "SPY.csv"
    path.write_text("\n".join([lines[0], *rows]) + "\n")
    loaded = data.load(path)
    assert stamped[0] == "1999-01-04 00:00:00-05:00"
    assert loaded.feature_names == plain.feature_names
    assert not {"hour", "hour_sin", "hour_cos"} & set(loaded.feature_names)
    np.testing.assert_array_equal(loaded.X, plain.X)
    hours = (loaded.times - plain.times).astype("timedelta64[h]").astype(int)
    assert set(hours) == {4, 5}
    assert loaded.bar_interval == "1d"


@pytest.mark.parametrize("fmt", ["%m/%d/%y", "%d.%m.%y", "%m/%d/%Y %I:%M:%S %p"])
def test_two_digit_years_and_am_pm_clocks_read_as_the_real_dates(tmp_path: Path, fmt: str) -> None:
    """sp500.csv.gz's dates written as Excel's short dates (`1/4/99`, `04.01.99`) or a US 12-hour
    clock (`01/04/1999 12:00:00 AM`), formats pandas does not guess: the same times as the
    shipped file."""
    plain = data.load(arch_file("sp500"))
    lines = arch_bytes("sp500").decode().splitlines()
    dates = pd.to_datetime([line.split(",", 1)[0] for line in lines[1:]], format="%m/%d/%Y")
    rows = [f"{d:{fmt}},{line.split(',', 1)[1]}" for d, line in zip(dates, lines[1:], strict=True)]
    path = tmp_path / "sp500.csv"
    path.write_text("\n".join([lines[0], *rows]) + "\n")
    loaded = data.load(path)
    np.testing.assert_array_equal(loaded.times, plain.times)
    assert loaded.bar_interval == "1d"


def test_a_metatrader_export_with_bracketed_headers_reads_its_date_time_and_prices(tmp_path: Path) -> None:
    """sp500.csv.gz's bars laid out as MetaTrader 5 exports them (tab-separated, `<DATE>` as
    1999.01.04 and `<TIME>` apart, `<OPEN>` ... `<CLOSE>`, `<TICKVOL>`): the bracketed names are
    the date, time and price columns, read to the shipped file's times and returns."""
    plain = data.load(arch_file("sp500"))
    shipped = pd.read_csv(io.BytesIO(arch_bytes("sp500")))
    dates = pd.to_datetime(shipped["Date"], format="%m/%d/%Y")
    export = pd.DataFrame(
        {
            "<DATE>": dates.dt.strftime("%Y.%m.%d"),
            "<TIME>": "00:00:00",
            **{f"<{c.upper()}>": shipped[c] for c in ("Open", "High", "Low", "Close")},
            "<TICKVOL>": shipped["Volume"],
        }
    )
    path = tmp_path / "SP500_D1.csv"
    export.to_csv(path, sep="\t", index=False)
    loaded = data.load(path)
    assert loaded.time_column == "<DATE> <TIME>"
    np.testing.assert_array_equal(loaded.times, plain.times)
    lag = plain.feature_names.index("ret_lag_1")
    np.testing.assert_array_equal(loaded.X[:, loaded.feature_names.index("ret_lag_1")], plain.X[:, lag])


# --------------------------------------------------------------------------------------------
# Calendar intervals
# --------------------------------------------------------------------------------------------


def test_fred_monthly_rates_are_1mo_bars_read_month_first() -> None:
    """default.csv.gz: FRED's monthly AAA and BAA yields dated on the 1st, month first (1/1/1919,
    2/1/1919, ...). Day-first fits every value too, but would put 100 years of rows in January:
    the rows are read month-first, and the interval is 1mo, not a number of days."""
    loaded = data.load(arch_file("default"), target="BAA")
    assert loaded.bar_interval == "1mo"
    assert list(loaded.times[:3].astype("datetime64[D]").astype(str)) == [
        "1919-01-01",
        "1919-02-01",
        "1919-03-01",
    ]
    assert len(loaded.y) == 1200


@pytest.mark.parametrize(("months", "interval"), [((1, 4, 7, 10), "1q"), ((1,), "1y")])
def test_quarterly_and_yearly_rows_of_a_real_series(
    tmp_path: Path, months: tuple[int, ...], interval: str
) -> None:
    """default.csv.gz's rows of January, April, July and October (quarterly), or of January
    (yearly), kept as FRED wrote them in a file made here: 1q and 1y."""
    lines = arch_bytes("default").decode().splitlines()
    kept = [lines[0], *(line for line in lines[1:] if int(line.split("/")[0]) in months)]
    path = tmp_path / "rates.csv.bz2"
    path.write_bytes(bz2.compress("\n".join(kept).encode()))
    assert data.load(path, target="BAA").bar_interval == interval


# --------------------------------------------------------------------------------------------
# Symbols and refusals
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "symbol"),
    [
        ("sp500.csv.gz", "sp500"),
        ("crude.csv", "crude"),
        ("crude.CSV.GZ", "crude"),
        ("EURUSD.tsv.xz", "EURUSD"),
        ("BRK.B.csv.bz2", "BRK_B"),
        ("rates.zip", "rates"),
        ("ticks.parquet", "ticks"),
        ("v1.2.gz", "v1_2"),
    ],
)
def test_symbol_is_the_stem_without_compression_and_table_suffixes(name: str, symbol: str) -> None:
    """So `crude.csv.gz` and `crude.csv` train into one experiment."""
    assert load_config(None, {"data.path": f"/data/{name}"}).resolved_symbol() == symbol


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("two.zip", "is a zip archive holding 2 files (sp500.csv, crude.csv); it must hold one CSV file"),
        ("nothing.zip", "is a zip archive holding no file; it must hold one CSV file"),
        ("sheet.zip", "holds 'sp500.xlsx', not a CSV file (.csv, .tsv, .txt)"),
        ("cut.csv.gz", "cannot read data file"),
        ("plain.csv.gz", "cannot read data file"),
        ("sp500.gz", "is neither CSV"),
    ],
)
def test_a_compressed_file_that_cannot_be_read_exits_2_with_one_line_and_no_run(
    tmp_path: Path,
    name: str,
    expected: str,
    capsys: pytest.CaptureFixture[str],
    sqlite_uri: str,
) -> None:
    """Made here from the shipped files' bytes: a zip of two CSVs, an empty zip, a zip holding a
    spreadsheet's name, a gzip cut in half, plain CSV bytes named .csv.gz, a gzip without a table
    suffix. Each exits 2 with one line naming the file, before any MLflow store exists."""
    raw, gz = arch_bytes("sp500"), arch_file("sp500").read_bytes()
    path = tmp_path / name
    if name == "two.zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("sp500.csv", raw)
            archive.writestr("crude.csv", arch_bytes("crude"))
    elif name == "nothing.zip":
        zipfile.ZipFile(path, "w").close()
    elif name == "sheet.zip":
        _zipped(raw, "sp500.xlsx")(path)
    elif name == "cut.csv.gz":
        path.write_bytes(gz[: len(gz) // 2])
    elif name == "plain.csv.gz":
        path.write_bytes(raw)
    else:
        path.write_bytes(gz)
    code = cli.main(["train", "--data", str(path), "--trials", "1", "--jobs", "1"])
    line = error_line(capsys.readouterr().err)
    assert code == 2
    assert f"data file {path}" in line
    assert expected in line
    assert store_untouched(sqlite_uri)


# --------------------------------------------------------------------------------------------
# End to end: `train --data` on the shipped files, into a real MLflow store
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trained:
    uri: str
    workdir: Path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """sp500.csv.gz in OHLCV mode; crude.csv.gz and the same bytes decompressed here as crude.csv,
    each with --target WTI (monthly bars: ten-year training windows, five-year test windows)."""
    workdir = tmp_path_factory.mktemp("quant-files")
    uri = sqlite_uri_of(workdir / "mlflow.db")
    (workdir / "crude.csv").write_bytes(arch_bytes("crude"))
    monthly = ["--target", "WTI", "--train-months", "120", "--test-months", "60", "--trials", "1"]
    commands = [
        [str(arch_file("sp500")), "--train-months", "24", "--test-months", "12", "--trials", "2"],
        [str(arch_file("crude")), *monthly],
        [str(workdir / "crude.csv"), *monthly],
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(workdir)
        for command in commands:
            train(["--data", *command, "--jobs", "1"])
    return Trained(uri, workdir)


@pytest.mark.slow
def test_gzipped_yahoo_bars_train_into_the_sp500_experiment(trained: Trained) -> None:
    """`train --data sp500.csv.gz`: 20 years of daily bars read through gzip, experiment
    wf_xgboost_sp500_…, two finished runs with finite scores and the file's data params."""
    name, runs = experiment_runs(trained.uri, "wf_xgboost_sp500_f")
    assert len(runs) == 2
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        assert run.info.status == "FINISHED"
        assert name == f"wf_xgboost_sp500_f{params['total_features']}_tr24m_te12m"
        assert math.isfinite(metrics["avg_test_r2"])
        assert metrics["num_folds"] >= 15
        assert (params["symbol"], params["data_mode"], params["bar_interval"]) == ("sp500", "ohlcv", "1d")
        assert (params["time_column"], params["values_missing"], params["prices_filled"]) == (
            "Date",
            "0",
            "0",
        )
        assert params["data_source"] == str(arch_file("sp500").resolve())


@pytest.mark.slow
def test_crude_gz_and_crude_csv_share_one_monthly_experiment(trained: Trained) -> None:
    """crude.csv.gz (with its byte-order mark) and crude.csv land in one experiment,
    wf_xgboost_crude_f1_tr120m_te60m, each run naming its own file, bar interval 1mo."""
    name, runs = experiment_runs(trained.uri, "wf_xgboost_crude_")
    assert name == "wf_xgboost_crude_f1_tr120m_te60m"
    assert sorted(Path(r.data.params["data_source"]).name for r in runs) == ["crude.csv", "crude.csv.gz"]
    for run in runs:
        params = run.data.params
        assert run.info.status == "FINISHED"
        assert (params["symbol"], params["bar_interval"], params["time_column"]) == ("crude", "1mo", "Date")
        assert (params["data_mode"], params["target"], params["feature_names"]) == ("target", "WTI", "Brent")
        assert math.isfinite(run.data.metrics["avg_test_r2"])
