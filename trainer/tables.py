"""Reading a user's table: CSV (separator and decimal mark sniffed) or Parquet, into a frame.

CSV files may be separated by commas, semicolons or tabs (sniffed from the header line); with
semicolons or tabs, decimal commas (``1,2345``) are read as numbers. An unnamed first column
holding the row numbers 0..n-1 or 1..n (``df.to_csv()`` of a plain index) is dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import structlog

from trainer.errors import InputError, describe

log = structlog.get_logger(__name__)

# What pandas calls a column whose header is empty (the index written by ``to_csv``).
_UNNAMED = re.compile(r"Unnamed: \d+")
# A CSV value written with a decimal comma (``1,2345``).
_DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+")


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
            sep, decimal = csv_dialect(path, tsv=".tsv" in suffixes)
            return pd.read_csv(path, sep=sep, decimal=decimal)
    except Exception as e:  # pandas/pyarrow raise many types for a bad file
        raise InputError(f"cannot read data file {path}: {describe(e)}") from e
    raise InputError(f"data file {path} is neither CSV (.csv) nor Parquet (.parquet)")


def csv_dialect(path: Path, *, tsv: bool = False) -> tuple[str, str]:
    """The separator (the most frequent of comma, semicolon and tab in the header line) and the
    decimal mark (a comma when the separator is not one and values look like ``1,2345``)."""
    with path.open("rb") as f:
        lines = [f.readline().decode("utf-8", errors="replace") for _ in range(21)]
    header = lines[0]
    counts = {sep: header.count(sep) for sep in (",", ";", "\t")}
    sep = max(counts, key=lambda k: counts[k])
    if counts[sep] == 0 or (tsv and counts["\t"]):
        sep = "\t" if tsv else ","
    if sep == ",":
        return sep, "."
    fields = [v.strip().strip('"') for line in lines[1:] for v in line.rstrip("\r\n").split(sep)]
    return sep, "," if any(_DECIMAL_COMMA.fullmatch(v) for v in fields) else "."


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
