"""The pure ranking core: ordering, the kept-board merge and the tag planner."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.tag_changes import apply_in_memory
from watcher.model import MODEL_RANK, PRODUCTION_CANDIDATE, RunRecord, TagChange, is_podium_run_tag
from watcher.planner import BoardSearch, board_from_search
from watcher.ranking import (
    FINISHED,
    Candidate,
    desired_tags,
    leaderboard_entries,
    order,
    plan,
)
from watcher.settings import RuleConfig

RUN_IDS = [f"run{i:02d}" for i in range(14)]

podium_values = st.fixed_dictionaries(
    {},
    optional={
        MODEL_RANK: st.integers(1, 16).map(str),
        "top_10": st.just("true"),
        "top_5": st.just("true"),
        "top_3": st.just("true"),
        PRODUCTION_CANDIDATE: st.just("true"),
        "top_feature": st.just("x"),  # not the watcher's: never touched
    },
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[str, dict[str, str]], list[str], int, int]:
    """Arbitrary current tags (even inconsistent ones), a board order, top_n and K."""
    current = draw(st.dictionaries(st.sampled_from(RUN_IDS), podium_values, max_size=len(RUN_IDS)))
    board = draw(st.permutations(RUN_IDS).map(lambda p: list(p)))
    board = board[: draw(st.integers(0, len(RUN_IDS)))]
    top_n = draw(st.integers(1, 12))
    k = draw(st.integers(0, top_n))
    return current, board, top_n, k


@st.composite
def consistent_scenarios(draw: st.DrawFn) -> tuple[dict[str, dict[str, str]], list[str], int, int]:
    """Current tags as a previous ranking left them (unique ranks), and a new board."""
    old_board = draw(st.permutations(RUN_IDS).map(lambda p: list(p)))
    old_board = old_board[: draw(st.integers(0, len(RUN_IDS)))]
    old_n = draw(st.integers(1, 12))
    old_k = draw(st.integers(0, old_n))
    current = _tags_for(old_board, old_n, old_k)
    _, board, top_n, k = draw(scenarios())
    return current, board, top_n, k


def _tags_for(board: list[str], top_n: int, k: int) -> dict[str, dict[str, str]]:
    entries = leaderboard_entries([Candidate(r, r, 1.0 - i / 100, i) for i, r in enumerate(board)], top_n)
    return desired_tags(entries, top_n, k)


def _podium(tags: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    out = {r: {k: v for k, v in t.items() if is_podium_run_tag(k)} for r, t in tags.items()}
    return {r: t for r, t in out.items() if t}


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_plan_reaches_the_desired_tags_and_is_idempotent(scenario: tuple) -> None:
    """Applying the plan yields exactly the desired watcher tags; planning again plans nothing."""
    current, board, top_n, k = scenario
    desired = _tags_for(board, top_n, k)
    after = apply_in_memory(current, plan(desired, current))
    assert _podium(after) == desired
    assert plan(desired, after) == []


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_ranks_top_n_and_candidates_are_counted_exactly(scenario: tuple) -> None:
    """Ranks 1..min(N, ranked) once each; min(N, ranked) top_N; min(K, ranked) candidates."""
    current, board, top_n, k = scenario
    after = _podium(apply_in_memory(current, plan(_tags_for(board, top_n, k), current)))
    ranked = len(board)
    ranks = sorted(int(t[MODEL_RANK]) for t in after.values() if MODEL_RANK in t)
    assert ranks == list(range(1, min(top_n, ranked) + 1))
    assert sum(1 for t in after.values() if t.get(f"top_{top_n}") == "true") == min(top_n, ranked)
    assert sum(1 for t in after.values() if t.get(PRODUCTION_CANDIDATE) == "true") == min(k, ranked)
    other_top = {key for t in after.values() for key in t if key.startswith("top_") and key != f"top_{top_n}"}
    assert other_top == set()


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_runs_that_left_lose_every_watcher_tag_and_keep_their_own(scenario: tuple) -> None:
    """A run outside the new top N ends with no watcher tag; other tags are never planned."""
    current, board, top_n, k = scenario
    changes = plan(_tags_for(board, top_n, k), current)
    after = apply_in_memory(current, changes)
    for run_id in set(current) - set(board[:top_n]):
        assert not any(is_podium_run_tag(key) for key in after.get(run_id, {}))
    assert all(is_podium_run_tag(c.key) for c in changes)


@settings(max_examples=300, deadline=None)
@given(consistent_scenarios())
def test_no_two_runs_share_a_rank_at_any_step(scenario: tuple) -> None:
    """Applied call by call (one delete, or one run's batch), ranks stay unique throughout."""
    current, board, top_n, k = scenario
    changes = plan(_tags_for(board, top_n, k), current)
    state = {r: dict(t) for r, t in current.items()}
    for group in _calls(changes):
        state = apply_in_memory(state, group)
        ranks = Counter(t[MODEL_RANK] for t in state.values() if MODEL_RANK in t)
        assert all(n == 1 for n in ranks.values()), ranks


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_deletions_come_first_then_one_batch_per_run(scenario: tuple) -> None:
    """All deletes precede all sets; each run's sets are contiguous (one log_batch per run)."""
    current, board, top_n, k = scenario
    changes = plan(_tags_for(board, top_n, k), current)
    kinds = [c.is_delete for c in changes]
    assert kinds == sorted(kinds, reverse=True)
    set_runs = [c.run_id for c in changes if not c.is_delete]
    groups = [r for i, r in enumerate(set_runs) if i == 0 or set_runs[i - 1] != r]
    assert len(groups) == len(set(groups))


def test_a_leaving_run_loses_model_rank_last() -> None:
    """A run cleaned half-way (interrupted pass) still carries model_rank, so it is found again."""
    changes = plan({}, {"a": {MODEL_RANK: "1", "top_10": "true", PRODUCTION_CANDIDATE: "true"}})
    assert [c.key for c in changes][-1] == MODEL_RANK


def test_a_new_leader_shifts_ranks_from_the_bottom() -> None:
    """New run first: the old #3 leaves, then #2->3, #1->2, and the new run takes 1 last."""
    current = _tags_for(["a", "b", "c"], 3, 1)
    changes = plan(_tags_for(["new", "a", "b"], 3, 1), current)
    rank_sets = [(c.run_id, c.new) for c in changes if c.key == MODEL_RANK and c.new]
    assert rank_sets == [("b", "3"), ("a", "2"), ("new", "1")]
    assert [(c.run_id, c.key) for c in changes if c.is_delete] == [
        ("a", PRODUCTION_CANDIDATE),
        ("c", "top_3"),
        ("c", MODEL_RANK),
    ]


def test_a_rank_swap_is_broken_by_deleting_one_rank_first() -> None:
    """Two runs swapping ranks: one loses its rank first, so 1 and 2 are never held twice."""
    current = _tags_for(["a", "b"], 2, 0)
    changes = plan(_tags_for(["b", "a"], 2, 0), current)
    assert changes[0] == TagChange("b", MODEL_RANK, "2", None)
    assert [(c.run_id, c.new) for c in changes[1:]] == [("a", "2"), ("b", "1")]


def test_nothing_is_planned_for_runs_already_right() -> None:
    current = _tags_for(["a", "b", "c"], 10, 3)
    assert plan(_tags_for(["a", "b", "c"], 10, 3), current) == []


def test_changing_top_n_replaces_the_old_top_tag() -> None:
    current = _tags_for(["a", "b"], 10, 3)
    after = apply_in_memory(current, plan(_tags_for(["a", "b"], 5, 3), current))
    assert after == {
        "a": {MODEL_RANK: "1", "top_5": "true", PRODUCTION_CANDIDATE: "true"},
        "b": {MODEL_RANK: "2", "top_5": "true", PRODUCTION_CANDIDATE: "true"},
    }


def _calls(changes: list[TagChange]) -> list[list[TagChange]]:
    """Group changes the way the adapter sends them: one delete per call, one batch per run."""
    groups: list[list[TagChange]] = []
    for change in changes:
        if (
            not change.is_delete
            and groups
            and not groups[-1][0].is_delete
            and groups[-1][0].run_id == change.run_id
        ):
            groups[-1].append(change)
        else:
            groups.append([change])
    return groups


# -- ordering and merging ---------------------------------------------------------------------

candidate_lists = st.lists(
    st.builds(
        Candidate,
        run_id=st.text("abcdef0123", min_size=4, max_size=4),
        run_name=st.just("r"),
        value=st.sampled_from([0.1, 0.2, 0.5, 0.5, 0.9, -1.0]),
        end_time=st.one_of(st.none(), st.integers(0, 5)),
    ),
    max_size=30,
    unique_by=lambda c: c.run_id,
)


@given(candidate_lists, st.booleans(), st.randoms())
def test_order_is_deterministic_with_ties_by_end_time_then_run_id(
    cands: list[Candidate], ascending: bool, rnd: random.Random
) -> None:
    """Ties: earlier end time first (unknown last), then run id; input order never matters."""
    shuffled = cands[:]
    rnd.shuffle(shuffled)
    ranked = order(shuffled, ascending)
    assert ranked == order(cands, ascending)
    for a, b in itertools.pairwise(ranked):
        better = a.value < b.value if ascending else a.value > b.value
        if not better:
            assert a.value == b.value
            ea = math.inf if a.end_time is None else a.end_time
            eb = math.inf if b.end_time is None else b.end_time
            assert (ea, a.run_id) < (eb, b.run_id)


@settings(max_examples=200, deadline=None)
@given(candidate_lists, candidate_lists, st.booleans(), st.integers(1, 6), st.data())
def test_merge_with_a_threshold_search_equals_a_full_ranking(
    old: list[Candidate], new: list[Candidate], ascending: bool, top_n: int, data: st.DataObject
) -> None:
    """Kept board + everything at or before its cutoff gives the same top N as ranking all runs
    (:func:`watcher.planner.board_from_search`, the board a re-rank's threshold search proves).

    Holders may vanish (deleted) and new runs arrive; when too few known runs lead the
    cutoff the merge asks for a full ranking instead of guessing.
    """
    keep = top_n + 3
    full_old = order(old, ascending)
    kept = full_old[:keep]
    complete = len(full_old) <= keep
    deleted = set(data.draw(st.lists(st.sampled_from([c.run_id for c in old]), max_size=3)) if old else [])
    new = [c for c in new if c.run_id not in {o.run_id for o in old}]
    now = [c for c in old if c.run_id not in deleted] + new
    cutoff = kept[-1].value if kept and not complete else None
    if cutoff is None:
        fresh = now
    else:
        fresh = [c for c in now if (c.value <= cutoff if ascending else c.value >= cutoff)]
    rule = RuleConfig(name="r", experiments=["*"], metric="m", ascending=ascending, top_n=top_n)
    runs = tuple(
        RunRecord(c.run_id, c.run_name, "1", FINISHED, None, c.end_time, {"m": c.value}) for c in fresh
    )
    merged = board_from_search(BoardSearch(runs, cutoff, complete), rule, keep)
    truth = order(now, ascending)
    if merged is None:
        assert not complete
        return
    board, _ = merged
    assert board[:top_n] == truth[:top_n]
    assert board == truth[: len(board)]
