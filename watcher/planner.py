"""Pure planning: what a pass read about an experiment becomes one :class:`ExperimentPlan`.

No MLflow, no I/O, no clock (``now`` is passed in). The engine (:mod:`watcher.engine`)
gathers a batch's :class:`ExperimentRead` values; :func:`decide_batch` triages them and
either asks for what else it must read (:class:`ToRead`: boards, orphan tags, count pages,
the first rankings' search) or returns every plan, which the one writer
(``MlflowTracking.apply_plan``) applies. A dry run prints the plans instead. ``POST /models/rank`` plans with the same functions and writes nothing when the
answer is an error.

Everything is planned from what MLflow holds now: the holder check (the runs carrying
``model_rank``) is compared with the kept board, and any difference -- a hand-set tag, a
deleted or restored holder, a holder whose value or status changed, a replica's stale
write -- re-ranks the experiment from fresh threshold searches.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal

from watcher import selection as stats
from watcher.model import (
    ON_DEMAND_RULE,
    PRODUCTION_CANDIDATE,
    TIED_WITH_LEADER,
    TRUE,
    Leaderboard,
    LeaderboardChanged,
    Rule,
    RunAlert,
    RunRecord,
    SelectionSummary,
    TagChange,
    top_tag,
)
from watcher.ranking import (
    FINISHED,
    Candidate,
    desired_tags,
    finite_value,
    is_podium_run_tag,
    leaderboard_entries,
    order,
    plan,
    podium_tags,
    sort_key,
    split_ranked,
    with_tied,
)
from watcher.state import MAX_ALERTED, UNRANKED, ExperimentState, board_digest, board_size, fingerprint

RUNNING = "RUNNING"
ENDED_UNSUCCESSFULLY = frozenset({"FAILED", "KILLED"})
# Runs a batch search may return again (their watermark already covers them) before the
# lagging experiments' watermarks are moved up, at the cost of one state write each.
REDUNDANT_LIMIT = 500
# The page a first ranking starts from (the runs that ended last): it estimates the cutoff of
# the board. Its best value admits about 1/50 of the experiment to the first ordered threshold
# search, which MLflow sorts on the server and answers with ``keep + 1`` runs.
SAMPLE_SIZE = 50
# Ranks within the sample tried as cutoffs, best first; each try is one threshold search.
SAMPLE_RANKS = (1, 4, 16, 64)
# Failed runs that may wait for room in the outbox (behind the state's alert cursor); past it
# they are counted in one log line, not announced, and the cursor is dropped: every pass reads
# again the runs that ended after the cursor, so it must not lag without end.
MAX_FAILED_WAITING = 1_000

Action = Literal["idle", "advance", "pending", "count", "rerank", "full"]
RANKING: frozenset[Action] = frozenset({"rerank", "full"})


@dataclass(frozen=True)
class Agenda:
    """What one pass (or one API ranking) does, decided before it reads a run.

    ``holder_checks``, ``sweep``: the experiments whose ``model_rank`` holders the batch
    search reads, and whose ``top_{N}``/``production_candidate`` holders it searches (each
    re-ranked from its kept cutoff); ``admit`` (None: every one) the experiments a first
    ranking may start for; ``reranks`` (None: no bound) the re-ranks of the whole pass;
    ``stall_checks`` the rules that look for stalled runs this pass; ``floors`` (None: not a
    daemon pass, which searches from the watermarks and keeps nothing) where each
    experiment's batch search may start; ``listed``: the experiments' tags come from the
    listing kept between passes (a plan that writes state asks to read them afresh);
    ``force_rank`` ranks every experiment (the API).
    """

    now_ms: int
    # The watcher's clock (seconds) when the pass started: the schedules kept in memory.
    now: float = 0.0
    holder_checks: frozenset[str] = frozenset()
    sweep: frozenset[str] = frozenset()
    admit: frozenset[str] | None = None
    reranks: int | None = None
    stall_checks: frozenset[str] = frozenset()
    floors: Mapping[str, int] | None = None
    listed: bool = False
    force_rank: bool = False
    # First rankings and holder checks due that wait for the passes that follow at once.
    rankings_deferred: int = 0
    holder_checks_deferred: int = 0
    # Seconds the longest-waiting holder check waited, to be said now (None: nothing to
    # say), and whether the checks are behind after this agenda (said once until they catch up).
    holder_checks_behind: float | None = None
    checks_falling_behind: bool = False
    # The holder check interval (for what the pass says when the checks fall behind).
    holder_check_seconds: float = 0.0

    @classmethod
    def on_demand(cls, now: float, experiment_id: str) -> Agenda:
        """An API ranking: one experiment, ranked whatever its state, its holders read."""
        return cls(int(now * 1000), now, holder_checks=frozenset({experiment_id}), force_rank=True)


@dataclass(frozen=True)
class Experiment:
    """The experiment a plan is for, as the pass's listing named it."""

    experiment_id: str
    name: str


@dataclass(frozen=True)
class Observed:
    """What the pass's batch searches returned for one experiment.

    ``ended``: runs that ended after the experiment's watermark (any status; FINISHED ones
    match the rule's filter). ``holders``: runs carrying ``model_rank`` now (None: not read this pass). ``running``: the
    RUNNING runs, or None when the pass did not search them. ``advance_to``: set when the
    batch search returned many runs the watermark already covers (the largest end time seen).
    """

    ended: tuple[RunRecord, ...] = ()
    # None: the holder check is not due this pass (the holders are read only to rank).
    holders: tuple[RunRecord, ...] | None = ()
    running: tuple[RunRecord, ...] | None = None
    advance_to: int | None = None
    # Runs carrying ``top_{N}`` or ``production_candidate`` (None: not searched this pass).
    orphans: tuple[RunRecord, ...] | None = None
    # Alerts the outbox has room for (None: no bound); the rest wait for a later pass.
    alert_room: int | None = None
    # The latest end time of FINISHED runs after the watermark that the rule's filter leaves
    # out (0: none). The batch search drops the filter when failed runs are announced; the
    # watermark moves past these runs too, or every later pass would search them again.
    filtered_out: int = 0


