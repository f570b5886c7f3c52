"""Reading a user's table: CSV (separator and decimal mark sniffed), compressed or not, or
Parquet, into a frame.

CSV files (``.csv``, ``.tsv``, ``.txt``) may be compressed: ``.gz``, ``.bz2``, ``.xz``, or
``.zip`` holding one file. They may be separated by commas, semicolons or tabs (sniffed from the
decompressed header line); with semicolons or tabs, decimal commas (``1,2345``) are read as
numbers. Text is UTF-8 (a byte-order mark is skipped), UTF-16 when it starts with its
byte-order mark (Excel's "Unicode Text"), else Windows-1252, the encoding Excel on Windows saves
a CSV in (log line ``encoding``). yfinance's three-line header (``Price,Close,...`` /
``Ticker,SPY,...`` / ``Date,,...``) is read as the columns of its first line, the first named by
the third (log line ``yfinance_header``). The markers people's sources write for a
missing value (``.`` from FRED, ``NA``, ``N/A``, ``null``, ``-``, ``#N/A``, an empty field)
are read as missing. An unnamed first column
holding the row numbers 0..n-1 or 1..n (``df.to_csv()`` of a plain index) is dropped.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import lzma
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BufferedIOBase
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import structlog

from trainer.errors import InputError, describe

log = structlog.get_logger(__name__)

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")
# The compressions a CSV may come in, by suffix; a zip archive must hold one file.
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zip")
# Missing-value markers besides pandas' own, which include NA, N/A, null, #N/A and empty fields.
MISSING_MARKERS = (".", "-")
# A file's bytes: a plain file, a decompressor's stream or a zip archive's member.
ByteStream = IO[bytes] | BufferedIOBase
# What pandas calls a column whose header is empty (the index written by ``to_csv``).
_UNNAMED = re.compile(r"Unnamed: \d+")
# A CSV value written with a decimal comma (``1,2345``).
_DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+")
# What a zip archive holds besides files: folders, and the extras of an archive made on a Mac.
_ZIP_EXTRAS = re.compile(r"(^|/)(__MACOSX/|\._)|/$")


def table_stem(path: Path) -> str:
    """The file's name without its compression and table suffixes: ``sp500.csv.gz`` -> ``sp500``,
    ``BRK.B.csv`` -> ``BRK.B``."""
    name = path.name
    for known in (COMPRESSED_SUFFIXES, (*CSV_SUFFIXES, *PARQUET_SUFFIXES)):
        suffix = Path(name).suffix
        if suffix.lower() in known and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return name


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV (compressed or not) or Parquet file, turning every failure into an InputError
    naming the file."""
    if not path.exists():
        raise InputError(f"data file {path} does not exist")
    if path.is_dir():
        raise InputError(f"data file {path} is a directory, not a CSV or Parquet file")
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES else None
    try:
        if compression is None and suffixes and suffixes[-1] in PARQUET_SUFFIXES:
            frame = pd.read_parquet(path)
            if not isinstance(frame.index, pd.RangeIndex):  # a time index saved with the frame
                frame = frame.reset_index(names=[n if n is not None else "" for n in frame.index.names])
            return frame
        member = _zip_member(path) if compression == ".zip" else None
        if member is not None:
            suffixes.append(Path(member).suffix.lower())  # x.zip holding x.tsv reads as a TSV
        if not any(s in CSV_SUFFIXES for s in suffixes):
            raise InputError(
                f"data file {path} holds {member!r}, not a CSV file (.csv, .tsv, .txt)"
                if member is not None
                else f"data file {path} is neither CSV (.csv, also as .csv.gz, .csv.bz2, .csv.xz or "
                ".csv.zip) nor Parquet (.parquet)"
            )
        source = _Source(path, compression, member, _starts_utf16(path, compression, member))
        if source.utf16:
            log.info("encoding", encoding="utf-16")
        with source.opened() as handle:
            sep, decimal = csv_dialect(handle, tsv=".tsv" in suffixes)
        with source.opened() as handle:
            index, tickers = yfinance_header(handle, sep)
        if len(tickers) > 1:
            raise InputError(
                f"data file {path} holds {len(tickers)} tickers ({', '.join(tickers)}) in yfinance's "
                "header; download one ticker per file"
            )
        try:
            frame = _read_csv(source, sep, decimal, "utf-8", yfinance=index is not None)
        except UnicodeDecodeError:
            log.info("encoding", encoding="cp1252")
            frame = _read_csv(source, sep, decimal, "cp1252", yfinance=index is not None)
        if index is not None:
            log.info("yfinance_header", tickers=tickers, time_column=index)
            frame = frame.rename(columns={frame.columns[0]: index})
        return frame
    except InputError:
        raise
    except Exception as e:  # pandas, pyarrow and the decompressors raise many types for a bad file
        raise InputError(f"cannot read data file {path}: {describe(e)}") from e


@dataclass(frozen=True)
class _Source:
    """Where a CSV's bytes come from: the file, its compression, the member a zip archive holds,
    and whether the text is UTF-16 (read as UTF-8 bytes)."""

    path: Path
    compression: str | None
    member: str | None
    utf16: bool

    @contextmanager
    def opened(self) -> Iterator[ByteStream]:
        with _opened(self.path, self.compression, self.member) as handle:
            yield io.BytesIO(handle.read().decode("utf-16").encode("utf-8")) if self.utf16 else handle


