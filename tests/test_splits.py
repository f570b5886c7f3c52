"""Walk-forward splits by calendar months: table tests and properties."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.splits import (
    NotEnoughMonths,
    default_min_rows,
    latest_window,
    month_span,
    plan_folds,
    walk_forward_splits,
)


def hourly(start: str, end: str) -> np.ndarray:
    return np.arange(np.datetime64(start, "h"), np.datetime64(end, "h"), np.timedelta64(1, "h")).astype(
        "datetime64[ns]"
    )


def month(text: str) -> np.datetime64:
    return np.datetime64(text, "M")


@pytest.mark.parametrize(
    ("train", "test", "window", "expected"),
    [
        # (train_start, train_end, test_start, test_end) per fold, end exclusive
        (
            3,
            1,
            "rolling",
            [
                ("2024-01", "2024-04", "2024-04", "2024-05"),
                ("2024-02", "2024-05", "2024-05", "2024-06"),
                ("2024-03", "2024-06", "2024-06", "2024-07"),
            ],
        ),
        (
            3,
            1,
            "expanding",
            [
                ("2024-01", "2024-04", "2024-04", "2024-05"),
                ("2024-01", "2024-05", "2024-05", "2024-06"),
                ("2024-01", "2024-06", "2024-06", "2024-07"),
            ],
        ),
        (
            2,
            2,
            "rolling",
            [("2024-01", "2024-03", "2024-03", "2024-05"), ("2024-03", "2024-05", "2024-05", "2024-07")],
        ),
        (4, 2, "rolling", [("2024-01", "2024-05", "2024-05", "2024-07")]),
        # a test window that would run past the data is not made
        (5, 2, "rolling", []),
    ],
)
def test_fold_windows_table(train: int, test: int, window: str, expected: list[tuple[str, ...]]) -> None:
    """Six months of hourly data give exactly these calendar windows, stepping by the test window."""
    times = hourly("2024-01-01T00", "2024-07-01T00")
    if not expected:
        with pytest.raises(NotEnoughMonths):
            walk_forward_splits(times, train, test, window)  # type: ignore[arg-type]
        return
    folds = walk_forward_splits(times, train, test, window)  # type: ignore[arg-type]
    got = [(str(f.train_start), str(f.train_end), str(f.test_start), str(f.test_end)) for f in folds]
    assert got == expected
    assert [f.index for f in folds] == list(range(len(folds)))


def test_fold_rows_match_their_months() -> None:
    """Each fold's row slices hold exactly the rows whose month is inside its windows."""
    times = hourly("2024-01-15T00", "2024-06-10T00")
    months = times.astype("datetime64[M]")
    for fold in walk_forward_splits(times, 2, 1):
        train_months = months[fold.train]
        test_months = months[fold.test]
        assert train_months.min() >= fold.train_start
        assert train_months.max() < fold.train_end
        assert test_months.min() >= fold.test_start
        assert test_months.max() < fold.test_end
        inside = (months >= fold.test_start) & (months < fold.test_end)
        assert inside.sum() == fold.n_test


def test_not_enough_months_says_needed_and_available() -> None:
    """Too little data raises NotEnoughMonths with the months needed, available and the span."""
    times = hourly("2024-01-01T00", "2024-03-01T00")
    with pytest.raises(NotEnoughMonths) as info:
        walk_forward_splits(times, 3, 1)
    assert (info.value.needed, info.value.available) == (4, 2)
    assert "needs 4 calendar months" in str(info.value)
    assert "2024-01 .. 2024-02" in str(info.value)


def test_gap_month_fold_is_left_out_and_indices_stay_consecutive() -> None:
    """A fold whose train or test months hold no rows is left out; fold indices stay 0..n-1."""
    times = np.concatenate(
        [hourly("2024-01-01T00", "2024-04-01T00"), hourly("2024-05-01T00", "2024-07-01T00")]
    )
    folds = walk_forward_splits(times, 1, 1)
    assert [str(f.test_start) for f in folds] == ["2024-02", "2024-03", "2024-06"]
    assert [f.index for f in folds] == [0, 1, 2]


def test_latest_window_is_last_train_months_or_everything() -> None:
    """The deployable model trains on the last train_months months (rolling) or all rows (expanding)."""
    times = hourly("2024-01-01T00", "2024-07-01T00")
    rows = latest_window(times, 2)
    assert times[rows].astype("datetime64[M]").min() == month("2024-05")
    assert rows.stop == len(times)
    assert latest_window(times, 2, "expanding") == slice(0, len(times))
    assert latest_window(times, 12) == slice(0, len(times))