@dataclass(frozen=True)
class Triage:
    """What one experiment needs this pass, before any ranking search.

    ``action``: "idle" (nothing to do), "advance" (only the watermark moves), "pending" (new
    runs wait for a RUNNING one), "count" (only the paged count goes on), "rerank" (merge the
    kept board with a threshold search), "full" (find the board from scratch). ``reason``
    says why it ranks (``news``, ``holders``, ``reshaped``, ``settled``, ``first``, ``rule``).
    """

    action: Action
    reason: str
    seen: int
    new_ranked: int = 0
    new_unranked: int = 0
    alerts: tuple[RunAlert, ...] = ()
    alerted: tuple[str, ...] = ()
    stalled: tuple[str, ...] = ()
    old_alerts_skipped: int = 0
    # Alerts due but left for a later pass (no room in the outbox, or the state's alerted list
    # is full): not remembered (failed runs wait behind ``alert_cursor``), so a later pass
    # announces them.
    alerts_held: int = 0
    # Failed runs beyond MAX_FAILED_WAITING waiting for the outbox: not announced.
    alerts_lost: int = 0
    first_seen: int | None = None
    # (end_time, run_id) of the first failed run due but not queued (None: all are queued).
    alert_cursor: tuple[int, str] | None = None


@dataclass(frozen=True)
class ExperimentPlan:
    """The pass's decision for one experiment, applied by the one writer (unless dry run).

    ``changes``: run tag changes, in a safe order; ``state``: the ``podium.state`` to write
    (None: leave it); ``event``/``alerts``: what the handlers get once the plan is applied.
    """

    experiment_id: str
    experiment_name: str
    rule: str
    action: Action
    reason: str = ""
    changes: tuple[TagChange, ...] = ()
    state: ExperimentState | None = None
    event: LeaderboardChanged | None = None
    board: Leaderboard | None = None
    alerts: tuple[RunAlert, ...] = ()
    stalled: tuple[str, ...] = ()
    # The selection statistics computed this pass, and the podium.selection tag to write.
    selection: stats.Selection | None = None
    selection_tag: str | None = None


def last_activity(run: RunRecord) -> int | None:
    """The run's latest sign of life: its end, latest metric timestamp or start (ms)."""
    times = [t for t in (run.end_time, run.last_activity, run.start_time) if t is not None]
    return max(times) if times else None


def stalled_since(run: RunRecord, stalled_after_minutes: int) -> int | None:
    """When a RUNNING run counts as stalled: its last activity plus the rule's window (ms)."""
    active = last_activity(run)
    return None if active is None else active + stalled_after_minutes * 60_000


def is_stalled(run: RunRecord, now_ms: int, stalled_after_minutes: int) -> bool:
    """A RUNNING run with no activity for ``stalled_after_minutes``."""
    if run.status != RUNNING:
        return False
    active = last_activity(run)
    return active is not None and now_ms - active >= stalled_after_minutes * 60_000


def holders_agree(state: ExperimentState, holders: Sequence[RunRecord], metric: str) -> bool:
    """True when the runs carrying ``model_rank`` are exactly the kept board's top N, each
    FINISHED, with the kept value and exactly the tags the last ranking wrote."""
    expected = state.tags_of_holders()
    if {r.run_id for r in holders} != set(expected) or len(holders) != len(expected):
        return False
    values = {c.run_id: c.value for c in state.holders()}
    for run in holders:
        if run.status != FINISHED or finite_value(run, metric) != values.get(run.run_id):
            return False
        if podium_tags(run.tags) != expected[run.run_id]:
            return False
    return True


def orphans_agree(state: ExperimentState, orphans: Sequence[RunRecord]) -> bool:
    """True when every run carrying ``top_{N}`` or ``production_candidate`` is a kept holder
    with exactly the tags the last ranking wrote."""
    expected = state.tags_of_holders()
    return all(podium_tags(r.tags) == expected.get(r.run_id) for r in orphans)


