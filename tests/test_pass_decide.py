"""The batch decision without a server: what a pass read becomes plans, and what it asks to
read first (the board, the orphan-tag holders, the paged count, the first rankings' search).

Each case gives the kept state and what the batch searches returned; the reads the decision
asks for are answered from the same in-memory runs, as complete searches would answer them.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from watcher.model import MODEL_RANK, LeaderboardChanged, RunRecord, TagChange
from watcher.notify.handler import delivery_id
from watcher.notify.payloads import leaderboard_payload
from watcher.planner import (
    Agenda,
    BatchDecision,
    BoardFound,
    BoardSearch,
    CountPage,
    Experiment,
    ExperimentRead,
    Observed,
    ToRead,
    board_from_search,
    decide_batch,
    drops_filter,
    is_tracked,
    with_rule_filter,
)
from watcher.ranking import podium_tags
from watcher.registry import promotion_id
from watcher.settings import RuleConfig
from watcher.state import UNRANKED, ExperimentState, board_size, fingerprint

RULE = RuleConfig(
    name="r", experiments=["*"], metric="m", top_n=2, production_candidates=1, trigger="run_finished"
)
FP = fingerprint("m", False, None)
NOW = 1_000_000


def run(
    name: str, value: float, end: int, status: str = "FINISHED", tags: dict[str, str] | None = None
) -> RunRecord:
    return RunRecord(name, name, "1", status, 0, end, {"m": value}, tags=tags or {})


RUNS = (run("a", 0.9, 100), run("b", 0.5, 200), run("c", 0.7, 300))


def answer(reads: list[ExperimentRead], need: ToRead, runs: tuple[RunRecord, ...]) -> list[ExperimentRead]:
    """Fill in what the decision asked for from ``runs``, as complete searches would."""
    finished = tuple(r for r in runs if r.status == "FINISHED")
    out = []
    for read in reads:
        if read.experiment_id in need.orphans:
            read = replace(read, orphans=tuple(r for r in runs if podium_tags(r.tags)))
        for board in need.boards:
            found = BoardSearch(finished, None, True)
            proved = board_from_search(found, RULE, board.keep)
            assert proved is not None
            read = replace(read, board=BoardFound(found, tuple(proved[0]), proved[1]))
        for count in need.counts:
            page = tuple(r for r in finished if (r.end_time or 0) <= count.upto)
            read = replace(read, count_pages=(CountPage(page, None),))
        if read.experiment_id in need.firsts:
            read = replace(read, since_ranking=tuple(r for r in runs if (r.end_time or 0) > need.since))
        out.append(read)
    return out


def settle(
    read: ExperimentRead, runs: tuple[RunRecord, ...], **flags: bool
) -> tuple[BatchDecision, list[set[str]]]:
    """Decide until the decision is the plans; also what each round asked for."""
    reads, asked = [read], []
    agenda = Agenda(
        now_ms=NOW,
        sweep=frozenset({read.experiment_id}) if flags.get("sweep") else frozenset(),
        force_rank=flags.get("force_rank", False),
    )
    decision = decide_batch(RULE, reads, agenda)
    while decision.to_read is not None:
        need = decision.to_read
        asked.append({k for k in ("orphans", "boards", "counts", "firsts") if getattr(need, k)})
        reads = answer(reads, need, runs)
        decision = decide_batch(RULE, reads, agenda)
    return decision, asked


def ranked() -> tuple[ExperimentState, tuple[RunRecord, ...]]:
    """The state after a first ranking of RUNS, and the runs with the tags it wrote."""
    decision, _ = settle(ExperimentRead(Experiment("1", "e"), None, Observed(ended=RUNS, running=())), RUNS)
    plan = decision.plans[0]
    assert plan.state is not None
    tags: dict[str, dict[str, str]] = {r.run_id: {} for r in RUNS}
    for change in plan.changes:
        if change.new is not None:
            tags[change.run_id][change.key] = change.new
    return plan.state, tuple(replace(r, tags=tags[r.run_id]) for r in RUNS)


def holders(runs: tuple[RunRecord, ...]) -> tuple[RunRecord, ...]:
    return tuple(r for r in runs if MODEL_RANK in r.tags)


def test_a_first_ranking_asks_for_the_board_and_orphans_then_the_common_watermark() -> None:
    read = ExperimentRead(Experiment("1", "e"), None, Observed(ended=RUNS, running=()))
    decision, asked = settle(read, RUNS)
    plan = decision.plans[0]
    assert asked == [{"orphans", "boards"}, {"firsts"}]
    assert (plan.action, plan.reason) == ("full", "first")
    assert plan.board is not None
    assert [e.run_id for e in plan.board.entries] == ["a", "c"]
    assert plan.state is not None
    assert (plan.state.seen, plan.state.fingerprint) == (300, FP)
    assert decision.counts["1"].ranked == 3


@pytest.mark.parametrize(
    ("case", "flags", "asked", "action", "reason"),
    [
        ("idle", {}, [], "idle", "watermark"),
        ("news", {}, [{"orphans", "boards"}], "rerank", "news"),
        ("idle", {"sweep": True}, [{"boards"}], "rerank", "sweep"),
        ("news", {"sweep": True}, [{"boards"}], "rerank", "news"),
        ("idle", {"force_rank": True}, [{"orphans", "boards"}], "rerank", "requested"),
        ("hand_set", {}, [{"orphans", "boards"}], "rerank", "holders"),
        ("counting", {}, [{"counts"}], "count", "counting"),
    ],
)
def test_a_ranked_experiments_decision(
    case: str, flags: dict[str, bool], asked: list[set[str]], action: str, reason: str
) -> None:
    """The pass's overrides (a sweep re-ranks an idle experiment from its kept cutoff and
    reads no orphan tags twice; the API ranks whatever the triage says) and the reads each
    decision asks for."""
    state, runs = ranked()
    ended: tuple[RunRecord, ...] = ()
    if case == "news":
        runs = (*runs, run("d", 0.95, 400))
        ended = runs[-1:]
    if case == "hand_set":
        runs = (*runs[:2], replace(runs[2], tags={MODEL_RANK: "1"}))
    if case == "counting":
        state = replace(state, counting=True, count_token="t", count_upto=300, ranked_runs=0, unranked_runs=0)
    observed = Observed(
        ended=ended, holders=holders(runs), running=(), orphans=() if flags.get("sweep") else None
    )
    decision, seen_asks = settle(ExperimentRead(Experiment("1", "e"), state, observed), runs, **flags)
    plan = decision.plans[0]
    assert seen_asks == asked
    assert (plan.action, plan.reason) == (action, reason)
    if case == "idle" and not flags:
        assert plan.state is None
        assert plan.changes == ()
    if case == "news":
        assert plan.board is not None
        assert plan.board.leader is not None
        assert plan.board.leader.run_id == "d"
        assert plan.state is not None
        assert plan.state.seen == 400
    if case == "counting":
        assert plan.state is not None
        assert (plan.state.counting, plan.state.ranked_runs) == (False, 3)


def test_a_first_seen_experiment_waiting_for_running_runs_is_remembered_not_ranked() -> None:
    rule = RULE.model_copy(update={"trigger": "experiment_finished"})
    live = run("live", 0.0, 0, status="RUNNING")
    read = ExperimentRead(Experiment("1", "e"), None, Observed(ended=RUNS, running=(live,)))
    decision = decide_batch(rule, [read], Agenda(now_ms=NOW))
    plan = decision.plans[0]
    assert decision.to_read is None
    assert plan.action == "pending"
    assert plan.state is not None
    assert plan.state.fingerprint == UNRANKED


def test_a_rerank_starts_from_the_kept_cutoff_of_an_incomplete_board() -> None:
    state, runs = ranked()
    state = replace(state, complete=False)
    news = run("d", 0.95, 400)
    read = ExperimentRead(
        Experiment("1", "e"), state, Observed(ended=(news,), holders=holders(runs), running=())
    )
    need = decide_batch(RULE, [read], Agenda(now_ms=NOW)).to_read
    assert need is not None
    assert [(b.cutoff, b.keep) for b in need.boards] == [(state.board[-1].value, board_size(RULE.top_n))]


def test_the_rule_filter_splits_finished_news_and_moves_the_watermark_past_what_it_leaves_out() -> None:
    failed = run("f", 0.0, 150, status="FAILED")
    kept, left_out = run("k", 0.5, 200), run("x", 0.1, 250)
    rows, filtered_out = with_rule_filter([failed, kept, left_out], [kept])
    assert (rows, filtered_out) == ([failed, kept], {"1": 250})
    with_filter = RULE.model_copy(update={"filter": "metrics.n > 1"})
    assert [
        drops_filter(r) for r in (RULE, with_filter, with_filter.model_copy(update={"alerts": ["failed"]}))
    ] == [
        False,
        False,
        True,
    ]


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (None, False),
        (ExperimentState("r", FP, 2, 1), True),
        (ExperimentState("r", UNRANKED, 2, 1), True),
        (ExperimentState("r", "other", 2, 1), False),
        (ExperimentState("r", "other", 2, 1, alert_cursor=(5, "f")), True),
    ],
)
def test_which_experiments_the_batch_search_covers(state: ExperimentState | None, expected: bool) -> None:
    assert is_tracked(state, FP) is expected


def asks(
    rule: RuleConfig,
    states: dict[str, ExperimentState | None],
    ended: dict[str, tuple[RunRecord, ...]] | None = None,
    running: tuple[RunRecord, ...] | None = None,
    now: int = NOW,
    from_listing: bool = False,
) -> ToRead:
    """What the first round of a batch's decision asks to read (nothing: an empty request)."""
    reads = [
        ExperimentRead(
            Experiment(i, i),
            state,
            Observed(ended=(ended or {}).get(i, ()), running=running, holders=None),
            from_listing=from_listing,
        )
        for i, state in states.items()
    ]
    decision = decide_batch(rule, reads, Agenda(now_ms=now))
    return decision.to_read or ToRead()


