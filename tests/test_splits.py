"""Walk-forward splits by calendar months: table tests and properties."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.splits import NotEnoughMonths, latest_window, month_span, walk_forward_splits


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
    """No test row is before or inside its training window; test windows touch, never overlap."""
    try:
        folds = walk_forward_splits(times, train, test, window)  # type: ignore[arg-type]
    except NotEnoughMonths as e:
        available = e.available
        folds = []
    else:
        available = month_span(times)[1]
    assert available == month_span(times)[1]
    for fold in folds:
        assert fold.n_train > 0
        assert fold.n_test > 0
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
        )  # only empty windows skipped
    tested = [row for f in folds for row in range(f.test.start, f.test.stop)]
    assert len(tested) == len(set(tested))