def triage(
    rule: Rule,
    fp: str,
    experiment: Experiment,
    state: ExperimentState | None,
    seen: Observed,
    now_ms: int,
) -> Triage:
    """Decide what one experiment needs from its kept state and the batch searches' rows.

    ``seen.orphans``, when searched, must
    carry exactly the tags the kept board says, like the holders. Alerts: FAILED/KILLED runs among ``ended``
    and stalled runs among ``running`` that the rule has not announced, when the rule asks
    for them and they failed or stalled after ``first_seen``; older ones are counted only.
    Failed runs beyond the outbox's room wait behind the state's ``alert_cursor``: ``ended``
    then reaches back to it (``ExperimentState.search_after``) and they are due again, oldest
    first, while the watermark and the counts only take runs that ended after it.
    """
    exp_id, exp_name = experiment.experiment_id, experiment.name
    watermark = state.seen if state else 0
    fresh = [r for r in seen.ended if (r.end_time or 0) > watermark]
    finished = [r for r in fresh if r.status == FINISHED]
    ranked, unranked = split_ranked(finished, rule.metric)
    new_seen = max([watermark, seen.filtered_out, *(r.end_time or 0 for r in fresh)])
    first_seen = state.first_seen if state is not None and state.first_seen is not None else now_ms
    ranked_before = state is not None and state.fingerprint != UNRANKED

    stalled = tuple(r for r in seen.running or () if is_stalled(r, now_ms, rule.stalled_after_minutes))
    still_running = [r for r in seen.running or () if r not in stalled]

    running_ids = {r.run_id for r in seen.running} if seen.running is not None else None
    alerted = list(state.alerted) if state else []
    announced = set(alerted)
    skipped = 0
    candidates: list[tuple[str, RunRecord, int | None]] = []
    cursor = state.alert_cursor if state is not None else None
    if "failed" in rule.alerts:
        candidates += [
            ("failed", r, r.end_time)
            for r in seen.ended
            if r.status in ENDED_UNSUCCESSFULLY
            and r.end_time is not None
            and (r.end_time > watermark or (cursor is not None and (r.end_time, r.run_id) >= cursor))
        ]
    if "stalled" in rule.alerts:
        for r in stalled:
            candidates.append(("stalled", r, stalled_since(r, rule.stalled_after_minutes)))
    due: list[tuple[str, RunRecord, int | None]] = []
    for kind, run, since in candidates:
        if run.run_id in announced:
            continue
        if state is None or since is None or since < first_seen:
            skipped += 1  # it failed or stalled before the rule saw the experiment
            continue
        due.append((kind, run, since))
    # Failed runs first (oldest first, the cursor's order), then stalled ones, oldest first.
    due.sort(key=lambda c: (c[0] != "failed", c[2] or 0, c[1].run_id))
    # Only runs that can still alert are remembered: a stalled run while it is RUNNING (it
    # cannot stall again once ended; a failed run ended after the watermark this pass covers).
    if running_ids is not None:
        this_pass = {run.run_id for _, run, _ in candidates}
        alerted = [r for r in alerted if r in running_ids or r in this_pass]
    room = len(due) if seen.alert_room is None else max(0, seen.alert_room)
    alerts: list[RunAlert] = []
    held = lost = 0
    waiting: list[RunRecord] = []  # failed runs with no room, oldest first
    for kind, run, _since in due:
        if kind == "stalled" and (len(alerts) >= room or len(alerted) >= MAX_ALERTED):
            held += 1  # announced by a later pass, once the outbox or the state has room
            continue
        if kind == "failed" and (waiting or len(alerts) >= room):
            waiting.append(run)  # the cursor keeps it due for a later pass
            continue
        if kind == "stalled":
            alerted.append(run.run_id)
        alerts.append(
            RunAlert(
                kind="failed" if kind == "failed" else "stalled",
                experiment_id=exp_id,
                experiment_name=exp_name,
                rule=rule.name,
                run_id=run.run_id,
                run_name=run.run_name,
                status=run.status,
                last_activity=last_activity(run),
            )
        )
    new_cursor: tuple[int, str] | None = None
    if len(waiting) > MAX_FAILED_WAITING:
        lost = len(waiting)  # too many piled up: counted in the log, the cursor moves on
    elif waiting:
        held += len(waiting)
        new_cursor = (waiting[0].end_time or 0, waiting[0].run_id)
    elif "failed" not in rule.alerts and rule.name == ON_DEMAND_RULE:
        # An API ranking announces nothing, yet its state moves the watermark: the runs that
        # ended after the old watermark stay due, behind the cursor, for the rule's next pass
        # (which clears it when the rule does not announce failed runs).
        after = (watermark + 1, "") if state is not None else None
        new_cursor = min((c for c in (cursor, after) if c is not None), default=None)
    common = {
        "seen": new_seen,
        "new_ranked": len(ranked),
        "new_unranked": unranked,
        "alerts": tuple(alerts),
        "alerted": tuple(alerted[-MAX_ALERTED:]),
        "stalled": tuple(r.run_id for r in stalled),
        "old_alerts_skipped": skipped,
        "alerts_held": held,
        "alerts_lost": lost,
        "first_seen": first_seen,
        "alert_cursor": new_cursor,
    }

    wait = rule.trigger == "experiment_finished" and bool(still_running)
    if not ranked_before or state is None or state.fingerprint != fp:
        reason = "rule" if ranked_before else "first"
        if wait:
            return Triage("pending", reason, **common)  # type: ignore[arg-type]
        return Triage("full", reason, **common)  # type: ignore[arg-type]
    if seen.holders is not None and not holders_agree(state, seen.holders, rule.metric):
        return Triage("rerank", "holders", **common)  # type: ignore[arg-type]
    if seen.orphans is not None and not orphans_agree(state, seen.orphans):
        return Triage("rerank", "orphans", **common)  # type: ignore[arg-type]
    if state.top_n != rule.top_n or state.production_candidates != rule.production_candidates:
        return Triage("rerank", "reshaped", **common)  # type: ignore[arg-type]
    has_news = bool(finished) or state.pending
    if has_news and wait:
        return Triage("pending", "news", **common)  # type: ignore[arg-type]
    if has_news:
        return Triage("rerank", "settled" if state.pending and not finished else "news", **common)  # type: ignore[arg-type]
    if state.counting:
        return Triage("count", "counting", **common)  # type: ignore[arg-type]
    changed = (
        new_seen != state.seen
        or tuple(alerted[-MAX_ALERTED:]) != state.alerted
        or new_cursor != state.alert_cursor
    )
    if not changed and seen.advance_to is not None and seen.advance_to > state.seen:
        return Triage("advance", "watermark", **{**common, "seen": seen.advance_to})  # type: ignore[arg-type]
    return Triage("advance" if changed else "idle", "watermark", **common)  # type: ignore[arg-type]


def state_only(exp: Experiment, rule: Rule, state: ExperimentState | None, t: Triage) -> ExperimentPlan:
    """The plan of an experiment that is not ranked this pass (idle, advance, pending).

    An experiment first seen while it waits gets a state that records only ``first_seen``
    (fingerprint :data:`UNRANKED`, watermark at ``first_seen``): the next passes search what
    ended after it (failed runs to announce) and still do the first ranking.
    """

    def plan(new_state: ExperimentState | None) -> ExperimentPlan:
        return ExperimentPlan(
            exp.experiment_id,
            exp.name,
            rule.name,
            t.action,
            t.reason,
            state=new_state,
            alerts=t.alerts,
            stalled=t.stalled,
        )

    if state is None and t.action == "pending" and t.first_seen is not None:
        return plan(
            ExperimentState(
                rule=rule.name,
                fingerprint=UNRANKED,
                top_n=rule.top_n,
                production_candidates=rule.production_candidates,
                seen=max(t.seen, t.first_seen),
                first_seen=t.first_seen,
                alerted=t.alerted,
                alert_cursor=t.alert_cursor,
            )
        )
    if state is None or t.action == "idle":
        return plan(None)
    new_state = replace(
        state,
        seen=t.seen,
        pending=state.pending or t.action == "pending",
        ranked_runs=state.ranked_runs + t.new_ranked,
        unranked_runs=state.unranked_runs + t.new_unranked,
        first_seen=t.first_seen,
        alerted=t.alerted,
        alert_cursor=t.alert_cursor,
    )
    return plan(_if_changed(new_state, state))


def _if_changed(new: ExperimentState, old: ExperimentState | None) -> ExperimentState | None:
    return None if old is not None and new.to_tag() == old.to_tag() else new


# -- finding the board with threshold searches --------------------------------------------


def sample_cutoffs(sample: Iterable[RunRecord], metric: str, ascending: bool, keep: int) -> list[float]:
    """Cutoffs to try, tightest first, from an unordered page of the experiment's runs.

    The r-th best value of the sample has at least r runs at or before it in the whole
    experiment, so the last cutoff (rank ``keep``, or the sample's worst) always finds a full
    board unless runs vanished meanwhile.
    """
    ordered = order(split_ranked(sample, metric)[0], ascending)
    if not ordered:
        return []
    ranks = sorted({min(r, keep, len(ordered)) for r in (*SAMPLE_RANKS, keep)})
    return [ordered[r - 1].value for r in ranks]


