"""The state kept in MLflow and the per-experiment triage of a pass (pure)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from watcher.model import MAX_TOP_N, RunRecord
from watcher.planner import MAX_FAILED_WAITING, Experiment, Observed, state_only, triage
from watcher.ranking import Candidate
from watcher.settings import RuleConfig
from watcher.state import MAX_ALERTED, MAX_BOARD, UNRANKED, ExperimentState, board_size, fingerprint

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
    alerted = tuple(f"{i:032x}" for i in range(MAX_ALERTED + 50))
    full = state(
        board=board, alerted=alerted, counting=True, count_token="x" * 200, first_seen=1_800_000_000_000
    )
    assert len(full.to_tag()) < 20_000
    assert ExperimentState.from_tag(full.to_tag()).alerted == alerted[-MAX_ALERTED:]  # type: ignore[union-attr]
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
    rule = RuleConfig(
        name="r",
        experiments=["*"],
        metric="avg_test_r2",
        top_n=top_n,
        production_candidates=k,
        trigger="experiment_finished" if wait else "run_finished",
    )
    ended = tuple(
        RunRecord(f"n{i}", f"n{i}", "1", "FINISHED", t - 1, t, {"avg_test_r2": 0.5})
        for i, t in enumerate(news)
    )
    active = (RunRecord("live", "live", "1", "RUNNING", NOW_MS - 1000, None),) if running else ()
    t = triage(
        rule,
        fp,
        Experiment("1", "e"),
        s,
        Observed(ended=ended, running=active, advance_to=advance_to),
        NOW_MS,
    )
    return t.action, t.seen


NOW_MS = 1_000_000_000


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
        (lambda: run(state(counting=True), []), ("count", 100)),
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
        "paged-count-goes-on",
    ],
)
def test_triage(case: object, expected: tuple[str, int]) -> None:
    assert case() == expected  # type: ignore[operator]


def _holder(run_id: str, rank: int, value: float, status: str = "FINISHED", top: int = 10) -> RunRecord:
    tags = {"model_rank": str(rank), f"top_{top}": "true"}
    if rank <= 3:
        tags["production_candidate"] = "true"
    return RunRecord(run_id, run_id, "1", status, 1, 2, {"avg_test_r2": value}, tags=tags)


KEPT = state(board=(Candidate("a", "", 0.9, 5), Candidate("b", "", 0.8, 6)), complete=True)


@pytest.mark.parametrize(
    ("holders", "expected"),
    [
        ((_holder("a", 1, 0.9), _holder("b", 2, 0.8)), "idle"),
        ((_holder("b", 2, 0.8),), "rerank"),  # the leader was deleted
        ((_holder("a", 1, 0.9), _holder("b", 2, 0.8), _holder("c", 1, 0.1)), "rerank"),  # hand-set
        ((_holder("a", 1, 0.9), _holder("b", 2, 0.8), _holder("z", 1, 0.95)), "rerank"),  # restored
        ((_holder("a", 1, 0.7), _holder("b", 2, 0.8)), "rerank"),  # the leader's value changed
        ((_holder("a", 1, 0.9, "FAILED"), _holder("b", 2, 0.8)), "rerank"),
        ((_holder("a", 2, 0.9), _holder("b", 1, 0.8)), "rerank"),  # a replica's stale write
        ((_holder("a", 1, 0.9), _holder("b", 2, 0.8, top=5)), "rerank"),
    ],
    ids=["agree", "deleted", "hand-set", "restored", "value-changed", "failed", "swapped", "stale-top"],
)
def test_any_difference_between_holders_and_the_kept_board_re_ranks(
    holders: tuple[RunRecord, ...], expected: str
) -> None:
    rule = RuleConfig(name="r", experiments=["*"], metric="avg_test_r2")
    t = triage(rule, FP, Experiment("1", "e"), KEPT, Observed(holders=holders, running=()), NOW_MS)
    assert (t.action, t.reason if expected == "rerank" else "") == (
        expected,
        "holders" if expected == "rerank" else "",
    )


def test_failed_and_stalled_runs_are_announced_once_and_only_after_first_seen() -> None:
    rule = RuleConfig(
        name="r",
        experiments=["*"],
        metric="avg_test_r2",
        alerts=["failed", "stalled"],
        stalled_after_minutes=1,
    )
    seen_at = NOW_MS - 10 * 60_000
    s = state(first_seen=seen_at)
    old_fail = RunRecord("old", "old", "1", "FAILED", 1, 150)  # failed before the rule saw it
    new_fail = RunRecord("new", "new", "1", "FAILED", seen_at, seen_at + 5)
    stalled = RunRecord("st", "st", "1", "RUNNING", NOW_MS - 5 * 60_000, None)
    fresh = RunRecord("fresh", "fresh", "1", "RUNNING", NOW_MS - 1000, None)
    seen = Observed(ended=(old_fail, new_fail), running=(stalled, fresh))
    t = triage(rule, FP, Experiment("1", "e"), s, seen, NOW_MS)
    assert [(a.kind, a.run_id) for a in t.alerts] == [("failed", "new"), ("stalled", "st")]
    assert (t.old_alerts_skipped, t.stalled) == (1, ("st",))
    # Only the stalled run is remembered: the watermark now covers the failed ones.
    assert (t.action, t.alerted) == ("advance", ("st",))
    again = triage(
        rule,
        FP,
        Experiment("1", "e"),
        state(first_seen=seen_at, alerted=t.alerted, seen=t.seen),
        seen,
        NOW_MS,
    )
    assert (again.alerts, again.action) == ((), "idle")
    ended = triage(
        rule,
        FP,
        Experiment("1", "e"),
        state(first_seen=seen_at, alerted=("st",), seen=t.seen),
        Observed(running=()),
        NOW_MS,
    )
    assert (ended.alerts, ended.alerted) == ((), ())  # it ended: it cannot stall again


def test_alerts_beyond_the_outbox_room_wait_for_a_later_pass_oldest_first() -> None:
    rule = RuleConfig(
        name="r", experiments=["*"], metric="avg_test_r2", alerts=["stalled"], stalled_after_minutes=1
    )
    seen_at = NOW_MS - 60 * 60_000
    runs = tuple(
        RunRecord(f"s{i}", f"s{i}", "1", "RUNNING", NOW_MS - (30 - i) * 60_000, None) for i in range(5)
    )
    kept = state(first_seen=seen_at)
    t = triage(rule, FP, Experiment("1", "e"), kept, Observed(running=runs, alert_room=2), NOW_MS)
    assert ([a.run_id for a in t.alerts], t.alerted, t.alerts_held) == (["s0", "s1"], ("s0", "s1"), 3)
    t2 = triage(
        rule,
        FP,
        Experiment("1", "e"),
        replace(kept, alerted=t.alerted),
        Observed(running=runs, alert_room=19),
        NOW_MS,
    )
    assert ([a.run_id for a in t2.alerts], t2.alerts_held) == (["s2", "s3", "s4"], 0)


def test_an_experiment_first_seen_while_waiting_keeps_first_seen_and_still_ranks_first() -> None:
    rule = RuleConfig(name="r", experiments=["*"], metric="avg_test_r2", trigger="experiment_finished")
    live = RunRecord("live", "live", "1", "RUNNING", NOW_MS - 1000, None)
    t = triage(rule, FP, Experiment("1", "e"), None, Observed(running=(live,)), NOW_MS)
    assert t.action == "pending"
    stub = state_only(Experiment("1", "e"), rule, None, t).state
    assert stub is not None
    assert (stub.fingerprint, stub.first_seen, stub.seen, stub.board) == (UNRANKED, NOW_MS, NOW_MS, ())
    again = ExperimentState.from_tag(stub.to_tag())
    t2 = triage(rule, FP, Experiment("1", "e"), again, Observed(running=()), NOW_MS + 5)
    assert (t2.action, t2.reason, t2.first_seen) == ("full", "first", NOW_MS)


def test_a_stalled_run_no_longer_holds_an_experiment_finished_ranking_back() -> None:
    rule = RuleConfig(name="r", experiments=["*"], metric="avg_test_r2", stalled_after_minutes=1)
    stalled = RunRecord("st", "st", "1", "RUNNING", NOW_MS - 5 * 60_000, None)
    t = triage(rule, FP, Experiment("1", "e"), state(pending=True), Observed(running=(stalled,)), NOW_MS)
    assert (t.action, t.stalled) == ("rerank", ("st",))
    live = RunRecord("st", "st", "1", "RUNNING", NOW_MS - 5 * 60_000, None, last_activity=NOW_MS - 1000)
    assert (
        triage(rule, FP, Experiment("1", "e"), state(pending=True), Observed(running=(live,)), NOW_MS).action
        == "pending"
    )


def test_a_first_ranking_joins_the_common_watermark_unless_a_run_needs_the_next_pass() -> None:
    rule = RuleConfig(name="r", experiments=["*"], metric="avg_test_r2")
    board = (Candidate("a", "", 0.9, 5), Candidate("b", "", 0.8, 6))
    counting = state(board=board, complete=False, counting=True, count_upto=100, first_seen=150)

    def run(run_id: str, status: str, end: int, value: float | None) -> RunRecord:
        return RunRecord(
            run_id, run_id, "1", status, end - 1, end, {} if value is None else {"avg_test_r2": value}
        )

    from watcher.planner import align_watermark

    below = align_watermark(counting, [run("low", "FINISHED", 120, 0.1)], 300, rule)
    assert (below.seen, below.count_upto) == (300, 300)  # below the cutoff: the count covers it
    assert align_watermark(counting, [run("new", "FINISHED", 120, 0.85)], 300, rule).seen == 100
    assert align_watermark(counting, [run("old", "FAILED", 120, None)], 300, rule).seen == 300
    assert align_watermark(counting, [run("late", "FAILED", 160, None)], 300, rule).seen == 100
    everything = state(board=board, complete=True)
    assert align_watermark(everything, [run("low", "FINISHED", 120, 0.1)], 300, rule).seen == 100


def test_failed_runs_beyond_the_outbox_room_wait_behind_a_cursor_and_are_announced_once() -> None:
    """Five runs fail at once (two share an end time) with room for two: the rest wait behind
    the cursor, oldest first by (end_time, run_id); the next pass finds them again although
    the watermark moved past them, counts no FINISHED run twice, and clears the cursor."""
    rule = RuleConfig(name="r", experiments=["*"], metric="avg_test_r2", alerts=["failed"])
    kept = state(first_seen=150, seen=200)
    ends = {"f0": 300, "f1": 301, "f3": 302, "f2": 302, "f4": 303}
    failed = tuple(RunRecord(r, r, "1", "FAILED", 250, end) for r, end in ends.items())
    done = RunRecord("ok", "ok", "1", "FINISHED", 250, 304, {"avg_test_r2": 0.5})
    t = triage(rule, FP, Experiment("1", "e"), kept, Observed(ended=(*failed, done), alert_room=2), NOW_MS)
    assert [a.run_id for a in t.alerts] == ["f0", "f1"]
    assert (t.alert_cursor, t.alerts_held, t.alerts_lost, t.seen, t.new_ranked) == ((302, "f2"), 3, 0, 304, 1)
    after = replace(kept, seen=t.seen, alert_cursor=t.alert_cursor)
    assert after.search_after == 301  # the batch search reaches back to the cursor's end time
    assert ExperimentState.from_tag(after.to_tag()) == after

    full = triage(
        rule, FP, Experiment("1", "e"), after, Observed(ended=(*failed, done), alert_room=0), NOW_MS
    )
    assert (full.alerts, full.alert_cursor, full.action) == ((), (302, "f2"), "idle")
    rest = triage(
        rule, FP, Experiment("1", "e"), after, Observed(ended=(*failed, done), alert_room=19), NOW_MS
    )
    assert [a.run_id for a in rest.alerts] == ["f2", "f3", "f4"]
    assert (rest.alert_cursor, rest.new_ranked, rest.seen, rest.action) == (None, 0, 304, "advance")
    cleared = replace(after, alert_cursor=rest.alert_cursor)
    assert cleared.search_after == 304
    again = triage(rule, FP, Experiment("1", "e"), cleared, Observed(ended=(done,), alert_room=19), NOW_MS)
    assert (again.alerts, again.action) == ((), "idle")


def test_a_state_tag_without_cursor_or_digest_reads_as_none_and_a_huge_backlog_is_let_go() -> None:
    old = json.loads(state(first_seen=1).to_tag())
    del old["alert_cursor"], old["announced"]  # a tag written before both existed
    back = ExperimentState.from_tag(json.dumps(old))
    assert back is not None
    assert (back.alert_cursor, back.search_after, back.announced) == (None, 100, None)
    assert ExperimentState.from_tag(replace(back, announced="ab12").to_tag()).announced == "ab12"  # type: ignore[union-attr]

    rule = RuleConfig(name="r", experiments=["*"], metric="avg_test_r2", alerts=["failed"])
    flood = tuple(
        RunRecord(f"f{i:05d}", "", "1", "KILLED", 150, 200 + i) for i in range(MAX_FAILED_WAITING + 20)
    )
    t = triage(
        rule, FP, Experiment("1", "e"), state(first_seen=1), Observed(ended=flood, alert_room=19), NOW_MS
    )
    assert (len(t.alerts), t.alerts_lost, t.alerts_held, t.alert_cursor) == (
        19,
        MAX_FAILED_WAITING + 1,
        0,
        None,
    )
