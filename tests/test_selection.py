"""The pure selection statistics: PBO by CSCV and the leader's model confidence set."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.cscv import straightforward_cscv
from watcher.memory import selection_view
from watcher.selection import (
    MCS_CANDIDATES,
    BoardRun,
    LeftOut,
    Selection,
    compute,
    cscv_lambdas,
    folds_from_tag,
    gate_reason,
    plain_line,
    selection_json,
)


def board_of(values: np.ndarray | list[list[float]], prefix: str = "run") -> list[BoardRun]:
    return [BoardRun(f"{prefix}{i:03d}", list(row)) for i, row in enumerate(np.asarray(values, dtype=float))]


@st.composite
def boards(draw: st.DrawFn, integers: bool) -> tuple[np.ndarray, int]:
    blocks = draw(st.sampled_from([2, 4, 6, 8]))
    runs = draw(st.integers(2, 9))
    folds = draw(st.integers(blocks, 26))
    if integers:  # multiples of 1/4: many exact ties, and every sum is exact in both codes
        cells = st.integers(-12, 12).map(lambda i: i / 4)
        values = draw(st.lists(cells, min_size=runs * folds, max_size=runs * folds))
        return np.array(values).reshape(runs, folds), blocks
    # Continuous values from a seed: no ties that only the order of additions could break.
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).normal(size=(runs, folds)), blocks


@settings(max_examples=150, deadline=None)
@given(board=st.one_of(boards(integers=True), boards(integers=False)), higher=st.booleans())
def test_lambdas_and_pbo_equal_a_straightforward_cscv(board: tuple[np.ndarray, int], higher: bool) -> None:
    values, blocks = board
    expected = straightforward_cscv(values, blocks, higher)
    got = cscv_lambdas(values if higher else -values, blocks)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_pbo_is_the_share_of_splits_with_lambda_at_most_zero(seed: int) -> None:
    values = np.random.default_rng(seed).normal(size=(15, 30))
    expected = straightforward_cscv(values, 6, higher_is_better=False)
    sel = compute(board_of(values), higher_is_better=False, blocks=6)
    assert (sel.splits, sel.pbo) == (20, np.mean(np.array(expected) <= 0))
    np.testing.assert_allclose(sel.lambdas, expected, rtol=0, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(board=boards(integers=False))
def test_flipping_the_direction_and_the_sign_gives_the_same_answer(board: tuple[np.ndarray, int]) -> None:
    """A lower-is-better metric is ranked from its lowest: -x lower-is-better is x higher-is-better."""
    values, blocks = board
    up = compute(board_of(values), higher_is_better=True, blocks=blocks)
    down = compute(board_of(-values), higher_is_better=False, blocks=blocks)
    assert (up.pbo, up.lambdas, up.tied) == (down.pbo, down.lambdas, down.tied)


def test_a_lower_is_better_metric_picks_the_lowest() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(size=(12, 24))
    values[5] -= 10  # far below the others: the best when lower is better, the worst otherwise
    low = compute(board_of(values), higher_is_better=False)
    high = compute(board_of(values), higher_is_better=True)
    assert low.pbo == 0.0
    assert low.tied == ("run005",)
    assert (high.pbo or 0) > 0
    assert "run005" not in high.tied


def test_identical_runs_cannot_be_told_apart() -> None:
    """Every split picks the first run and ranks it in the middle: λ = 0 (counted), all tied."""
    row = list(np.random.default_rng(1).normal(size=21))
    sel = compute(board_of([row] * 10), higher_is_better=True, blocks=8)
    assert sel.splits == 70
    assert set(sel.lambdas) == {0.0}
    assert sel.pbo == 1.0
    assert sel.tied == tuple(f"run{i:03d}" for i in range(10))


@pytest.mark.parametrize("seed", range(5))
def test_one_run_far_ahead_has_pbo_zero_and_stands_alone(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(30, 40))
    values[17] += 3.0
    sel = compute(board_of(values), higher_is_better=True, blocks=8)
    assert sel.pbo == 0.0
    assert min(sel.lambdas) == pytest.approx(math.log(30))  # rank 30 of 30: ω = 30/31
    assert sel.tied == ("run017",)


def test_pure_noise_has_pbo_near_one_half_over_many_seeds() -> None:
    pbos = [
        float(np.mean(cscv_lambdas(np.random.default_rng(seed).normal(size=(20, 24)), 8) <= 0))
        for seed in range(400)
    ]
    assert 0.45 < float(np.mean(pbos)) < 0.55


def test_a_pure_noise_board_keeps_most_runs_in_the_leaders_set_and_a_skill_board_a_handful() -> None:
    rng = np.random.default_rng(11)
    noise = compute(board_of(rng.normal(size=(40, 30))), higher_is_better=True)
    assert len(noise.tied) >= 30
    skill = rng.normal(size=(40, 30)) + np.linspace(0, 4, 40)[:, None]
    skilled = compute(board_of(skill), higher_is_better=True)
    assert 1 <= len(skilled.tied) <= 6
    assert "run039" in skilled.tied


def test_fewer_folds_than_blocks_has_no_pbo_and_says_why() -> None:
    values = np.random.default_rng(0).normal(size=(6, 5))
    sel = compute(board_of(values), higher_is_better=True, blocks=8)
    assert (sel.pbo, sel.splits, sel.lambdas) == (None, 0, ())
    assert sel.reason == "5 folds, fewer than the 8 blocks (needs at least 8)"
    assert sel.tied  # the confidence set needs no blocks
    assert plain_line(sel).startswith("No PBO: 5 folds, fewer than the 8 blocks")


def test_runs_with_another_number_of_folds_or_none_are_left_out_and_counted() -> None:
    rng = np.random.default_rng(2)
    values = rng.normal(size=(6, 16))
    board = board_of(values)
    board.insert(1, BoardRun("short", list(rng.normal(size=12))))
    board.append(BoardRun("empty", None))
    board.append(BoardRun("hole", [*rng.normal(size=15), None]))
    sel = compute(board, higher_is_better=True, blocks=4)
    assert (sel.runs, sel.folds) == (6, 16)
    assert set(sel.left_out) == {
        LeftOut("short", "12 folds, not 16"),
        LeftOut("empty", "no per-fold values"),
        LeftOut("hole", "no finite value for fold 15"),
    }
    alone = compute(board_of(values), higher_is_better=True, blocks=4)
    assert (sel.pbo, sel.lambdas, sel.tied) == (alone.pbo, alone.lambdas, alone.tied)


def test_a_fold_no_run_has_a_value_for_is_dropped_not_a_reason_to_leave_runs_out() -> None:
    values = np.random.default_rng(4).normal(size=(5, 17)).tolist()
    for row in values:
        row[3] = None
    sel = compute([BoardRun(f"r{i}", row) for i, row in enumerate(values)], higher_is_better=True, blocks=4)
    assert (sel.runs, sel.folds, sel.folds_dropped, sel.left_out) == (5, 16, 1, ())


def test_fewer_than_two_runs_is_no_statistic_with_a_reason() -> None:
    sel = compute(board_of([[1.0] * 10]), higher_is_better=True, blocks=4)
    assert (sel.pbo, sel.tied) == (None, ())
    assert "at least 2" in str(sel.reason)


def test_runs_that_differ_by_a_constant_in_every_fold_are_not_tied() -> None:
    """Worse by the same amount in every fold is certainly worse; arch cannot rank such runs
    (zero variance), so the better one stands for them."""
    base = np.random.default_rng(5).normal(size=20)
    sel = compute(board_of([base + 2, base + 1, base, base + 2]), higher_is_better=True, blocks=4)
    assert sel.tied == ("run000", "run003")
    assert sel.pbo == 0.0 or sel.pbo is not None


def test_the_confidence_set_is_computed_over_the_best_candidates_and_says_at_least() -> None:
    values = np.random.default_rng(6).normal(size=(MCS_CANDIDATES + 50, 12))
    sel = compute(board_of(values), higher_is_better=True, blocks=4)
    assert sel.candidates == MCS_CANDIDATES
    if len(sel.tied) == MCS_CANDIDATES:
        assert sel.tied_capped
        assert "at least" in plain_line(sel)


def test_the_same_board_gives_the_same_set_every_time() -> None:
    values = np.random.default_rng(7).normal(size=(25, 30)) + np.linspace(0, 1, 25)[:, None]
    first = compute(board_of(values), higher_is_better=True)
    assert all(compute(board_of(values), higher_is_better=True).tied == first.tied for _ in range(3))


@pytest.mark.parametrize(("blocks", "alpha"), [(7, 0.1), (0, 0.1), (22, 0.1), (8, 0.0), (8, 1.0)])
def test_bad_settings_are_refused_naming_the_setting(blocks: int, alpha: float) -> None:
    with pytest.raises(ValueError, match=r"^(blocks|alpha) must"):
        compute(board_of([[1.0] * 10] * 3), higher_is_better=True, blocks=blocks, alpha=alpha)


def test_the_tag_json_has_the_designed_keys_and_stays_small_on_a_big_board() -> None:
    values = np.random.default_rng(8).normal(size=(1000, 20))
    sel = compute(board_of(values), higher_is_better=True, blocks=8)
    tag = selection_json(sel, metric="avg_test_r2", fold_metric="test_r2", computed_at="2026-01-01T00:00:00Z")
    for key in (
        "metric",
        "fold_metric",
        "folds",
        "runs",
        "runs_left_out",
        "blocks",
        "splits",
        "pbo",
        "tied_with_leader",
        "alpha",
        "computed_at",
    ):
        assert key in tag
    assert (tag["folds"], tag["runs"], tag["splits"], tag["blocks"]) == (20, 1000, 70, 8)
    assert len(json.dumps(tag)) < 1000


@pytest.mark.parametrize(
    ("pbo", "tied", "line"),
    [
        (
            0.62,
            38,
            "PBO 0.62: the leader is more likely than not below the median out of sample; 37 runs cannot be told apart from it",
        ),
        (
            0.0,
            1,
            "PBO 0.00: picking the best in sample never landed below the median out of sample; no other run is tied with it",
        ),
        (
            0.25,
            2,
            "PBO 0.25: picking the best in sample landed below the median out of sample in 25% of the splits; 1 run cannot be told apart from it",
        ),
    ],
)
def test_the_plain_line_says_it_in_words(pbo: float, tied: int, line: str) -> None:
    sel = Selection(
        folds=21,
        runs=40,
        blocks=8,
        alpha=0.1,
        splits=70,
        pbo=pbo,
        tied=tuple(f"r{i}" for i in range(tied)),
        candidates=40,
    )
    assert plain_line(sel, leader="r0") == line


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ('{"test_r2": [0.1, null, -2], "test_rmse": [1, 2, 3]}', [0.1, None, -2.0]),
        ('{"test_rmse": [1, 2]}', None),
        ('{"test_r2": "0.1"}', None),
        ('{"test_r2": [true, 1]}', None),
        ("[1, 2]", None),
        ("not json", None),
        ("", None),
    ],
)
def test_per_fold_values_come_from_the_folds_tag_when_it_has_the_metric(tag: str, expected: object) -> None:
    assert folds_from_tag({"podium.folds": tag}, "test_r2") == expected


def test_the_gate_holds_above_max_pbo_or_without_a_pbo_and_says_why() -> None:
    base = Selection(folds=21, runs=24, blocks=8, alpha=0.1, splits=70, pbo=0.3)
    assert gate_reason(base, None) is None
    assert gate_reason(base, 0.5) is None
    assert gate_reason(base, 0.3) is None  # at max_pbo is not above it
    assert gate_reason(base, 0.2) == "PBO 0.30 is above max_pbo 0.2"
    none = Selection(folds=5, runs=24, blocks=8, alpha=0.1, reason="5 folds, fewer than the 8 blocks")
    assert gate_reason(none, 0.5) == "no PBO to check against max_pbo 0.5 (5 folds, fewer than the 8 blocks)"
    assert gate_reason(None, 0.5) is not None


def test_the_api_view_adds_lambdas_tied_and_left_out_runs_to_the_tag() -> None:
    values = np.random.default_rng(9).normal(size=(8, 16))
    board = [*board_of(values), BoardRun("odd", [1.0] * 3)]
    sel = compute(board, higher_is_better=True, blocks=4)
    tag = json.dumps(selection_json(sel, metric="avg_test_r2", fold_metric="test_r2", computed_at="t"))
    view = selection_view(sel, tag, None)
    assert len(view["lambdas"]) == view["splits"] == 6
    assert view["tied_run_ids"] == list(sel.tied)
    assert view["left_out"] == [{"run_id": "odd", "reason": "3 folds, not 16"}]
    assert (view["runs_left_out"], view["left_out_reasons"]) == (1, {"3 folds, not 16": 1})