@dataclass(frozen=True)
class BoardSearch:
    """What the ranking searches found: the runs at or before ``cutoff`` (all FINISHED runs
    matching the rule when ``cutoff`` is None, ``everything`` then true)."""

    runs: tuple[RunRecord, ...]
    cutoff: float | None
    everything: bool


def board_from_search(found: BoardSearch, rule: Rule, keep: int) -> tuple[list[Candidate], bool] | None:
    """The board prefix a search proves, and whether it is complete; None when the search
    holds fewer than ``top_n`` runs ahead of every unseen run (the caller widens)."""
    candidates, _ = split_ranked(found.runs, rule.metric)
    ordered = order(candidates, rule.ascending)
    if found.everything:
        return ordered[:keep], len(ordered) <= keep
    if found.cutoff is None:
        return None
    limit = sort_key(Candidate("", "", found.cutoff, None), rule.ascending)[0]
    ordered = [c for c in ordered if sort_key(c, rule.ascending)[0] <= limit]
    if len(ordered) < min(keep, rule.top_n):
        return None
    return ordered[:keep], False


def ordered_search_proof(
    rows: Sequence[RunRecord], rule: Rule, cutoff: float, limit: int
) -> BoardSearch | None:
    """What a threshold search ordered best first and cut at ``limit`` rows proves.

    Fewer rows than ``limit``: every run at or before ``cutoff``. Else MLflow stopped at its
    limit: the runs strictly ahead of the last row's value are all there (runs tied with it
    may go on past the limit), so the proof reaches the worst of those. None when no
    rankable run is strictly ahead (the caller searches without a limit).
    """
    raw = rows[-1].metrics.get(rule.metric) if rows else None
    if len(rows) < limit or raw is None or math.isnan(raw):
        return BoardSearch(tuple(rows), cutoff, False)  # MLflow orders NaN and missing last
    last = finite_value(rows[-1], rule.metric)
    if last is None:
        return None  # an infinite value at the limit: leave it to the unlimited search
    ahead = [
        c
        for c in split_ranked(rows, rule.metric)[0]
        if (c.value > last if not rule.ascending else c.value < last)
    ]
    if not ahead:
        return None
    worst = order(ahead, rule.ascending)[-1]
    return BoardSearch(tuple(rows), worst.value, False)


def kept_cutoff(state: ExperimentState | None, rule: Rule, fp: str) -> float | None:
    """The value a re-rank's threshold search starts from: the kept board's last entry."""
    if state is None or state.fingerprint != fp or state.complete or not state.board:
        return None
    return state.board[-1].value


@dataclass(frozen=True)
class Counts:
    """Ranked and unranked runs known for the new state, and the paged count's progress."""

    ranked: int
    unranked: int
    counting: bool
    token: str | None
    upto: int


@dataclass(frozen=True)
class Gate:
    """What the selection statistics change in a ranking's plan.

    ``held``: no ``production_candidate`` (the rule's max_pbo); ``tied``: the runs to carry
    ``tied_with_leader`` (None: not computed this pass, those tags stay as they are);
    ``selection``/``tag``/``summary``: the statistics, the ``podium.selection`` tag to write
    and what the summaries say. The default is a rule without a ``selection`` key.
    """

    held: bool = False
    tied: tuple[str, ...] | None = None
    selection: stats.Selection | None = None
    tag: str | None = None
    summary: SelectionSummary | None = None


def plan_board(
    exp: Experiment,
    rule: Rule,
    fp: str,
    state: ExperimentState | None,
    t: Triage,
    board: Sequence[Candidate],
    complete: bool,
    read: Iterable[RunRecord],
    counts: Counts,
    gate: Gate | None = None,
) -> ExperimentPlan:
    """Tags and state for a new board prefix.

    ``read`` is every run the pass read for this experiment (holders, ranking searches, the
    orphan-tag searches): the tags they carry now are what the plan changes. Runs of the kept
    board that no search returned (deleted, or behind the cutoff now) are planned with the
    tags the last ranking gave them, so a holder that lost only ``model_rank`` is cleaned too.
    A config rule's board becomes the state's ``announced`` digest; an API ranking
    (:data:`ON_DEMAND_RULE`) keeps the rule's.
    """
    exp_id, exp_name = exp.experiment_id, exp.name
    gate = gate or Gate()
    # tied_with_leader is planned only when the statistics were computed this pass; otherwise
    # the tags the last computation wrote stay as they are.
    owned = with_tied if gate.tied is not None else is_podium_run_tag
    current: dict[str, dict[str, str]] = {}
    for run in read:
        current[run.run_id] = podium_tags(run.tags, owned)
    if state is not None:
        for run_id, tags in state.tags_of_holders().items():
            current.setdefault(run_id, tags)
    entries = leaderboard_entries(board, rule.top_n)
    desired = desired_tags(entries, rule.top_n, 0 if gate.held else rule.production_candidates)
    for run_id in gate.tied or ():
        desired[run_id] = {**desired.get(run_id, {}), TIED_WITH_LEADER: TRUE}
    changes = plan(desired, current, owned)
    leaderboard = Leaderboard(
        experiment_id=exp_id,
        experiment_name=exp_name,
        rule=rule.name,
        metric=rule.metric,
        ascending=rule.ascending,
        top_n=rule.top_n,
        production_candidates=rule.production_candidates,
        entries=entries,
        ranked_runs=max(counts.ranked, len(board) if counts.counting else counts.ranked),
        unranked_runs=counts.unranked,
    )
    announces = rule.name != ON_DEMAND_RULE
    event = leaderboard_event(leaderboard, state, against_announced=announces)
    if event is not None and gate.summary is not None:
        event = replace(event, selection=gate.summary)
    new_state = ExperimentState(
        rule=rule.name,
        fingerprint=fp,
        metric=rule.metric,
        ascending=rule.ascending,
        top_n=rule.top_n,
        production_candidates=rule.production_candidates,
        seen=t.seen,
        pending=state.pending if state is not None and t.action == "pending" else False,
        board=tuple(board),
        complete=complete,
        ranked_runs=counts.ranked,
        unranked_runs=counts.unranked,
        counting=counts.counting,
        count_token=counts.token,
        count_upto=counts.upto,
        first_seen=t.first_seen,
        alerted=t.alerted,
        alert_cursor=t.alert_cursor,
        announced=(
            board_digest([e.run_id for e in entries])
            if announces
            else (state.announced if state is not None else None)
        ),
        announced_changes=(
            event.sequence
            if announces and event is not None
            else (state.announced_changes if state is not None else 0)
        ),
        held=gate.held,
        swept=state.swept if state is not None else None,
    )
    action: Action = "full" if t.action == "full" else "rerank"
    return ExperimentPlan(
        exp_id,
        exp_name,
        rule.name,
        action,
        t.reason,
        changes=tuple(changes),
        state=_if_changed(new_state, state),
        event=event,
        board=leaderboard,
        alerts=t.alerts,
        stalled=t.stalled,
        selection=gate.selection,
        selection_tag=gate.tag,
    )


