"""One experiment's plan from its triage and what its searches found: run tags and state
for a new board, a state-only plan, a count page, the first rankings' common watermark."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from watcher import ranking
from watcher import selection as stats
from watcher.model import (
    ON_DEMAND_RULE,
    TIED_WITH_LEADER,
    TRUE,
    Leaderboard,
    LeaderboardChanged,
    Rule,
    RunRecord,
    iso_time,
)
from watcher.planner.alerts import ENDED_UNSUCCESSFULLY
from watcher.planner.triage import selection_outdated
from watcher.planner.types import (
    RANKING,
    Action,
    BoardSearch,
    Counts,
    Experiment,
    ExperimentPlan,
    ExperimentRead,
    Gate,
    Triage,
)
from watcher.ranking import (
    FINISHED,
    Candidate,
    desired_tags,
    finite_value,
    is_podium_run_tag,
    leaderboard_entries,
    podium_tags,
    sort_key,
    split_ranked,
    with_tied,
)
from watcher.state import UNRANKED, ExperimentState, board_digest


def state_only(exp: Experiment, rule: Rule, state: ExperimentState | None, t: Triage) -> ExperimentPlan:
    """The plan of an experiment that is not ranked this pass (idle, advance, pending).

    An experiment first seen while it waits gets a state that records only ``first_seen``
    (fingerprint :data:`UNRANKED`, watermark at ``first_seen``): the next passes search what
    ended after it (failed runs to announce) and still do the first ranking.
    """

    def with_state(new_state: ExperimentState | None) -> ExperimentPlan:
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
        return with_state(
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
        return with_state(None)
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
    return with_state(_if_changed(new_state, state))


def _if_changed(new: ExperimentState, old: ExperimentState | None) -> ExperimentState | None:
    return None if old is not None and new.to_tag() == old.to_tag() else new


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
    changes = ranking.plan(desired, current, owned)
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


def computes_selection(rule: Rule, read: ExperimentRead, t: Triage) -> bool:
    """The statistics are computed when the board may have changed: every ranking but the
    sweep's re-rank of an idle experiment whose stored statistics still answer the rule."""
    if rule.selection is None or t.action not in RANKING:
        return False
    return t.reason != "sweep" or selection_outdated(rule, read)


def record_sweep(
    decided: ExperimentPlan, state: ExperimentState | None, swept: bool, now_ms: int
) -> ExperimentPlan:
    """A plan whose state keeps that this pass swept the experiment: a first ranking, or a
    re-rank of an experiment the sweep took in (its tag holders and its board from the kept
    cutoff were read)."""
    if decided.action == "full" or (decided.action == "rerank" and swept):
        base = decided.state if decided.state is not None else state
        if base is not None:
            return replace(decided, state=replace(base, swept=now_ms))
    return decided


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
        held = stats.gate_reason_of_tag(stored, config.max_pbo, config.min_dsr) is not None
        return Gate(held=held)
    selection = stats.compute(
        read.selection_input.board,
        higher_is_better=not rule.ascending,
        blocks=config.blocks,
        alpha=config.alpha,
        sharpe_metric=config.sharpe_metric,
    )
    summary = stats.summary(selection, config.max_pbo, leader, config.min_dsr)
    tag = stats.selection_json(
        selection, metric=rule.metric, fold_metric=config.fold_metric, computed_at=iso_time(now_ms / 1000)
    )
    return Gate(
        held=summary.held_back is not None,
        tied=selection.tied,
        selection=selection,
        tag=json.dumps(tag, separators=(",", ":")),
        summary=summary,
    )


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
