"""The daemon's schedule: what one pass does, and what it leaves for the next (pure).

No I/O, no clock (``now`` is passed in). :func:`agenda` turns the daemon's memory, the watched
experiments, the time and the settings into one :class:`Agenda` for the pass: whose holders
it reads, what it sweeps, which first rankings it admits, which rules look for stalled runs,
each experiment's search floor. :func:`remember` turns the memory, the agenda, the plans and
what was searched into the next memory.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace

from watcher.memory import DaemonMemory, FoldValues, selection_view
from watcher.model import SWEEP_SECONDS, Rule, WatchedExperiment
from watcher.planner import RANKING, Agenda, ExperimentPlan
from watcher.settings import WatcherSettings
from watcher.state import UNRANKED, fingerprint, state_of

# Holder runs one pass's holder check reads at most: MLflow's search returns whole runs, so
# this bounds a pass with a due check (what a holder run costs to read: BENCHMARKS.md,
# "Figures once kept in comments"). The experiments left over are checked by the passes that
# follow at once, the longest unchecked first.
HOLDER_CHECK_RUNS = 150

# How far behind a pass's start the floor it keeps for an experiment stays (see
# :func:`kept_floors`): a run's end time is its trainer's clock, so a run of an idle experiment
# that ends while another is re-ranked is still read when that trainer's clock is up to this
# much behind the watcher's (or its commit this late). An idle pass reads again at most the
# runs that ended this long before it; at the default poll interval, each run about once more.
FLOOR_MARGIN_SECONDS = 60.0

# The actions after which a pass has decided every run its batch search returned for an
# experiment (see :func:`kept_floors`).
FLOOR_ACTIONS = frozenset({"idle", "advance", "rerank", "full"})


def sweep_due(
    watched: Sequence[WatchedExperiment],
    now_ms: int,
    limit: int,
    asked: bool | Collection[str] | None = None,
) -> list[str]:
    """The ranked experiments a pass sweeps, the longest unswept first, at most ``limit``:
    those whose last sweep is older than ``SWEEP_SECONDS`` (or unknown), or, ``asked`` (True:
    every one, else the ids), those asked for whatever their last sweep. A pass sweeps no more
    than it may re-rank: the rest would be read (their tag holders) and left waiting."""
    due: list[tuple[int, str]] = []
    for exp in watched:
        state = state_of(exp.tags)
        if state is None or state.fingerprint == UNRANKED:
            continue
        if asked is None:
            if state.swept is not None and now_ms - state.swept < SWEEP_SECONDS * 1000:
                continue
        elif asked is not True and (asked is False or exp.experiment_id not in asked):
            continue
        due.append((state.swept or 0, exp.experiment_id))
    return [i for _, i in sorted(due)[:limit]]


def holder_checks_due(
    watched: Sequence[WatchedExperiment],
    checked_at: Mapping[str, float],
    now: float,
    interval: float,
    budget: int = HOLDER_CHECK_RUNS,
) -> tuple[list[str], int]:
    """The ranked experiments whose holders this pass reads, and how many more are due.

    Due: not checked within ``interval`` seconds (or never), the longest unchecked first, taken
    while their holders (the top N of the kept board; an empty board counts one) fit ``budget``
    runs; the first always goes. ``interval`` 0 takes every ranked experiment, every pass. An
    experiment not ranked yet has no holders to check: its first ranking reads them."""
    due: list[tuple[float, str, int]] = []
    for exp in watched:
        state = state_of(exp.tags)
        if state is None or state.fingerprint == UNRANKED:
            continue
        last = checked_at.get(exp.experiment_id)
        if interval == 0 or last is None or now - last >= interval:
            due.append((-1.0 if last is None else last, exp.experiment_id, max(1, len(state.holders()))))
    if interval == 0:
        return [i for _, i, _ in due], 0
    taken: list[str] = []
    runs = 0
    for _, exp_id, holders in sorted(due):
        if taken and runs + holders > budget:
            break
        taken.append(exp_id)
        runs += holders
    return taken, len(due) - len(taken)


def holder_checks_behind(
    due: Sequence[str], deferred: int, checked_at: Mapping[str, float], now: float, interval: float
) -> float | None:
    """How long the longest-waiting of ``due`` waited, when that is over twice ``interval``
    while checks are deferred: a round of checks takes longer than ``holder_check_seconds``,
    so the daemon runs passes back to back for good (None: not so)."""
    if not deferred or interval <= 0:
        return None
    last = [checked_at[i] for i in due if i in checked_at]
    waited = now - min(last) if last else 0.0
    return waited if waited > 2 * interval else None


def needs_first_ranking(exp: WatchedExperiment) -> bool:
    """The experiment's state holds no ranking by its rule's current definition."""
    rule = exp.rule
    assert rule is not None
    state = state_of(exp.tags)
    return state is None or state.fingerprint != fingerprint(rule.metric, rule.ascending, rule.filter)


def first_rankings(watched: Iterable[WatchedExperiment]) -> list[WatchedExperiment]:
    """The experiments whose first ranking (or ranking under a changed rule) is due."""
    return [e for e in watched if needs_first_ranking(e)]


def admitted(
    firsts: Sequence[WatchedExperiment], latest: Mapping[str, int] | None, limit: int
) -> tuple[frozenset[str] | None, int]:
    """The first rankings a pass may start (None: every one) and how many wait: at most
    ``limit``, those whose runs ended last first (``latest``: each one's latest end time, read
    only when there are more than ``limit``), then by name."""
    if len(firsts) <= limit:
        return None, 0
    known = latest or {}
    ranked = sorted(firsts, key=lambda e: (-known.get(e.experiment_id, 0), e.name))
    return frozenset(e.experiment_id for e in ranked[:limit]), len(firsts) - limit


def stall_check_interval(rule: Rule) -> float:
    """Seconds between searches for stalled runs of a rule that waits for none: a tenth of
    its ``stalled_after_minutes`` (at most 10 minutes), so a stall is announced late by at
    most that much and idle passes mostly skip the search."""
    return min(600.0, rule.stalled_after_minutes * 6.0)


def stall_checks_due(rules: Iterable[Rule], checked_at: Mapping[str, float], now: float) -> frozenset[str]:
    """The rules that announce stalled runs and last looked for them an interval ago (or never)."""
    return frozenset(
        rule.name
        for rule in rules
        if "stalled" in rule.alerts
        and ((last := checked_at.get(rule.name)) is None or now - last >= stall_check_interval(rule))
    )


def agenda(
    memory: DaemonMemory,
    watched: Sequence[WatchedExperiment],
    now: float,
    settings: WatcherSettings,
    *,
    listed: bool,
    dry_run: bool = False,
    sweep: bool | Collection[str] | None = None,
    holder_check: bool | None = None,
    latest: Mapping[str, int] | None = None,
    holder_check_runs: int = HOLDER_CHECK_RUNS,
) -> Agenda:
    """One pass's agenda.

    ``sweep``: True sweeps every watched experiment, or the ids given; None those whose last
    sweep, kept in MLflow, is older than ``SWEEP_SECONDS``; False none (at most
    ``max_rankings_per_pass`` either way). ``holder_check``: True reads the holders of every
    watched experiment; None those not read for ``holder_check_seconds``, at most
    ``holder_check_runs`` holder runs, none while the passes catch up with first rankings the
    last one left (each reads its own holders); False none. ``latest``: the latest end time of
    the first rankings, when there are more than ``max_rankings_per_pass``. A dry run searches
    from the watermarks and keeps no floor.
    """
    interval = settings.holder_check_seconds
    limit = settings.max_rankings_per_pass
    checks: Collection[str] = ()
    checks_deferred = 0
    say_behind = None
    falling_behind = memory.holder_checks_behind
    if holder_check is True:
        checks = [e.experiment_id for e in watched]
    elif holder_check is None and not (memory.catching_up and interval > 0):
        checks, checks_deferred = holder_checks_due(
            watched, memory.holders_checked, now, interval, holder_check_runs
        )
        behind = holder_checks_behind(checks, checks_deferred, memory.holders_checked, now, interval)
        if not checks_deferred:
            falling_behind = False
        elif behind is not None and not falling_behind:
            say_behind, falling_behind = behind, True
    admit, deferred = admitted(first_rankings(watched), latest, limit)
    now_ms = int(now * 1000)
    return Agenda(
        now_ms=now_ms,
        now=now,
        holder_checks=frozenset(checks),
        sweep=frozenset(sweep_due(watched, now_ms, limit, sweep) if sweep is not False else ()),
        admit=admit,
        reranks=limit,
        stall_checks=stall_checks_due(settings.rules, memory.stalls_checked, now),
        floors=None if dry_run else memory.floors,
        listed=listed,
        rankings_deferred=deferred,
        holder_checks_deferred=checks_deferred,
        holder_checks_behind=say_behind,
        checks_falling_behind=falling_behind,
        holder_check_seconds=interval,
    )


def rankings_deferred(
    agenda: Agenda, plans: Sequence[ExperimentPlan], watched: Sequence[WatchedExperiment]
) -> int:
    """The rankings a pass left for the next: the first rankings the agenda did not admit, and
    the re-ranks beyond ``max_rankings_per_pass``."""
    waiting = {p.experiment_id for p in plans if p.reason == "deferred"}
    reranks = sum(1 for e in watched if e.experiment_id in waiting and not needs_first_ranking(e))
    return agenda.rankings_deferred + reranks


def after_failure(memory: DaemonMemory, agenda: Agenda, fold_values: FoldValues) -> DaemonMemory:
    """The memory after a pass that failed part way: the stall checks it made count, the
    per-fold values it read are kept (finished runs do not change), and it leaves no
    rankings for a pass that follows at once."""
    return replace(
        memory,
        stalls_checked={**memory.stalls_checked, **dict.fromkeys(agenda.stall_checks, agenda.now)},
        fold_values={**memory.fold_values, **fold_values} if fold_values else memory.fold_values,
        holder_checks_behind=agenda.checks_falling_behind,
        catching_up=False,
    )


def remember(
    memory: DaemonMemory,
    agenda: Agenda,
    plans: Sequence[ExperimentPlan],
    searched: Mapping[str, int],
    *,
    watched: Collection[str],
    fold_values: FoldValues,
    checked_at: float,
    rankings_deferred: int,
    dry_run: bool = False,
) -> DaemonMemory:
    """The memory after a pass that ran to its end.

    The experiments whose holders were checked (the agenda's still ``watched``, and those
    ranked: a ranking reads its holders first; not those whose ranking waits, so their next
    check finds what this one did) count as checked at ``checked_at``; the floors move from
    what was ``searched`` (see :func:`kept_floors`); the selection statistics computed are kept
    (not a dry run's); ``rankings_deferred`` (first rankings and re-ranks left) says whether
    the next pass catches up."""
    waiting = {p.experiment_id for p in plans if p.reason == "deferred"}
    checked = [i for i in agenda.holder_checks if i in watched]
    checked += [p.experiment_id for p in plans if p.action in RANKING]
    checked = [i for i in checked if i not in waiting]
    selections = dict(memory.selections)
    if not dry_run:
        for p in plans:
            if p.selection is not None and p.selection_tag is not None:
                leader = p.board.leader.run_id if p.board is not None and p.board.leader is not None else None
                selections[p.experiment_id] = selection_view(p.selection, p.selection_tag, leader)
    return replace(
        after_failure(memory, agenda, fold_values),
        holders_checked={**memory.holders_checked, **dict.fromkeys(checked, checked_at)},
        floors=(
            kept_floors(memory.floors, plans, searched, agenda.now_ms)
            if agenda.floors is not None
            else memory.floors
        ),
        selections=selections,
        catching_up=bool(rankings_deferred),
    )


def kept_floors(
    floors: Mapping[str, int], plans: Sequence[ExperimentPlan], searched: Mapping[str, int], now_ms: int
) -> dict[str, int]:
    """The floors after a pass's plans were written: the end time up to which the batch search
    read each experiment becomes the experiment's floor (the next searches start there), where
    the pass decided everything it read -- nothing new, or ranked (its state moved past its
    news) -- not where the news waits (a deferred re-rank, a board still counting, a trigger
    waiting for the last run). Experiments no longer searched lose theirs.

    The end times come from every experiment's trainers: a run of this experiment that ended
    before another experiment's latest end time may be committed after the search (a slow
    commit, a trainer's clock behind, another's ahead). A floor stays
    ``FLOOR_MARGIN_SECONDS`` before the pass's start (``now_ms``), when every run that ended by
    then was visible to the search."""
    settled = now_ms - int(FLOOR_MARGIN_SECONDS * 1000)
    reached = {i: min(to, settled) for i, to in searched.items()}
    done = {
        p.experiment_id
        for p in plans
        if p.action in FLOOR_ACTIONS and p.reason != "deferred" and p.experiment_id in reached
    }
    return {
        i: max(to, floors.get(i, to)) if i in done else floors[i]
        for i, to in reached.items()
        if i in done or i in floors
    }