def counts_after_ranking(
    state: ExperimentState | None, fp: str, t: Triage, found: BoardSearch, metric: str
) -> Counts:
    """Counts for the new state: exact when the search held everything, carried on from the
    kept state on a re-rank, else a paged count starts (over runs ended by ``t.seen``)."""
    if found.everything:
        ranked, unranked = split_ranked(found.runs, metric)
        # ``count_upto`` matters only while a paged count runs: a re-rank of an experiment
        # already counted keeps the stored one, so a sweep that changes nothing writes nothing.
        counted = state if state is not None and state.fingerprint == fp and not state.counting else None
        return Counts(len(ranked), unranked, False, None, counted.count_upto if counted else t.seen)
    if state is not None and state.fingerprint == fp:
        return Counts(
            state.ranked_runs + t.new_ranked,
            state.unranked_runs + t.new_unranked,
            state.counting,
            state.count_token,
            state.count_upto,
        )
    return Counts(0, 0, True, None, t.seen)


def counted_page(
    state: ExperimentState, page: Sequence[RunRecord], token: str | None, metric: str
) -> ExperimentState:
    """The state after one page of the paged count (``token``: the next page, None: done)."""
    ranked, unranked = split_ranked(page, metric)
    return replace(
        state,
        ranked_runs=state.ranked_runs + len(ranked),
        unranked_runs=state.unranked_runs + unranked,
        counting=token is not None,
        count_token=token,
    )


def leaderboard_event(
    board: Leaderboard, previous: ExperimentState | None, *, against_announced: bool = True
) -> LeaderboardChanged | None:
    """The change against the last board, or None when the top N is the same; numbered
    after the changes ``previous`` counts.

    ``against_announced`` (a config rule's pass): when the state keeps the digest of what the
    rule last announced, the board is compared with that, so an API ranking under another
    ``top_n`` in between reshapes the tags but posts no summary of its own; entered and left
    are then counted against the kept board's first ``top_n``. Otherwise (an older state, or
    the API's own ranking) against the runs the last ranking tagged.
    """
    new = [e.run_id for e in board.entries]
    if against_announced and previous is not None and previous.announced is not None:
        if previous.announced == board_digest(new):
            return None
        old = [c.run_id for c in previous.board[: board.top_n]]
    else:
        old = [c.run_id for c in previous.holders()] if previous is not None else []
        if old == new and previous is not None and previous.top_n == board.top_n:
            return None
    if not old and not new:
        return None
    return LeaderboardChanged(
        board=board,
        new_leader=bool(new) and (not old or old[0] != new[0]),
        entered=tuple(r for r in new if r not in old),
        left=tuple(r for r in old if r not in new),
        sequence=(previous.announced_changes if previous is not None else 0) + 1,
    )


def align_watermark(
    state: ExperimentState, rows: Sequence[RunRecord], top: int, rule: Rule
) -> ExperimentState:
    """A first ranking's state moved to the batch's common watermark ``top``, unless ``rows``
    (runs of the experiment that ended after its own watermark, searched after the ranking)
    hold one the next pass must see: a run that ended unsuccessfully after the rule first saw
    the experiment (to announce), or a FINISHED run the board's searches cannot have seen (any,
    when they read every run; else one at or before the board's cutoff that is not on it).
    The paged count then covers the runs up to ``top`` too.
    """
    newer = [r for r in rows if (r.end_time or 0) > state.seen]
    cutoff = state.board[-1] if state.board and not state.complete else None
    on_board = {c.run_id for c in state.board}
    for run in newer:
        if run.status in ENDED_UNSUCCESSFULLY:
            if state.first_seen is not None and (run.end_time or 0) >= state.first_seen:
                return state
            continue
        if run.status != FINISHED:
            continue
        if cutoff is None or not state.counting:
            return state
        value = finite_value(run, rule.metric)
        if value is None or run.run_id in on_board:
            continue
        candidate = Candidate(run.run_id, run.run_name, value, run.end_time)
        if sort_key(candidate, rule.ascending)[0] <= sort_key(cutoff, rule.ascending)[0]:
            return state
    return replace(state, seen=top, count_upto=top if state.counting else state.count_upto)


def by_experiment(runs: Iterable[RunRecord]) -> dict[str, tuple[RunRecord, ...]]:
    """Rows of a batch search grouped by experiment id (the last row of a run wins)."""
    grouped: dict[str, dict[str, RunRecord]] = {}
    for run in runs:
        grouped.setdefault(run.experiment_id, {})[run.run_id] = run
    return {exp_id: tuple(rows.values()) for exp_id, rows in grouped.items()}


def redundant_advance(ended: Sequence[RunRecord], states: Mapping[str, ExperimentState | None]) -> int | None:
    """When a batch search returned at least :data:`REDUNDANT_LIMIT` runs their experiments'
    watermarks already cover, the largest end time it saw (every watermark moves there)."""
    redundant = 0
    for run in ended:
        state = states.get(run.experiment_id)
        if state is not None and (run.end_time or 0) <= state.seen:
            redundant += 1
    if redundant < REDUNDANT_LIMIT:
        return None
    return max(run.end_time or 0 for run in ended)


# -- one batch: what the pass read becomes every experiment's plan -------------------------


def drops_filter(rule: Rule) -> bool:
    """Whether the batch search leaves the rule's filter out: the filter says which runs are
    ranked, but failed runs are announced whatever it says, so with failed alerts FINISHED
    news is searched again with the filter (only when there is news)."""
    return bool(rule.filter) and "failed" in rule.alerts


