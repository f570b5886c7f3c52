"""Walk-forward splits by calendar months (pure: arrays in, row ranges out).

Windows are whole calendar months counted from the month of the first row. Fold ``k`` tests
on the ``test_months`` months that start ``train_months + k * test_months`` months after the
first month, so consecutive test windows touch without overlapping. Its training window is
the ``train_months`` months just before the test window (``rolling``) or everything from the
first month on (``expanding``). Rows must be sorted by time; ranges are half-open slices.

Leakage: a row's label can look ahead (the return over the next ``horizon`` bars), so the
last ``purge`` rows of each training window, whose labels reach into the test window, are
purged; and the first ``embargo`` rows of each test window -- the rows right after the
previous test window, and after the training window -- are left out, so a model is never
scored on the rows that follow its training data most closely.

A window too short to say anything is not a fold: a test window with fewer than
``min_test_rows`` rows (by default the larger of 10 and half the median test window), so a
partial last month never becomes a one-row fold, and a training window with fewer than the
larger of 10 and half the median ``rolling`` training window (a partial first month). The
defaults are measured on whole calendar windows; the counts compared with them are of the rows
left after purging and the embargo. A training window whose target does not vary (given
``target``) is not a fold either: there is nothing to learn from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Window = Literal["rolling", "expanding"]
WINDOWS: tuple[Window, ...] = ("rolling", "expanding")


# Below this many rows no window is a fold, whatever the median says.
MIN_WINDOW_ROWS = 10


class NotEnoughMonths(ValueError):
    """No fold is left: too few calendar months, or every window has too few rows.

    ``min_test_rows`` is the threshold that was applied (0 when the months alone fell short)
    and ``largest_test`` the most rows any test window had.
    """

    def __init__(
        self,
        needed: int,
        available: int,
        first: str,
        last: str,
        *,
        rows: int = 0,
        min_test_rows: int = 0,
        largest_test: int = 0,
        min_train_rows: int = 0,
        largest_train: int = 0,
        constant_target: int = 0,
    ) -> None:
        self.needed = needed
        self.available = available
        self.first = first
        self.last = last
        self.rows = rows
        self.min_test_rows = min_test_rows
        self.largest_test = largest_test
        self.min_train_rows = min_train_rows
        self.largest_train = largest_train
        self.constant_target = constant_target  # windows long enough whose target never varies
        if constant_target:
            detail = f"the target does not vary in any training window long enough ({constant_target})"
        elif min_test_rows and largest_test >= min_test_rows:
            detail = (
                f"its training window needs at least {min_train_rows} rows, the largest has {largest_train}"
            )
        elif min_test_rows:
            detail = (
                f"each test window needs at least {min_test_rows} rows (min_test_rows), "
                f"the largest has {largest_test}"
            )
        else:
            detail = f"the data covers {available} ({first} .. {last})"
        super().__init__(f"one fold needs {needed} calendar months of data, {detail}")


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


@dataclass(frozen=True)
class SkippedWindow:
    """A candidate fold that was not used, and why."""

    test_start: np.datetime64
    n_train: int
    n_test: int
    reason: str


@dataclass(frozen=True)
class FoldPlan:
    """The folds used, the candidates skipped, and the thresholds that decided it."""

    folds: list[Fold]
    skipped: list[SkippedWindow]
    min_test_rows: int
    min_train_rows: int
    purged_rows: int = 0  # training rows purged, over the folds used
    embargoed_rows: int = 0  # test rows left out by the embargo, over the folds used


def default_min_rows(window_rows: list[int]) -> int:
    """The larger of 10 and half the median of the non-empty windows' row counts."""
    filled = sorted(n for n in window_rows if n > 0)
    if not filled:
        return MIN_WINDOW_ROWS
    return max(MIN_WINDOW_ROWS, math.floor(float(np.median(filled)) / 2))


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