@pytest.mark.parametrize(
    ("trigger", "alerts", "stall_check", "state", "ended", "expected"),
    [
        ("run_finished", [], False, None, (), False),
        ("run_finished", ["stalled"], True, None, (), True),
        ("run_finished", ["stalled"], False, None, (), False),
        ("experiment_finished", [], False, None, (), True),
        ("experiment_finished", [], False, ExperimentState("r", FP, 2, 1, seen=500), (), False),
        ("experiment_finished", [], False, ExperimentState("r", FP, 2, 1, seen=100), RUNS, True),
        ("experiment_finished", [], False, ExperimentState("r", FP, 2, 1, pending=True), (), True),
    ],
)
def test_when_the_batch_searches_running_runs(
    trigger: str,
    alerts: list[str],
    stall_check: bool,
    state: ExperimentState | None,
    ended: tuple[RunRecord, ...],
    expected: bool,
) -> None:
    """The batch search reads the RUNNING runs when the rule looks for stalled ones this pass
    (the agenda's stall check); else the decision asks for them when they decide whether an
    ``experiment_finished`` rule waits."""
    rule = RULE.model_copy(update={"trigger": trigger, "alerts": alerts})
    gathered = stall_check and "stalled" in alerts
    need = asks(rule, {"1": state}, {"1": ended}, running=() if gathered else None)
    assert (gathered or need.running == ("1",)) is expected