def is_tracked(state: ExperimentState | None, fp: str) -> bool:
    """Whether the batch search covers an experiment's runs: the rule ranks it (or first saw
    it), or it has failed runs still to announce (its cursor survives a rule change)."""
    return state is not None and (state.fingerprint in (fp, UNRANKED) or state.alert_cursor is not None)


def has_news(state: ExperimentState, runs: Iterable[RunRecord]) -> bool:
    """A FINISHED run among ``runs`` ended after the state's watermark."""
    return any(r.status == FINISHED and (r.end_time or 0) > state.seen for r in runs)


def moves_state(state: ExperimentState, runs: Iterable[RunRecord]) -> bool:
    """A run among ``runs``, FINISHED or not, ended after the state's watermark: the pass
    writes the state (a ranking, a failure announced, the watermark moved)."""
    return any((r.end_time or 0) > state.seen for r in runs)


def stalled_unannounced(
    rule: Rule, state: ExperimentState | None, running: Iterable[RunRecord], now_ms: int
) -> bool:
    """A stalled run among ``running`` that the state has not announced and :func:`triage`
    would: under a rule that announces stalled runs, stalled since the rule first saw the
    experiment (one that stalled before is counted, never announced)."""
    if "stalled" not in rule.alerts or state is None:
        return False
    first_seen = state.first_seen if state.first_seen is not None else now_ms
    minutes = rule.stalled_after_minutes
    return any(
        is_stalled(r, now_ms, minutes)
        and r.run_id not in state.alerted
        and (since := stalled_since(r, minutes)) is not None
        and since >= first_seen
        for r in running
    )


def with_rule_filter(
    ended: Sequence[RunRecord], matching: Sequence[RunRecord]
) -> tuple[list[RunRecord], dict[str, int]]:
    """The batch search's rows with its FINISHED runs replaced by ``matching`` (the same
    news searched with the rule's filter), and per experiment the latest end time of the
    FINISHED runs the filter leaves out: they still move the watermark (see
    :attr:`Observed.filtered_out`)."""
    matched = {r.run_id for r in matching}
    filtered_out: dict[str, int] = {}
    for r in ended:
        if r.status == FINISHED and r.run_id not in matched:
            filtered_out[r.experiment_id] = max(filtered_out.get(r.experiment_id, 0), r.end_time or 0)
    return [r for r in ended if r.status != FINISHED] + list(matching), filtered_out


def running_search_ids(
    rule: Rule,
    fp: str,
    states: Mapping[str, ExperimentState | None],
    ended: Mapping[str, Sequence[RunRecord]],
    stall_check: bool,
) -> list[str]:
    """The experiments whose RUNNING runs the batch searches: all of them to find stalled
    runs (when the pass looks for them), else, for an ``experiment_finished`` rule, those it
    may rank this pass (the others' running runs decide nothing), so a re-rank of one
    experiment searches one experiment's running runs however many are watched."""
    if stall_check and "stalled" in rule.alerts:
        return list(states)
    if rule.trigger != "experiment_finished":
        return []
    return [
        exp_id
        for exp_id, s in states.items()
        if s is None or s.fingerprint != fp or s.pending or has_news(s, ended.get(exp_id, ()))
    ]


def orphan_tag_keys(rule: Rule, states: Iterable[ExperimentState | None]) -> list[str]:
    """The tags the orphan-tag searches look for (one search each): ``top_{N}`` of the rule
    and of every kept board, and ``production_candidate``."""
    keys = {top_tag(rule.top_n), PRODUCTION_CANDIDATE}
    keys |= {top_tag(s.top_n) for s in states if s is not None}
    return sorted(keys)


@dataclass(frozen=True)
class BoardFound:
    """What a ranking's searches proved: the runs they returned, the board prefix, and
    whether that prefix holds every ranked run."""

    search: BoardSearch
    board: tuple[Candidate, ...]
    complete: bool


@dataclass(frozen=True)
class CountPage:
    """One page of the paged count and the token of the next (None: the count is done)."""

    runs: tuple[RunRecord, ...]
    token: str | None


@dataclass(frozen=True)
class ExperimentRead:
    """What MLflow holds for one experiment of a batch, as the pass read it.

    ``observed`` is the batch searches' answer (read for every experiment). The rest is read
    when :func:`decide_batch` asks for it (None: not read): ``orphans``, the
    ``top_{N}``/``production_candidate`` holders of an experiment to rank that the sweep did
    not search; ``board``, the ranking searches' answer; ``count_pages``, the paged count's
    pages read this pass; ``since_ranking``, the runs that ended after a first ranking's
    watermark (one search over the batch's first rankings).
    """

    experiment: Experiment
    state: ExperimentState | None
    observed: Observed
    orphans: tuple[RunRecord, ...] | None = None
    board: BoardFound | None = None
    count_pages: tuple[CountPage, ...] | None = None
    since_ranking: tuple[RunRecord, ...] | None = None
    # The experiment's podium.selection tag as listed (rules with a selection key).
    selection_tag: str | None = None
    # The selection statistics' input, read when decide_batch asks for it.
    selection_input: SelectionInput | None = None

    @property
    def experiment_id(self) -> str:
        return self.experiment.experiment_id


@dataclass(frozen=True)
class SelectionInput:
    """What the selection statistics read for one experiment: every ranked run in board order
    with its per-fold values, and the runs that carry ``tied_with_leader`` now."""

    board: tuple[stats.BoardRun, ...]
    tied_holders: tuple[RunRecord, ...]


@dataclass(frozen=True)
class BoardRequest:
    """Find an experiment's board: from ``cutoff`` (a re-rank's kept cutoff) or, when None,
    from cutoffs estimated on a sample; ``keep`` runs at most."""

    experiment_id: str
    cutoff: float | None
    keep: int


@dataclass(frozen=True)
class CountRequest:
    """Go on with an experiment's paged count over the runs ended by ``upto``, from ``token``."""

    experiment_id: str
    upto: int
    token: str | None


@dataclass(frozen=True)
class ToRead:
    """What :func:`decide_batch` must see before it can plan: the ``model_rank`` holders of
    ``holders`` (experiments to rank when the pass made no holder check), the orphan-tag
    holders of ``orphans`` (experiment ids), the ``boards``, the ``counts``, for the first
    rankings ``firsts`` the runs that ended after ``since`` (their common watermark), and the
    per-fold values of the ``selections``."""

    holders: tuple[str, ...] = ()
    orphans: tuple[str, ...] = ()
    boards: tuple[BoardRequest, ...] = ()
    counts: tuple[CountRequest, ...] = ()
    firsts: tuple[str, ...] = ()
    since: int = 0
    # Experiments whose selection statistics are computed this pass (their board read first).
    selections: tuple[str, ...] = ()