def daily(start: str, end: str, business: bool = False) -> np.ndarray:
    days = np.arange(np.datetime64(start, "D"), np.datetime64(end, "D"), np.timedelta64(1, "D"))
    if business:
        days = days[np.is_busday(days)]
    return days.astype("datetime64[ns]")


def _without(times: np.ndarray, month_text: str) -> np.ndarray:
    return times[times.astype("datetime64[M]") != month(month_text)]


@pytest.mark.parametrize(
    ("case", "times", "train", "test", "min_test_rows", "used", "skipped"),
    [
        # 2024-01-01 00:00 to 2025-03-01 00:00 inclusive: March is one row, not a fold
        (
            "partial_last_month_hourly",
            hourly("2024-01-01T00", "2025-03-01T01"),
            3,
            1,
            None,
            [f"2024-{m:02d}" for m in range(4, 13)] + ["2025-01", "2025-02"],
            ["2025-03"],
        ),
        # January is one day: a one-month training window of one row is not a fold
        (
            "partial_first_month_daily",
            daily("2024-01-31", "2024-06-01"),
            1,
            1,
            None,
            ["2024-03", "2024-04", "2024-05"],
            ["2024-02"],
        ),
        # no rows in April: its test window and May's training window are empty
        (
            "missing_month_hourly",
            _without(hourly("2024-01-01T00", "2024-07-01T00"), "2024-04"),
            1,
            1,
            None,
            ["2024-02", "2024-03", "2024-06"],
            ["2024-04", "2024-05"],
        ),
        # business days over three years: every month is a full window
        (
            "daily_business_days",
            daily("2021-01-01", "2024-01-01", business=True),
            3,
            1,
            None,
            [str(m) for m in np.arange(month("2021-04"), month("2024-01"))],
            [],
        ),
        # May holds exactly 10 rows, the default minimum (half the median of 30 and 10 is 10)
        (
            "exactly_at_default_min",
            daily("2024-01-01", "2024-05-11"),
            3,
            1,
            None,
            ["2024-04", "2024-05"],
            [],
        ),
        ("exactly_at_given_min", daily("2024-01-01", "2024-05-11"), 3, 1, 10, ["2024-04", "2024-05"], []),
        ("one_below_given_min", daily("2024-01-01", "2024-05-11"), 3, 1, 11, ["2024-04"], ["2024-05"]),
    ],
)
def test_fold_selection_table(
    case: str,
    times: np.ndarray,
    train: int,
    test: int,
    min_test_rows: int | None,
    used: list[str],
    skipped: list[str],
) -> None:
    """Which calendar windows become folds, and which are skipped for too few rows."""
    plan = plan_folds(times, train, test, "rolling", min_test_rows)
    assert [str(f.test_start) for f in plan.folds] == used
    assert [str(w.test_start) for w in plan.skipped] == skipped
    assert [f.index for f in plan.folds] == list(range(len(used)))
    assert all(f.n_test >= plan.min_test_rows for f in plan.folds)
    if min_test_rows is not None:
        assert plan.min_test_rows == min_test_rows
    for window in plan.skipped:
        assert str(window.test_start) in window.reason


def test_default_min_rows_is_ten_or_half_the_median() -> None:
    """The default threshold: the larger of 10 and half the median non-empty window."""
    assert default_min_rows([744, 720, 744, 1]) == 366  # median 732
    assert default_min_rows([21, 20, 22]) == 10
    assert default_min_rows([4, 4, 0]) == 10
    assert default_min_rows([]) == 10


def test_no_fold_left_says_what_a_test_window_needs() -> None:
    """When every window is below min_test_rows, the error says the threshold and the largest window."""
    times = daily("2024-01-01", "2024-06-01")
    with pytest.raises(NotEnoughMonths) as info:
        plan_folds(times, 3, 1, "rolling", 40)
    assert (info.value.min_test_rows, info.value.largest_test, info.value.rows) == (40, 31, len(times))
    assert "needs at least 40 rows (min_test_rows), the largest has 31" in str(info.value)