def test_an_experiment_finished_rule_searches_the_running_runs_of_the_experiments_it_may_rank() -> None:
    rule = RULE.model_copy(update={"trigger": "experiment_finished"})
    quiet = ExperimentState("r", FP, 2, 1, seen=500)
    states = {"quiet": quiet, "news": ExperimentState("r", FP, 2, 1, seen=100), "new": None, "other": quiet}
    assert asks(rule, states, {"news": RUNS}).running == ("news", "new")
    stalled = rule.model_copy(update={"alerts": ["stalled"]})
    assert asks(stalled, states, {"news": RUNS}, running=()).running == ()


def test_a_stalled_run_calls_for_the_state_afresh_only_when_triage_would_announce_it() -> None:
    rule = RULE.model_copy(update={"alerts": ["stalled"], "stalled_after_minutes": 1})
    silent = RunRecord("s", "s", "1", "RUNNING", 1_000_000, None)  # stalled from 1_060_000 on
    now = 1_061_000
    state = ExperimentState("r", FP, 2, 1, first_seen=1_000_000)

    def afresh(rule: RuleConfig, state: ExperimentState, now: int) -> bool:
        return asks(rule, {"1": state}, running=(silent,), now=now, from_listing=True).afresh == ("1",)

    assert afresh(rule, state, now)
    assert not afresh(rule, replace(state, alerted=("s",)), now)
    assert not afresh(rule, replace(state, first_seen=1_061_000), now)
    assert not afresh(rule, state, 1_059_000)
    assert not afresh(rule.model_copy(update={"alerts": ["failed"]}), state, now)