@dataclass(frozen=True)
class BatchDecision:
    """Every experiment's triage and, once everything needed was read (``to_read`` None),
    its plan, in batch order; ``counts`` are the ranked experiments' counts."""

    triaged: Mapping[str, Triage]
    to_read: ToRead | None = None
    plans: tuple[ExperimentPlan, ...] = ()
    counts: Mapping[str, Counts] = field(default_factory=dict)


def triage_for_pass(
    rule: Rule,
    fp: str,
    read: ExperimentRead,
    now_ms: int,
    *,
    force_rank: bool = False,
    sweep: bool = False,
    admitted: bool = True,
) -> Triage:
    """:func:`triage`, then what the pass asks on top: ``force_rank`` (the API) ranks every
    experiment; ``sweep`` re-ranks every idle one the rule ranks from its kept cutoff, since
    a run whose end time is older than the watermark when it appears (another client's clock,
    a slow commit) is in no ended-after search, while the threshold search finds it. A first
    ranking not ``admitted`` this pass waits (``pending``, reason ``deferred``)."""
    t = triage(rule, fp, read.experiment, read.state, read.observed, now_ms)
    ranked_here = read.state is not None and read.state.fingerprint == fp
    if force_rank and t.action not in RANKING:
        return replace(t, action="rerank" if ranked_here else "full", reason="requested")
    if sweep and t.action in ("idle", "advance") and ranked_here:
        return replace(t, action="rerank", reason="sweep")
    if t.action in ("idle", "advance") and ranked_here and selection_outdated(rule, read):
        return replace(t, action="rerank", reason="selection")
    if t.action == "full" and not admitted and not force_rank:
        return replace(t, action="pending", reason="deferred")
    return t


def selection_outdated(rule: Rule, read: ExperimentRead) -> bool:
    """The stored statistics or gate do not answer the rule's ``selection`` key (added,
    changed or removed since the last ranking): the experiment is ranked again."""
    held = read.state is not None and read.state.held
    if rule.selection is None:
        return held
    stored = stats.stored(read.selection_tag)
    if stored is None or not stats.same_settings(stored, rule.metric, rule.selection):
        return True
    return held != (stats.gate_reason_of_tag(stored, rule.selection.max_pbo) is not None)


def computes_selection(rule: Rule, read: ExperimentRead, t: Triage) -> bool:
    """The statistics are computed when the board may have changed: every ranking but the
    sweep's re-rank of an idle experiment whose stored statistics still answer the rule."""
    if rule.selection is None or t.action not in RANKING:
        return False
    return t.reason != "sweep" or selection_outdated(rule, read)


def record_sweep(
    plan: ExperimentPlan, state: ExperimentState | None, swept: bool, now_ms: int
) -> ExperimentPlan:
    """A plan whose state keeps that this pass swept the experiment: a first ranking, or a
    re-rank of an experiment the sweep took in (its tag holders and its board from the kept
    cutoff were read)."""
    if plan.action == "full" or (plan.action == "rerank" and swept):
        base = plan.state if plan.state is not None else state
        if base is not None:
            return replace(plan, state=replace(base, swept=now_ms))
    return plan


def defer_reranks(
    triaged: Mapping[str, Triage], reads: Sequence[ExperimentRead], limit: int
) -> dict[str, Triage]:
    """At most ``limit`` re-ranks, those whose new runs ended last first, then (a sweep's
    re-ranks, with no new runs) those swept longest ago, then batch order; the others wait
    (``pending``, reason ``deferred``) with nothing written, so a later pass finds them again. A pass after a night of sweeps over a universe would otherwise read the
    boards, holders and tags of every experiment before it writes the first plan."""
    reranks = [r for r in reads if triaged[r.experiment_id].action == "rerank"]
    if len(reranks) <= limit:
        return dict(triaged)

    def latest(read: ExperimentRead) -> int:
        seen = read.state.seen if read.state is not None else 0
        return max((end for run in read.observed.ended if (end := run.end_time or 0) > seen), default=0)

    def swept(read: ExperimentRead) -> int:
        return (read.state.swept or 0) if read.state is not None else 0

    kept = {r.experiment_id for r in sorted(reranks, key=lambda r: (-latest(r), swept(r)))[:limit]}
    return {
        i: replace(t, action="pending", reason="deferred") if t.action == "rerank" and i not in kept else t
        for i, t in triaged.items()
    }