def plan_folds(
    times: np.ndarray,
    train_months: int,
    test_months: int,
    window: Window = "rolling",
    min_test_rows: int | None = None,
    *,
    purge: int = 0,
    embargo: int = 0,
    target: np.ndarray | None = None,
) -> FoldPlan:
    """Every fold whose windows lie inside the months ``times`` touch and hold enough rows.

    ``min_test_rows`` None: the default (``default_min_rows`` of the test windows). ``purge``
    rows are cut from the end of each training window and ``embargo`` rows from the start of
    each test window; with ``target``, a training window where it does not vary is skipped.
    Fold indices stay consecutive over the folds used. Raises ``NotEnoughMonths`` when no fold
    is left.
    """
    if train_months < 1 or test_months < 1:
        raise ValueError("train_months and test_months must be >= 1")
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {WINDOWS}, not {window!r}")
    if min_test_rows is not None and min_test_rows < 1:
        raise ValueError("min_test_rows must be >= 1")
    if purge < 0 or embargo < 0:
        raise ValueError("purge and embargo must be >= 0")
    times_ns = np.asarray(times, dtype="datetime64[ns]")
    first, n_months = month_span(times_ns)
    needed = train_months + test_months
    last = first + np.timedelta64(n_months - 1, "M")
    if n_months < needed:
        raise NotEnoughMonths(needed, n_months, str(first), str(last), rows=len(times_ns))

    candidates = []  # (test_start, test_end, train_start, train rows, rolling train rows, test rows)
    k = 0
    while train_months + (k + 1) * test_months <= n_months:
        test_start = first + np.timedelta64(train_months + k * test_months, "M")
        test_end = test_start + np.timedelta64(test_months, "M")
        rolling_start = test_start - np.timedelta64(train_months, "M")
        train_start = first if window == "expanding" else rolling_start
        train = slice(_row(times_ns, train_start), _row(times_ns, test_start))
        rolling = slice(_row(times_ns, rolling_start), train.stop)
        test = slice(_row(times_ns, test_start), _row(times_ns, test_end))
        candidates.append((test_start, test_end, train_start, train, rolling, test))
        k += 1
    test_threshold = (
        default_min_rows([c[5].stop - c[5].start for c in candidates])
        if min_test_rows is None
        else min_test_rows
    )
    train_threshold = default_min_rows([c[4].stop - c[4].start for c in candidates])

    folds: list[Fold] = []
    skipped: list[SkippedWindow] = []
    purged = embargoed = constant = 0
    largest_train = largest_test = 0
    for test_start, test_end, train_start, whole_train, _, whole_test in candidates:
        train = slice(whole_train.start, max(whole_train.start, whole_train.stop - purge))
        test = slice(min(whole_test.stop, whole_test.start + embargo), whole_test.stop)
        n_train, n_test = train.stop - train.start, test.stop - test.start
        largest_train, largest_test = max(largest_train, n_train), max(largest_test, n_test)
        reason = None
        if n_test < test_threshold:
            reason = (
                f"test window from {test_start} has {n_test} rows, fewer than min_test_rows {test_threshold}"
            )
        elif n_train < train_threshold:
            reason = f"training window before {test_start} has {n_train} rows, fewer than {train_threshold}"
        elif target is not None and np.ptp(target[train]) == 0:
            constant += 1
            reason = (
                f"target is constant in the training window before {test_start} "
                f"({n_train} rows of {float(target[train.start]):g}): nothing to learn"
            )
        if reason is not None:
            skipped.append(SkippedWindow(test_start, n_train, n_test, reason))
            continue
        purged += whole_train.stop - train.stop
        embargoed += test.start - whole_test.start
        folds.append(Fold(len(folds), train_start, test_start, test_start, test_end, train, test))
    if not folds:
        raise NotEnoughMonths(
            needed,
            n_months,
            str(first),
            str(last),
            rows=len(times_ns),
            min_test_rows=test_threshold,
            largest_test=largest_test,
            min_train_rows=train_threshold,
            largest_train=largest_train,
            constant_target=constant,
        )
    return FoldPlan(folds, skipped, test_threshold, train_threshold, purged, embargoed)


def walk_forward_splits(
    times: np.ndarray,
    train_months: int,
    test_months: int,
    window: Window = "rolling",
    min_test_rows: int | None = None,
) -> list[Fold]:
    """The folds of ``plan_folds`` (the ones used)."""
    return plan_folds(times, train_months, test_months, window, min_test_rows).folds


def latest_window(times: np.ndarray, train_months: int, window: Window = "rolling") -> slice:
    """Rows of the deployable model's training window: the last ``train_months`` months of
    data (``rolling``) or all of it (``expanding``)."""
    times_ns = np.asarray(times, dtype="datetime64[ns]")
    first, n_months = month_span(times_ns)
    if window == "expanding" or n_months <= train_months:
        return slice(0, len(times_ns))
    start = first + np.timedelta64(n_months - train_months, "M")
    return slice(_row(times_ns, start), len(times_ns))