def test_news_in_the_kept_listing_calls_for_the_state_afresh() -> None:
    """A run ended after the kept watermark (finished or not): the plan writes the state, so
    the decision asks for it afresh when the tags came from the kept listing, and only then."""
    state = ExperimentState("r", FP, 2, 1, seen=100)
    failed = RunRecord("f", "f", "1", "FAILED", 50, 150)
    assert asks(RULE, {"1": state}, {"1": (failed,)}, from_listing=True).afresh == ("1",)
    assert asks(RULE, {"1": state}, {"1": (failed,)}).afresh == ()
    assert asks(RULE, {"1": replace(state, seen=150)}, {"1": (failed,)}, from_listing=True).afresh == ()


def tagged(runs: tuple[RunRecord, ...], changes: tuple[TagChange, ...]) -> tuple[RunRecord, ...]:
    """``runs`` with a plan's tag changes applied (a change to a run not among them is lost,
    as a write to a deleted run is)."""
    tags = {r.run_id: dict(r.tags) for r in runs}
    for change in changes:
        if change.run_id in tags:
            if change.new is None:
                tags[change.run_id].pop(change.key, None)
            else:
                tags[change.run_id][change.key] = change.new
    return tuple(replace(r, tags=tags[r.run_id]) for r in runs)


def test_a_change_is_numbered_from_the_kept_state_so_its_ids_repeat_for_a_replica_not_later() -> None:
    """The board goes A→B (a better run d finishes), back to A (d deleted), then A→B again (d
    restored): the same payload twice, yet the second A→B gets new delivery and promotion ids,
    as every change is numbered after those the kept state counts. The same change decided
    again from the same state (a replica, a restart) gets the same ids whatever the clock."""
    state, runs = ranked()
    assert state.announced_changes == 1
    d = run("d", 0.95, 400)

    def decide(
        state: ExperimentState, runs: tuple[RunRecord, ...], ended: tuple[RunRecord, ...] = ()
    ) -> tuple[LeaderboardChanged, ExperimentState, tuple[RunRecord, ...]]:
        """One pass: the change it announces, the state it writes, the runs as it leaves them."""
        observed = Observed(ended=ended, holders=holders(runs), running=())
        plan = settle(ExperimentRead(Experiment("1", "e"), state, observed), runs)[0].plans[0]
        assert plan.event is not None
        assert plan.state is not None
        return plan.event, plan.state, tagged(runs, plan.changes)

    def ids(event: LeaderboardChanged, now: float) -> tuple[str, str]:
        payload = leaderboard_payload(event, ui_base_url=None, now=now)
        leader = event.board.leader
        assert leader is not None
        return (
            delivery_id("1", "team", payload, event.sequence),
            promotion_id("1", "m@champion", leader.run_id, event.sequence),
        )

    def document(event: LeaderboardChanged) -> dict[str, object]:
        payload = leaderboard_payload(event, ui_base_url=None, now=0)
        return {k: v for k, v in payload.items() if k != "timestamp"}

    first_ab, with_b, runs_b = decide(state, (*runs, d), ended=(d,))
    replica_ab, _, _ = decide(state, (*runs, d), ended=(d,))
    back_to_a, with_a, runs_a = decide(with_b, runs_b[:3])  # d deleted, its tags still on it
    again_ab, last, _ = decide(with_a, (*runs_a, runs_b[3]))  # d restored
    events = [first_ab, back_to_a, again_ab]
    assert [[e.run_id for e in ev.board.entries] for ev in events] == [["d", "a"], ["a", "c"], ["d", "a"]]
    assert [ev.sequence for ev in events] == [2, 3, 4]
    assert last.announced_changes == 4

    assert document(first_ab) == document(again_ab)  # only the number tells them apart
    assert ids(first_ab, 1.0) == ids(replica_ab, 2.0)
    assert set(ids(first_ab, 1.0)).isdisjoint(ids(again_ab, 1.0))
    payload = leaderboard_payload(first_ab, ui_base_url=None, now=1.0)
    assert delivery_id("1", "team", payload, 2) != delivery_id("1", "chat", payload, 2)  # one per webhook