def decide_batch(rule: Rule, reads: Sequence[ExperimentRead], agenda: Agenda) -> BatchDecision:
    """The plans of one rule's batch from what the pass read, or what it must read first.

    Pure: the engine reads what ``to_read`` asks and calls this again with the answers, until
    it returns the plans. A ranking needs its holders (read by the batch's holder check, or
    for it alone), its board (from the kept cutoff on a re-rank, from scratch on a first
    ranking or a rule change) and the orphan-tag holders the sweep did not read; a paged count
    needs its next pages. The experiments ranked for the first time then share one watermark
    (see :func:`align_first_rankings`), except on the agenda's ``force_rank``. The agenda's
    ``sweep``: the experiments the sweep takes in; ``admit`` (None: all): the experiments a
    first ranking may start for, the others wait with nothing written; ``reranks`` (None: no
    bound) the re-ranks it may make (see :func:`defer_reranks`). A swept or first-ranked
    experiment's state keeps the agenda's time as its last sweep.
    """
    fp = fingerprint(rule.metric, rule.ascending, rule.filter)
    now_ms, force_rank, sweep, admit = agenda.now_ms, agenda.force_rank, agenda.sweep, agenda.admit
    reranks = agenda.reranks
    triaged = {
        r.experiment_id: triage_for_pass(
            rule,
            fp,
            r,
            now_ms,
            force_rank=force_rank,
            sweep=r.experiment_id in sweep,
            admitted=admit is None or r.experiment_id in admit,
        )
        for r in reads
    }
    if reranks is not None and not force_rank:
        triaged = defer_reranks(triaged, reads, reranks)
    ranking = [r for r in reads if triaged[r.experiment_id].action in RANKING]
    counting = [r for r in reads if triaged[r.experiment_id].action == "count" and r.state is not None]
    need = ToRead(
        holders=tuple(r.experiment_id for r in ranking if r.observed.holders is None),
        orphans=tuple(
            r.experiment_id
            for r in ranking
            if r.orphans is None and not (r.experiment_id in sweep and is_tracked(r.state, fp))
        ),
        boards=tuple(
            BoardRequest(
                r.experiment_id,
                kept_cutoff(r.state, rule, fp) if triaged[r.experiment_id].action == "rerank" else None,
                board_size(rule.top_n),
            )
            for r in ranking
            if r.board is None
        ),
        counts=tuple(
            CountRequest(r.experiment_id, r.state.count_upto, r.state.count_token)
            for r in counting
            if r.state is not None and r.count_pages is None
        ),
    )
    if need == ToRead():
        need = ToRead(
            selections=tuple(
                r.experiment_id
                for r in ranking
                if r.selection_input is None and computes_selection(rule, r, triaged[r.experiment_id])
            )
        )
    if need != ToRead():
        return BatchDecision(triaged, to_read=need)

    plans: list[ExperimentPlan] = []
    counts: dict[str, Counts] = {}
    for r in reads:
        t = triaged[r.experiment_id]
        if t.action in RANKING:
            plan, counts[r.experiment_id] = rank_plan(rule, fp, r, t, now_ms)
        elif t.action == "count" and r.state is not None:
            plan = count_plan(rule, r, r.state, t)
        elif t.reason == "deferred":
            plan = ExperimentPlan(r.experiment_id, r.experiment.name, rule.name, t.action, t.reason)
        else:
            plan = state_only(r.experiment, rule, r.state, t)
        plans.append(plan)
    if not force_rank:
        by_id = {r.experiment_id: r for r in reads}
        firsts = [p for p in plans if p.action == "full" and p.state is not None]
        if any(by_id[p.experiment_id].since_ranking is None for p in firsts):
            since = min(p.state.seen for p in firsts if p.state is not None)
            return BatchDecision(
                triaged, to_read=ToRead(firsts=tuple(p.experiment_id for p in firsts), since=since)
            )
        plans = align_first_rankings(rule, plans, by_id)
    states = {r.experiment_id: r.state for r in reads}
    plans = [record_sweep(p, states[p.experiment_id], p.experiment_id in sweep, now_ms) for p in plans]
    return BatchDecision(triaged, plans=tuple(plans), counts=counts)


def rank_plan(
    rule: Rule, fp: str, read: ExperimentRead, t: Triage, now_ms: int = 0
) -> tuple[ExperimentPlan, Counts]:
    """The plan of an experiment ranked this pass, from its board searches' answer."""
    assert read.board is not None
    found = read.board.search
    if t.action == "full":
        # Every run that ended before the latest end time these searches saw was visible to
        # them: the watermark moves there (the paged count covers the runs up to it). A
        # re-rank keeps the batch search's watermark, so nothing that ended after that search
        # is skipped (failed runs to announce, runs to count).
        t = replace(t, seen=max([t.seen, *(r.end_time or 0 for r in found.runs)]))
    counts = counts_after_ranking(read.state, fp, t, found, rule.metric)
    orphans = read.orphans if read.orphans is not None else (read.observed.orphans or ())
    seen = [*(read.observed.holders or ()), *orphans, *found.runs]
    board = read.board
    gate = selection_gate(rule, read, board.board, now_ms)
    if read.selection_input is not None:
        seen.extend(read.selection_input.tied_holders)
    return plan_board(
        read.experiment, rule, fp, read.state, t, board.board, board.complete, seen, counts, gate
    ), counts


def selection_gate(rule: Rule, read: ExperimentRead, board: Sequence[Candidate], now_ms: int) -> Gate:
    """The statistics over the runs read this pass, or, when they were not read (a sweep of an
    unchanged board), the last ranking's gate with the tied tags left as they are."""
    config = rule.selection
    if config is None:
        return Gate()
    leader = board[0].run_id if board else None
    if read.selection_input is None:
        stored = stats.stored(read.selection_tag)
        held = stats.gate_reason_of_tag(stored, config.max_pbo) is not None
        return Gate(held=held)
    selection = stats.compute(
        read.selection_input.board,
        higher_is_better=not rule.ascending,
        blocks=config.blocks,
        alpha=config.alpha,
    )
    summary = stats.summary(selection, config.max_pbo, leader)
    tag = stats.selection_json(
        selection, metric=rule.metric, fold_metric=config.fold_metric, computed_at=iso_ms(now_ms)
    )
    return Gate(
        held=summary.held_back is not None,
        tied=selection.tied,
        selection=selection,
        tag=json.dumps(tag, separators=(",", ":")),
        summary=summary,
    )


def iso_ms(ms: int) -> str:
    """ISO-8601 UTC to the second of a time in ms since the epoch."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def count_plan(rule: Rule, read: ExperimentRead, state: ExperimentState, t: Triage) -> ExperimentPlan:
    """The plan of an experiment whose paged count goes on: the pages read this pass added."""
    counted = state_only(read.experiment, rule, state, t).state or state
    for page in read.count_pages or ():
        counted = counted_page(counted, page.runs, page.token, rule.metric)
    return ExperimentPlan(
        read.experiment_id,
        read.experiment.name,
        rule.name,
        "count",
        t.reason,
        state=counted,
        alerts=t.alerts,
        stalled=t.stalled,
    )


def align_first_rankings(
    rule: Rule, plans: Sequence[ExperimentPlan], reads: Mapping[str, ExperimentRead]
) -> list[ExperimentPlan]:
    """Give the experiments ranked for the first time one watermark: the latest end time of
    one search over all of them (``since_ranking``), so the next batch search returns nothing
    old. An experiment keeps its own watermark when that search shows it a run to act on
    (see :func:`align_watermark`): the next pass handles it."""
    firsts = {p.experiment_id for p in plans if p.action == "full" and p.state is not None}
    if not firsts:
        return list(plans)
    top = max(
        [
            *(r.end_time or 0 for i in firsts for r in reads[i].since_ranking or ()),
            *(p.state.seen for p in plans if p.experiment_id in firsts and p.state is not None),
        ]
    )
    return [
        replace(p, state=align_watermark(p.state, reads[p.experiment_id].since_ranking or (), top, rule))
        if p.experiment_id in firsts and p.state is not None
        else p
        for p in plans
    ]
