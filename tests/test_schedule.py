"""The daemon's schedule, decision by decision, with no server: what a pass's agenda takes in
(sweeps, first rankings admitted, stall checks, holder checks, floors) and what the next memory
keeps (holder checks, floors, selection views, catching up)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from watcher.listing import KeptListing
from watcher.memory import DaemonMemory
from watcher.model import WatchedExperiment
from watcher.planner import Agenda, ExperimentPlan
from watcher.ranking import Candidate
from watcher.schedule import (
    FLOOR_MARGIN_SECONDS,
    SWEEP_SECONDS,
    admitted,
    after_failure,
    agenda,
    holder_checks_behind,
    kept_floors,
    needs_first_ranking,
    remember,
    stall_check_interval,
    stall_checks_due,
    sweep_due,
)
from watcher.settings import RuleConfig, WatcherSettings
from watcher.state import STATE_TAG, UNRANKED, ExperimentState, fingerprint

RULE = RuleConfig(name="r", experiments=["*"], metric="m", top_n=2, production_candidates=1)
FP = fingerprint("m", False, None)
NOW = 10_000.0
NOW_MS = int(NOW * 1000)


def exp(name: str, fp: str | None = FP, swept: int | None = None, holders: int = 2) -> WatchedExperiment:
    """A watched experiment ranked under ``fp`` (None: no state) last swept at ``swept``."""
    if fp is None:
        return WatchedExperiment(name, name, {}, RULE)
    board = tuple(Candidate(f"{name}{i}", "", 1.0 - i / 10, i) for i in range(holders))
    state = ExperimentState("r", fp, 2, 1, board=board, swept=swept)
    return WatchedExperiment(name, name, {STATE_TAG: state.to_tag()}, RULE)


def memory(**fields: object) -> DaemonMemory:
    return replace(DaemonMemory(KeptListing(lambda name: True)), **fields)  # type: ignore[arg-type]


def settings(**fields: object) -> WatcherSettings:
    rules = [RULE.model_dump() | dict(fields.pop("rule", {}))]  # type: ignore[call-overload]
    return WatcherSettings(tracking_uri="http://127.0.0.1:1", rules=rules, http={"enabled": False}, **fields)


def plan(exp_id: str, action: str, reason: str = "") -> ExperimentPlan:
    return ExperimentPlan(exp_id, exp_id, "r", action, reason)  # type: ignore[arg-type]


OLD = NOW_MS - int(SWEEP_SECONDS * 1000) - 1
RECENT = NOW_MS - 1_000


@pytest.mark.parametrize(
    ("asked", "limit", "expected"),
    [
        # Due: never swept or swept SWEEP_SECONDS ago, the longest unswept first; not ranked: never.
        (None, 10, ["never", "old"]),
        (None, 1, ["never"]),
        # Asked: every ranked one (at most limit), or the ids named, whatever their last sweep.
        (True, 10, ["never", "old", "recent"]),
        (True, 2, ["never", "old"]),
        (["recent", "unranked"], 10, ["recent"]),
        (False, 10, []),
    ],
)
def test_the_sweep_takes_the_ranked_experiments_swept_longest_ago(
    asked: bool | list[str] | None, limit: int, expected: list[str]
) -> None:
    watched = [
        exp("recent", swept=RECENT),
        exp("old", swept=OLD),
        exp("never"),
        exp("unranked", fp=None),
        exp("first_seen", fp=UNRANKED),
    ]
    assert sweep_due(watched, NOW_MS, limit, asked) == expected


@pytest.mark.parametrize(
    ("fp", "expected"),
    [(None, True), (UNRANKED, True), ("0" * 16, True), (FP, False)],
)
def test_a_first_ranking_is_due_without_a_ranking_by_the_rules_current_definition(
    fp: str | None, expected: bool
) -> None:
    assert needs_first_ranking(exp("e", fp=fp)) is expected


@pytest.mark.parametrize(
    ("latest", "limit", "expected"),
    [
        # All fit: every one admitted, none waits (and no end time is needed).
        (None, 3, (None, 0)),
        # The runs that ended last first, then by name; unknown end times last.
        ({"a": 5, "b": 9, "c": 7}, 2, (frozenset({"b", "c"}), 1)),
        ({"c": 1}, 1, (frozenset({"c"}), 2)),
        ({}, 2, (frozenset({"a", "b"}), 1)),
    ],
)
def test_first_rankings_admitted_are_those_whose_runs_ended_last(
    latest: dict[str, int] | None, limit: int, expected: tuple[frozenset[str] | None, int]
) -> None:
    firsts = [exp(n, fp=None) for n in "abc"]
    assert admitted(firsts, latest, limit) == expected


@pytest.mark.parametrize(
    ("minutes", "alerts", "last", "interval", "due"),
    [
        (360, ["stalled"], None, 600.0, True),  # never looked: due
        (360, ["stalled"], NOW - 599, 600.0, False),  # at most ten minutes apart
        (360, ["stalled"], NOW - 600, 600.0, True),
        (1, ["stalled"], NOW - 6, 6.0, True),  # a tenth of stalled_after_minutes
        (1, ["stalled"], NOW - 5, 6.0, False),
        (1, ["failed"], None, 6.0, False),  # a rule that announces no stall never looks
    ],
)
def test_a_rule_looks_for_stalled_runs_a_tenth_of_its_window_apart(
    minutes: int, alerts: list[str], last: float | None, interval: float, due: bool
) -> None:
    rule = RULE.model_copy(update={"stalled_after_minutes": minutes, "alerts": alerts})
    assert stall_check_interval(rule) == interval
    checked = {} if last is None else {"r": last}
    assert stall_checks_due([rule], checked, NOW) == (frozenset({"r"}) if due else frozenset())


@pytest.mark.parametrize(
    ("deferred", "checked_at", "interval", "expected"),
    [
        (0, {"a": NOW - 500}, 60.0, None),  # none waits: not behind
        (3, {"a": NOW - 100}, 60.0, None),  # waited less than two intervals
        (3, {"a": NOW - 121, "b": NOW - 30}, 60.0, 121.0),
        (3, {"a": NOW - 500}, 0.0, None),  # every pass checks every experiment
    ],
)
def test_holder_checks_are_behind_when_one_waits_two_intervals(
    deferred: int, checked_at: dict[str, float], interval: float, expected: float | None
) -> None:
    assert holder_checks_behind(list(checked_at), deferred, checked_at, NOW, interval) == expected


@pytest.mark.parametrize(
    ("holder_check", "catching_up", "interval", "expected"),
    [
        (None, False, 60.0, {"a", "b"}),  # due: never checked
        (None, True, 60.0, set()),  # the passes catch up with first rankings first
        (None, True, 0.0, {"a", "b"}),  # 0: every pass, catching up or not
        (True, True, 60.0, {"a", "b", "c"}),  # asked: every watched experiment
        (False, False, 60.0, set()),
    ],
)
def test_the_agendas_holder_checks(
    holder_check: bool | None, catching_up: bool, interval: float, expected: set[str]
) -> None:
    watched = [exp("a"), exp("b"), exp("c", fp=None)]
    got = agenda(
        memory(catching_up=catching_up),
        watched,
        NOW,
        settings(holder_check_seconds=interval),
        listed=True,
        holder_check=holder_check,
    )
    assert got.holder_checks == expected


def test_the_agenda_of_a_pass_and_of_a_dry_run() -> None:
    """A pass searches from the kept floors, sweeps what is due, admits at most
    max_rankings_per_pass first rankings and looks for stalls when due; a dry run keeps no
    floor (it searches from the watermarks)."""
    watched = [exp("a", swept=OLD), exp("b", swept=RECENT), exp("c", fp=None), exp("d", fp=None)]
    kept = memory(floors={"a": 5}, stalls_checked={"r": NOW - 1})
    config = settings(max_rankings_per_pass=1, rule={"alerts": ["stalled"]})
    got = agenda(kept, watched, NOW, config, listed=False, latest={"d": 9})
    assert (got.now, got.now_ms, got.listed) == (NOW, NOW_MS, False)
    assert (got.sweep, got.admit, got.rankings_deferred, got.reranks) == (
        frozenset({"a"}),
        frozenset({"d"}),
        1,
        1,
    )
    assert (got.floors, got.stall_checks) == ({"a": 5}, frozenset())
    later = agenda(kept, watched, NOW + 600, config, listed=True, dry_run=True)
    assert (later.floors, later.stall_checks, later.listed) == (None, frozenset({"r"}), True)


def test_holder_checks_falling_behind_are_said_once_until_they_catch_up() -> None:
    watched = [exp(n, holders=2) for n in "abc"]
    config = settings(holder_check_seconds=60.0)
    behind = memory(holders_checked={"a": NOW - 200, "b": NOW - 200, "c": NOW - 200})
    first = agenda(behind, watched, NOW, config, listed=True, holder_check_runs=2)
    assert (first.holder_checks, first.holder_checks_deferred) == (frozenset({"a"}), 2)
    assert (first.holder_checks_behind, first.checks_falling_behind) == (200.0, True)
    again = agenda(
        replace(behind, holder_checks_behind=True), watched, NOW, config, listed=True, holder_check_runs=2
    )
    assert (again.holder_checks_behind, again.checks_falling_behind) == (None, True)
    caught_up = agenda(replace(behind, holder_checks_behind=True), watched, NOW, config, listed=True)
    assert (caught_up.holder_checks_behind, caught_up.checks_falling_behind) == (None, False)


MARGIN_MS = int(FLOOR_MARGIN_SECONDS * 1000)


@pytest.mark.parametrize(
    ("floors", "plans", "searched", "expected"),
    [
        # Decided: the floor moves to where the search read, never back.
        ({}, [plan("a", "idle")], {"a": NOW_MS - MARGIN_MS - 5}, {"a": NOW_MS - MARGIN_MS - 5}),
        ({"a": 7}, [plan("a", "rerank", "news")], {"a": 3}, {"a": 7}),
        # At most the margin before the pass's start.
        ({}, [plan("a", "advance")], {"a": NOW_MS}, {"a": NOW_MS - MARGIN_MS}),
        # News waiting (pending, deferred, counting): the floor stays where it was.
        ({"a": 7}, [plan("a", "pending")], {"a": 99}, {"a": 7}),
        ({}, [plan("a", "rerank", "deferred")], {"a": 99}, {}),
        ({"a": 7}, [plan("a", "count")], {"a": 99}, {"a": 7}),
        # Not searched this pass: its floor goes.
        ({"a": 7, "b": 8}, [plan("a", "idle")], {"a": 9}, {"a": 9}),
    ],
)
def test_the_floors_move_where_a_pass_decided_everything_it_read(
    floors: dict[str, int], plans: list[ExperimentPlan], searched: dict[str, int], expected: dict[str, int]
) -> None:
    assert kept_floors(floors, plans, searched, NOW_MS) == expected


def test_the_next_memory_after_a_pass() -> None:
    """Checked: the agenda's holder checks still watched and the experiments ranked, not those
    whose ranking waits, at the time the checks ended; the stall checks at the pass's start;
    the floors moved; a pass that left rankings makes the next one catch up."""
    before = memory(holders_checked={"x": 1.0}, fold_values={("r0", "m"): (1.0,)})
    plan_agenda = Agenda(
        now_ms=NOW_MS,
        now=NOW,
        holder_checks=frozenset({"a", "gone", "w"}),
        floors={},
        stall_checks=frozenset({"r"}),
    )
    plans = [plan("a", "idle"), plan("f", "full", "first"), plan("w", "pending", "deferred")]
    after = remember(
        before,
        plan_agenda,
        plans,
        {"a": 5},
        watched={"a", "f", "w"},
        fold_values={("r1", "m"): (2.0,)},
        checked_at=NOW + 3,
        rankings_deferred=1,
    )
    assert after.holders_checked == {"x": 1.0, "a": NOW + 3, "f": NOW + 3}
    assert after.stalls_checked == {"r": NOW}
    assert after.floors == {"a": 5}
    assert after.fold_values == {("r0", "m"): (1.0,), ("r1", "m"): (2.0,)}
    assert after.catching_up is True
    assert after.listing is before.listing
    dry = remember(
        before,
        replace(plan_agenda, floors=None),
        plans,
        {"a": 5},
        watched={"a"},
        fold_values={},
        checked_at=NOW,
        rankings_deferred=0,
        dry_run=True,
    )
    assert (dry.floors, dry.catching_up) == ({}, False)


def test_a_failed_pass_keeps_its_stall_checks_and_fold_values_and_stops_catching_up() -> None:
    before = memory(catching_up=True, holders_checked={"a": 1.0}, floors={"a": 3})
    failed = Agenda(now_ms=NOW_MS, now=NOW, stall_checks=frozenset({"r"}), checks_falling_behind=True)
    after = after_failure(before, failed, {("r1", "m"): (2.0,)})
    assert (after.catching_up, after.holder_checks_behind) == (False, True)
    assert (after.stalls_checked, after.fold_values) == ({"r": NOW}, {("r1", "m"): (2.0,)})
    assert (after.holders_checked, after.floors) == ({"a": 1.0}, {"a": 3})
