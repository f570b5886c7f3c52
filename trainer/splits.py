"""Walk-forward splits by calendar months (pure: arrays in, row ranges out).

Windows are whole calendar months counted from the month of the first row. Fold ``k`` tests
on the ``test_months`` months that start ``train_months + k * test_months`` months after the
first month, so consecutive test windows touch without overlapping. Its training window is
the ``train_months`` months just before the test window (``rolling``) or everything from the
first month on (``expanding``). Rows must be sorted by time; ranges are half-open slices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Window = Literal["rolling", "expanding"]
WINDOWS: tuple[Window, ...] = ("rolling", "expanding")


class NotEnoughMonths(ValueError):
    """The data covers fewer calendar months than one fold needs."""

    def __init__(self, needed: int, available: int, first: str, last: str) -> None:
        self.needed = needed
        self.available = available
        self.first = first
        self.last = last
        super().__init__(
            f"one fold needs {needed} calendar months of data, "
            f"the data covers {available} ({first} .. {last})"
        )


@dataclass(frozen=True)
class Fold:
    """One walk-forward fold: month boundaries (``YYYY-MM``, end exclusive) and row slices."""

    index: int
    train_start: np.datetime64
    train_end: np.datetime64
    test_start: np.datetime64
    test_end: np.datetime64
    train: slice
    test: slice

    @property
    def n_train(self) -> int:
        return self.train.stop - self.train.start

    @property
    def n_test(self) -> int:
        return self.test.stop - self.test.start


def _months(times: np.ndarray) -> np.ndarray:
    return np.asarray(times, dtype="datetime64[ns]").astype("datetime64[M]")


def month_span(times: np.ndarray) -> tuple[np.datetime64, int]:
    """First calendar month of sorted ``times`` and how many months they touch."""
    if len(times) == 0:
        raise NotEnoughMonths(1, 0, "-", "-")
    months = _months(times)
    first, last = months[0], months[-1]
    return first, int((last - first).astype(int)) + 1


def _row(times_ns: np.ndarray, month: np.datetime64) -> int:
    return int(np.searchsorted(times_ns, month.astype("datetime64[ns]"), side="left"))


def walk_forward_splits(
    times: np.ndarray,
    train_months: int,
    test_months: int,
    window: Window = "rolling",
) -> list[Fold]:
    """All folds whose train and test windows lie inside the months that ``times`` touch.

    Folds with no training or no test rows (a gap in the data) are left out, so fold indices
    stay consecutive. Raises ``NotEnoughMonths`` when not even one fold fits.
    """
    if train_months < 1 or test_months < 1:
        raise ValueError("train_months and test_months must be >= 1")
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {WINDOWS}, not {window!r}")
    times_ns = np.asarray(times, dtype="datetime64[ns]")
    first, n_months = month_span(times_ns)
    needed = train_months + test_months
    if n_months < needed:
        last = first + np.timedelta64(n_months - 1, "M")
        raise NotEnoughMonths(needed, n_months, str(first), str(last))

    folds: list[Fold] = []
    k = 0
    while train_months + (k + 1) * test_months <= n_months:
        test_start = first + np.timedelta64(train_months + k * test_months, "M")
        test_end = test_start + np.timedelta64(test_months, "M")
        train_end = test_start
        train_start = first if window == "expanding" else train_end - np.timedelta64(train_months, "M")
        train = slice(_row(times_ns, train_start), _row(times_ns, train_end))
        test = slice(_row(times_ns, test_start), _row(times_ns, test_end))
        if train.stop > train.start and test.stop > test.start:
            folds.append(Fold(len(folds), train_start, train_end, test_start, test_end, train, test))
        k += 1
    if not folds:
        last = first + np.timedelta64(n_months - 1, "M")
        raise NotEnoughMonths(needed, n_months, str(first), str(last))
    return folds


def latest_window(times: np.ndarray, train_months: int, window: Window = "rolling") -> slice:
    """Rows of the deployable model's training window: the last ``train_months`` months of
    data (``rolling``) or all of it (``expanding``)."""
    times_ns = np.asarray(times, dtype="datetime64[ns]")
    first, n_months = month_span(times_ns)
    if window == "expanding" or n_months <= train_months:
        return slice(0, len(times_ns))
    start = first + np.timedelta64(n_months - train_months, "M")
    return slice(_row(times_ns, start), len(times_ns))
