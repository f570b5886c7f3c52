"""Pure detection: the state kept in MLflow and the per-experiment decision of a pass."""

from __future__ import annotations

import pytest

from watcher.detect import MAX_BOARD, ExperimentState, board_size, decide, fingerprint
from watcher.model import MAX_TOP_N
from watcher.ranking import Candidate

FP = fingerprint("avg_test_r2", False, None)


def state(**changes: object) -> ExperimentState:
    base = ExperimentState(rule="r", fingerprint=FP, top_n=10, production_candidates=3, seen=100)
    return ExperimentState(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def test_state_round_trips_through_its_tag_without_run_names() -> None:
    s = state(
        board=(Candidate("a", "trial_1", 0.5, 10), Candidate("b", "trial_2", -1e-300, None)),
        complete=False,
        pending=True,
        ranked_runs=7,
        unranked_runs=2,
    )
    back = ExperimentState.from_tag(s.to_tag())
    assert back == state(
        board=(Candidate("a", "", 0.5, 10), Candidate("b", "", -1e-300, None)),
        complete=False,
        pending=True,
        ranked_runs=7,
        unranked_runs=2,
    )


@pytest.mark.parametrize("text", [None, "", "not json", '{"v": 99}', '{"v": 1, "rule": "r"}', "[]"])
def test_missing_or_unreadable_state_means_rank_from_scratch(text: str | None) -> None:
    assert ExperimentState.from_tag(text) is None


def test_a_full_board_fits_an_experiment_tag() -> None:
    board = tuple(
        Candidate("f" * 32, "x" * 250, -1.2345678901234567e-300, 1_800_000_000_000) for _ in range(MAX_BOARD)
    )
    assert len(state(board=board).to_tag()) < 20_000
    assert board_size(10) == 20
    assert board_size(1) == 11
    assert board_size(500) == MAX_BOARD
    assert board_size(MAX_TOP_N) >= MAX_TOP_N  # the largest allowed top N is always kept whole


def test_fingerprint_changes_with_metric_direction_and_filter_only() -> None:
    assert fingerprint("m", False, None) == fingerprint("m", False, "")
    assert (
        len(
            {
                fingerprint("m", False, None),
                fingerprint("n", False, None),
                fingerprint("m", True, None),
                fingerprint("m", False, "metrics.x > 1"),
            }
        )
        == 4
    )


def run(
    s: ExperimentState | None,
    news: list[int],
    *,
    running: bool = False,
    wait: bool = True,
    top_n: int = 10,
    k: int = 3,
    advance_to: int | None = None,
    fp: str = FP,
) -> tuple[str, int]:
    d = decide(
        s,
        fp,
        news,
        len(news),
        0,
        running=running,
        wait_for_running=wait,
        top_n=top_n,
        production_candidates=k,
        advance_to=advance_to,
    )
    return d.action, d.seen


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (lambda: run(None, []), ("full", 0)),
        (lambda: run(state(), [], fp="other"), ("full", 100)),
        (lambda: run(None, [], running=True), ("pending", 0)),
        (lambda: run(None, [], running=True, wait=False), ("full", 0)),
        (lambda: run(state(), [150, 120]), ("rerank", 150)),
        (lambda: run(state(), [150], running=True), ("pending", 150)),
        (lambda: run(state(), [150], running=True, wait=False), ("rerank", 150)),
        (lambda: run(state(pending=True), []), ("rerank", 100)),
        (lambda: run(state(pending=True), [], running=True), ("pending", 100)),
        (lambda: run(state(), [], running=True), ("idle", 100)),
        (lambda: run(state(), [], top_n=5), ("rerank", 100)),
        (lambda: run(state(), [], k=1), ("rerank", 100)),
        (lambda: run(state(), [], advance_to=300), ("advance", 300)),
        (lambda: run(state(), [], advance_to=50), ("idle", 100)),
        (lambda: run(state(), []), ("idle", 100)),
    ],
    ids=[
        "first-pass",
        "rule-changed",
        "first-pass-waits-for-running",
        "run-finished-does-not-wait",
        "new-runs",
        "new-runs-while-running",
        "run-finished-ignores-running",
        "pending-settled",
        "pending-still-running",
        "running-but-nothing-new",
        "top-n-changed",
        "candidates-changed",
        "watermark-catches-up",
        "watermark-already-ahead",
        "idle",
    ],
)
def test_decide(case: object, expected: tuple[str, int]) -> None:
    assert case() == expected  # type: ignore[operator]