def _starts_utf16(path: Path, compression: str | None, member: str | None) -> bool:
    """The (decompressed) bytes start with a UTF-16 byte-order mark."""
    with _opened(path, compression, member) as handle:
        return handle.read(2) in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _read_csv(source: _Source, sep: str, decimal: str, encoding: str, *, yfinance: bool) -> pd.DataFrame:
    """The table; with yfinance's header, its ``Ticker`` and index-name lines skipped."""
    with source.opened() as handle:
        return pd.read_csv(
            handle,
            sep=sep,
            decimal=decimal,
            na_values=list(MISSING_MARKERS),
            encoding=encoding,
            skiprows=[1, 2] if yfinance else None,
        )


def _zip_member(path: Path) -> str:
    """The one file a zip archive holds (folders and a Mac's ``__MACOSX`` extras aside)."""
    with zipfile.ZipFile(path) as archive:
        members = [name for name in archive.namelist() if not _ZIP_EXTRAS.search(name)]
    if len(members) != 1:
        held = f"{len(members)} files ({', '.join(members)})" if members else "no file"
        raise InputError(f"data file {path} is a zip archive holding {held}; it must hold one CSV file")
    return members[0]


@contextmanager
def _opened(path: Path, compression: str | None, member: str | None) -> Iterator[ByteStream]:
    """The file's bytes, decompressed (``member``: the file a zip archive holds)."""
    if compression == ".zip":
        with zipfile.ZipFile(path) as archive, archive.open(str(member)) as handle:
            yield handle
        return
    with _decompressing(path, compression) as handle:
        yield handle


def _decompressing(path: Path, compression: str | None) -> ByteStream:
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".bz2":
        return bz2.open(path, "rb")
    if compression == ".xz":
        return lzma.open(path, "rb")
    return path.open("rb")


def csv_dialect(handle: ByteStream, *, tsv: bool = False) -> tuple[str, str]:
    """The separator (the most frequent of comma, semicolon and tab in the header line) and the
    decimal mark (a comma when the separator is not one and values look like ``1,2345``), from
    the first lines of ``handle``."""
    lines = [handle.readline().decode("utf-8", errors="replace") for _ in range(21)]
    header = lines[0]
    counts = {sep: header.count(sep) for sep in (",", ";", "\t")}
    sep = max(counts, key=lambda k: counts[k])
    if counts[sep] == 0 or (tsv and counts["\t"]):
        sep = "\t" if tsv else ","
    if sep == ",":
        return sep, "."
    fields = [v.strip().strip('"') for line in lines[1:] for v in line.rstrip("\r\n").split(sep)]
    return sep, "," if any(_DECIMAL_COMMA.fullmatch(v) for v in fields) else "."


def yfinance_header(handle: ByteStream, sep: str) -> tuple[str | None, list[str]]:
    """The index name (``Date``, ``Datetime``) and the tickers of the three-line header yfinance
    writes (``Price,Close,High,...`` / ``Ticker,SPY,SPY,...`` / ``Date,,,...``); ``(None, [])``
    for any other header."""
    price, ticker, index = (
        handle.readline().decode("utf-8-sig", errors="replace").rstrip("\r\n").split(sep) for _ in range(3)
    )
    if (
        price[0].strip() != "Price"
        or ticker[0].strip() != "Ticker"
        or not index[0].strip()
        or any(v.strip() for v in index[1:])
    ):
        return None, []
    return index[0].strip(), sorted({t.strip() for t in ticker[1:] if t.strip()})


def column_key(column: object) -> str:
    """A column's name as the trainer recognises it: any case, without surrounding spaces or the
    angle brackets MetaTrader and Stooq exports put around it (``<CLOSE>`` -> ``close``)."""
    key = str(column).strip().lower()
    return key[1:-1].strip() if key.startswith("<") and key.endswith(">") else key


def is_number(raw: pd.Series) -> bool:
    """A column of numbers (booleans are not)."""
    return bool(pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw))


def unnamed(column: object) -> bool:
    """A column whose header is empty (pandas names it ``Unnamed: N``)."""
    return str(column).strip() == "" or bool(_UNNAMED.fullmatch(str(column)))


def without_row_numbers(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without an unnamed first column holding 0..n-1 or 1..n: a row index, no data."""
    first = frame.columns[0]
    if not unnamed(first) or len(frame.columns) < 2:
        return frame
    raw = frame[first]
    if not pd.api.types.is_integer_dtype(raw) or pd.api.types.is_bool_dtype(raw):
        return frame
    values = raw.to_numpy()
    counter = np.arange(len(values))
    if not (np.array_equal(values, counter) or np.array_equal(values, counter + 1)):
        return frame
    log.info("row_numbers_dropped", column=str(first))
    return frame.drop(columns=first)


def listed(columns: pd.Index, limit: int = 12) -> str:
    """Column names for a message: the first ``limit``, then how many more."""
    names = [str(c) for c in columns]
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
