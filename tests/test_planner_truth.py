"""The planner against arbitrary "what MLflow holds" states (pure, property-tested).

The passes here include the orphan-tag sweep (``top_{N}``/``production_candidate`` holders),
which the daemon adds to a pass every ``SWEEP_SECONDS`` and to every re-rank.

An experiment is ranked once; then the world moves: foreign and duplicate tags appear, holders
are deleted, holders' values change, new runs finish. The searches a pass makes are answered
from that world in memory (the planner never sees MLflow), and the property is: one plan
reaches the true board, every intermediate write keeps ranks unique, and a second plan over
the result changes nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.model import MODEL_RANK, PRODUCTION_CANDIDATE, RunRecord, TagChange
from watcher.planner import (
    BoardSearch,
    Experiment,
    Observed,
    board_from_search,
    counts_after_ranking,
    kept_cutoff,
    ordered_search_proof,
    plan_board,
    triage,
)
from watcher.ranking import FINISHED, desired_tags, is_rankable, leaderboard_entries, order, split_ranked
from watcher.settings import RuleConfig
from watcher.state import ExperimentState, board_size, fingerprint

METRIC = "m"
FP = fingerprint(METRIC, False, None)
NOW = 10_000_000


@dataclass
class World:
    runs: dict[str, RunRecord]
    tags: dict[str, dict[str, str]]

    def active(self) -> list[RunRecord]:
        return [
            RunRecord(
                r.run_id,
                r.run_name,
                "1",
                r.status,
                r.start_time,
                r.end_time,
                r.metrics,
                tags=self.tags.get(r.run_id, {}),
            )
            for r in self.runs.values()
        ]

    def holders(self) -> tuple[RunRecord, ...]:
        return tuple(r for r in self.active() if MODEL_RANK in r.tags)

    def tagged(self) -> tuple[RunRecord, ...]:
        return tuple(r for r in self.active() if any(k != MODEL_RANK for k in r.tags))

    def search(self, cutoff: float | None) -> BoardSearch:
        finished = [r for r in self.active() if r.status == FINISHED]
        if cutoff is None:
            return BoardSearch(tuple(finished), None, True)
        above = [r for r in finished if is_rankable(r.metrics.get(METRIC)) and r.metrics[METRIC] >= cutoff]
        return BoardSearch(tuple(above), cutoff, False)

    def duplicates(self) -> int:
        ranks = Counter(t[MODEL_RANK] for r, t in self.tags.items() if MODEL_RANK in t and r in self.runs)
        return sum(n - 1 for n in ranks.values())

    def apply(self, changes: list[TagChange]) -> None:
        """Apply in order; no write may add a run to a rank another run holds."""
        worst = self.duplicates()
        for change in changes:
            if change.run_id not in self.runs:
                continue  # a deleted run: the writer logs it and goes on
            tags = self.tags.setdefault(change.run_id, {})
            if change.new is None:
                tags.pop(change.key, None)
            else:
                tags[change.key] = change.new
            now = self.duplicates()
            assert now <= worst, f"two runs hold one rank after {change}"
            worst = now


def truth(world: World, rule: RuleConfig) -> dict[str, dict[str, str]]:
    ranked, _ = split_ranked(world.active(), METRIC)
    entries = leaderboard_entries(order(ranked, False), rule.top_n)
    return desired_tags(entries, rule.top_n, rule.production_candidates)


def one_pass(world: World, rule: RuleConfig, state: ExperimentState) -> tuple[ExperimentState, int]:
    """What a pass does, with the searches answered by the world."""
    news = tuple(r for r in world.active() if (r.end_time or 0) > state.seen)
    seen = Observed(ended=news, holders=world.holders(), running=(), orphans=world.tagged())
    t = triage(rule, FP, Experiment("1", "e"), state, seen, NOW)
    if t.action not in ("rerank", "full"):
        return state, 0
    keep = board_size(rule.top_n)
    found = world.search(kept_cutoff(state, rule, FP))
    board = board_from_search(found, rule, keep)
    if board is None:
        found = world.search(None)
        board = board_from_search(found, rule, keep)
    assert board is not None
    counts = counts_after_ranking(state, FP, t, found, METRIC)
    read = [*world.holders(), *world.tagged(), *found.runs]
    plan = plan_board(Experiment("1", "e"), rule, FP, state, t, board[0], board[1], read, counts)
    world.apply(list(plan.changes))
    return plan.state or state, len(plan.changes)


values = st.sampled_from([0.1, 0.2, 0.3, 0.5, 0.5, 0.7, 0.9, float("nan")])


def junk_tags(top_n: int) -> st.SearchStrategy[dict[str, str]]:
    """Foreign tags as hand-set or left by another writer, on keys the watcher searches."""
    return st.fixed_dictionaries(
        {},
        optional={
            MODEL_RANK: st.integers(1, 8).map(str),
            f"top_{top_n}": st.just("true"),
            PRODUCTION_CANDIDATE: st.just("true"),
        },
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(values, min_size=0, max_size=16),
    st.integers(1, 5),
    st.data(),
)
def test_one_pass_reaches_the_true_board_and_a_second_changes_nothing(
    initial: list[float], top_n: int, data: st.DataObject
) -> None:
    rule = RuleConfig(
        name="r", experiments=["*"], metric=METRIC, top_n=top_n, production_candidates=min(2, top_n)
    )
    runs = {}
    for i, value in enumerate(initial):
        status = data.draw(st.sampled_from([FINISHED, FINISHED, FINISHED, "FAILED"]))
        runs[f"r{i:02d}"] = RunRecord(f"r{i:02d}", "", "1", status, i, 100 + i, {METRIC: value})
    world = World(runs, {})
    start = ExperimentState(
        rule="r", fingerprint=FP, top_n=top_n, production_candidates=rule.production_candidates
    )
    # The first ranking, as a pass would do it from an empty state.
    found = world.search(None)
    board = board_from_search(found, rule, board_size(top_n))
    assert board is not None
    ranked, unranked = split_ranked(found.runs, METRIC)
    state = ExperimentState(
        rule="r",
        fingerprint=FP,
        top_n=top_n,
        production_candidates=rule.production_candidates,
        seen=200,
        board=tuple(board[0]),
        complete=board[1],
        ranked_runs=len(ranked),
        unranked_runs=unranked,
    )
    world.apply([TagChange(r, k, None, v) for r, tags in truth(world, rule).items() for k, v in tags.items()])
    assert start.seen == 0

    # The world moves on.
    holder_ids = [r for r in world.tags if MODEL_RANK in world.tags[r]]
    for run_id in data.draw(st.lists(st.sampled_from(holder_ids), unique=True)) if holder_ids else []:
        action = data.draw(st.sampled_from(["delete", "value", "status"]))
        run = world.runs[run_id]
        if action == "delete":
            del world.runs[run_id]
        elif action == "value":
            world.runs[run_id] = RunRecord(
                run.run_id, "", "1", run.status, run.start_time, run.end_time, {METRIC: data.draw(values)}
            )
        else:
            world.runs[run_id] = RunRecord(
                run.run_id, "", "1", "FAILED", run.start_time, run.end_time, run.metrics
            )
    if world.runs:
        for run_id in data.draw(st.lists(st.sampled_from(sorted(world.runs)), unique=True, max_size=4)):
            world.tags[run_id] = {
                **world.tags.get(run_id, {}),
                **data.draw(junk_tags(top_n)),
            }  # foreign, duplicate
    for j, value in enumerate(data.draw(st.lists(values, max_size=3))):
        run_id = f"n{j}"
        world.runs[run_id] = RunRecord(run_id, "", "1", FINISHED, 300 + j, 300 + j, {METRIC: value})
    # A restored holder: an old run comes back carrying rank 1.
    if data.draw(st.booleans()):
        world.runs["old"] = RunRecord("old", "", "1", FINISHED, 50, 50, {METRIC: data.draw(values)})
        world.tags["old"] = {MODEL_RANK: "1", f"top_{top_n}": "true"}

    state, _ = one_pass(world, rule, state)
    current = {r: t for r, t in world.tags.items() if t and r in world.runs}
    assert current == truth(world, rule)
    _, changes = one_pass(world, rule, state)
    assert changes == 0


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_an_ordered_threshold_search_cut_at_its_limit_proves_only_the_true_board(data: st.DataObject) -> None:
    """MLflow answers a threshold search ordered best first with its first ``limit`` rows, ties
    in any order, NaN last (NaN may pass the filter: MLflow compares a stored 0). The board
    that rows prove (or, when they prove nothing, the same search without a limit) is a prefix
    of the true ranking of every run, at least ``top_n`` long whenever it is found."""
    ascending = data.draw(st.booleans())
    rule = RuleConfig(
        name="r", experiments=["e"], metric=METRIC, ascending=ascending, top_n=data.draw(st.integers(1, 6))
    )
    pool = [0.1, 0.2, 0.3, 0.4, 0.5, math.inf, -math.inf, math.nan]
    values = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=40))
    runs = [RunRecord(f"r{i:02d}", "", "1", FINISHED, i, 100 + i, {METRIC: v}) for i, v in enumerate(values)]
    cutoff = data.draw(st.sampled_from([0.1, 0.2, 0.3, 0.4, 0.5]))

    def admitted(v: float) -> bool:
        if math.isnan(v):
            v = 0.0
        return v >= cutoff if not ascending else v <= cutoff

    matching = [r for r in runs if admitted(r.metrics[METRIC])]
    ties = data.draw(st.permutations(range(len(matching))))
    tiebreak = {r.run_id: ties[i] for i, r in enumerate(matching)}

    def server_order(r: RunRecord) -> tuple[bool, float, int]:
        v = r.metrics[METRIC]
        return (math.isnan(v), 0.0 if math.isnan(v) else (v if ascending else -v), tiebreak[r.run_id])

    limit = data.draw(st.integers(1, 25))
    rows = sorted(matching, key=server_order)[:limit]
    proof = ordered_search_proof(rows, rule, cutoff, limit)
    if proof is None:
        proof = BoardSearch(tuple(matching), cutoff, False)
    keep = board_size(rule.top_n)
    found = board_from_search(proof, rule, keep)
    truth = order(split_ranked(runs, METRIC)[0], ascending)
    admitted_ranked = [c for c in truth if admitted(c.value)]
    if found is None:
        assert len(admitted_ranked) < rule.top_n or len(rows) == limit
        return
    board, _ = found
    assert len(board) >= min(rule.top_n, keep)
    assert [c.run_id for c in board] == [c.run_id for c in truth[: len(board)]]
    if len(admitted_ranked) >= rule.top_n and len(rows) < limit:
        assert len(board) == min(keep, len(admitted_ranked))