@st.composite
def timelines(draw: st.DrawFn) -> np.ndarray:
    start = draw(st.integers(0, 2000))  # days after 2020-01-01
    days = draw(st.integers(20, 900))
    step_hours = draw(st.sampled_from([1, 6, 24, 72]))
    hours = np.arange(0, days * 24, step_hours)
    drop = draw(st.lists(st.integers(0, len(hours) - 1), max_size=30))
    keep = np.setdiff1d(np.arange(len(hours)), drop)
    base = np.datetime64("2020-01-01T00", "h") + np.timedelta64(start * 24, "h")
    return (base + hours[keep].astype("timedelta64[h]")).astype("datetime64[ns]")


@settings(max_examples=150, deadline=None)
@given(
    times=timelines(),
    train=st.integers(1, 6),
    test=st.integers(1, 4),
    window=st.sampled_from(["rolling", "expanding"]),
)
def test_walk_forward_properties(times: np.ndarray, train: int, test: int, window: str) -> None:
    """No test row is before or inside its training window; test windows touch, never overlap;
    every candidate window is used or skipped, and a used one has enough rows."""
    try:
        plan = plan_folds(times, train, test, window)  # type: ignore[arg-type]
    except NotEnoughMonths as e:
        available = e.available
        folds = []
    else:
        available = month_span(times)[1]
        folds = plan.folds
        assert len(folds) + len(plan.skipped) == (available - train) // test  # every candidate window
        assert folds == walk_forward_splits(times, train, test, window)  # type: ignore[arg-type]
    assert available == month_span(times)[1]
    for fold in folds:
        assert fold.n_train >= 10
        assert fold.n_test >= max(10, plan.min_test_rows)
        assert times[fold.train].max() < times[fold.test].min()
        assert fold.train.stop <= fold.test.start
        assert fold.train_end == fold.test_start
        assert fold.test_end - fold.test_start == np.timedelta64(test, "M")
        span = fold.train_end - fold.train_start
        if window == "rolling":
            assert span == np.timedelta64(train, "M")
        else:
            assert span >= np.timedelta64(train, "M")
    windows = sorted((f.test_start, f.test_end) for f in folds)
    for (_, end), (start, _) in itertools.pairwise(windows):
        assert start >= end  # no overlap
        assert (start - end) % np.timedelta64(test, "M") == np.timedelta64(
            0, "M"
        )  # only whole windows skipped
    tested = [row for f in folds for row in range(f.test.start, f.test.stop)]
    assert len(tested) == len(set(tested))


def test_purge_cuts_the_last_rows_of_each_training_window_and_embargo_the_first_test_rows() -> None:
    """With a horizon of H the last H training rows (labels reaching into the test window) are
    gone, so the last training row's label ends at the test window's first row at the latest;
    the embargo leaves that many rows out at the start of each test window."""
    times = hourly("2024-01-01", "2024-07-01")
    plain = plan_folds(times, 3, 1)
    plan = plan_folds(times, 3, 1, purge=3, embargo=5)
    assert len(plan.folds) == len(plain.folds) == 3
    for fold, before in zip(plan.folds, plain.folds, strict=True):
        assert fold.train == slice(before.train.start, before.train.stop - 3)
        assert fold.test == slice(before.test.start + 5, before.test.stop)
        assert fold.train.stop + 3 <= fold.test.start  # no training label reaches a tested row
    assert (plan.purged_rows, plan.embargoed_rows) == (9, 15)
    assert (plain.purged_rows, plain.embargoed_rows) == (0, 0)
    assert plan.min_test_rows == plain.min_test_rows  # thresholds come from whole windows


def test_a_training_window_whose_target_does_not_vary_is_skipped_and_counted() -> None:
    """Not a crash: the fold is skipped like a short window, with the reason."""
    times = hourly("2024-01-01", "2024-07-01")
    target = np.random.default_rng(0).normal(size=len(times))
    flat = (times >= np.datetime64("2024-02-01")) & (times < np.datetime64("2024-05-01"))
    target[flat] = 0.25  # February to April: the training window of the May fold
    plan = plan_folds(times, 3, 1, purge=1, target=target)
    assert [str(f.test_start)[:7] for f in plan.folds] == ["2024-04", "2024-06"]
    assert [f.index for f in plan.folds] == [0, 1]
    (skipped,) = plan.skipped
    assert "target is constant in the training window before 2024-05" in skipped.reason
    with pytest.raises(NotEnoughMonths, match="does not vary in any training window"):
        plan_folds(times, 3, 1, target=np.zeros(len(times)))
