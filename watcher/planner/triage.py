"""Triage: what one experiment needs this pass, from its kept state and the batch
searches' rows, before any ranking search; and the pure facts about the batch search the
triage rests on (which experiments it covers, the rule's filter, runs read again)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from watcher import selection as stats
from watcher.model import Rule, RunRecord
from watcher.planner.alerts import alerts_due
from watcher.planner.types import RANKING, Experiment, ExperimentRead, Observed, Triage
from watcher.ranking import FINISHED, finite_value, podium_tags, split_ranked
from watcher.state import UNRANKED, ExperimentState

# Runs a batch search may return again (their watermark already covers them) before the
# lagging experiments' watermarks are moved up, at the cost of one state write each.
REDUNDANT_LIMIT = 500


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

    ``seen.holders`` and ``seen.orphans``, when read, must carry exactly the tags the kept
    board says. The alerts due are :func:`~watcher.planner.alerts.alerts_due`'s; the watermark
    and the counts only take runs that ended after the watermark.
    """
    watermark = state.seen if state else 0
    fresh = [r for r in seen.ended if (r.end_time or 0) > watermark]
    finished = [r for r in fresh if r.status == FINISHED]
    ranked, unranked = split_ranked(finished, rule.metric)
    new_seen = max([watermark, seen.filtered_out, *(r.end_time or 0 for r in fresh)])
    first_seen = state.first_seen if state is not None and state.first_seen is not None else now_ms
    ranked_before = state is not None and state.fingerprint != UNRANKED
    due = alerts_due(rule, experiment, state, seen, now_ms, first_seen)
    base = Triage(
        "idle",
        "watermark",
        seen=new_seen,
        new_ranked=len(ranked),
        new_unranked=unranked,
        alerts=due.alerts,
        alerted=due.alerted,
        stalled=due.stalled,
        old_alerts_skipped=due.skipped,
        alerts_held=due.held,
        alerts_lost=due.lost,
        first_seen=first_seen,
        alert_cursor=due.cursor,
        ended_since=bool(fresh) or seen.filtered_out > watermark,
        stalls_to_announce=due.stalls_to_announce,
        waits_for_running=rule.trigger == "experiment_finished"
        and (state is None or state.fingerprint != fp or bool(finished) or state.pending),
    )

    wait = rule.trigger == "experiment_finished" and bool(due.still_running)
    if not ranked_before or state is None or state.fingerprint != fp:
        return replace(
            base, action="pending" if wait else "full", reason="rule" if ranked_before else "first"
        )
    if seen.holders is not None and not holders_agree(state, seen.holders, rule.metric):
        return replace(base, action="rerank", reason="holders")
    if seen.orphans is not None and not orphans_agree(state, seen.orphans):
        return replace(base, action="rerank", reason="orphans")
    if state.top_n != rule.top_n or state.production_candidates != rule.production_candidates:
        return replace(base, action="rerank", reason="reshaped")
    news = bool(finished) or state.pending
    if news and wait:
        return replace(base, action="pending", reason="news")
    if news:
        return replace(base, action="rerank", reason="settled" if state.pending and not finished else "news")
    if state.counting:
        return replace(base, action="count", reason="counting")
    changed = new_seen != state.seen or due.alerted != state.alerted or due.cursor != state.alert_cursor
    if not changed and seen.advance_to is not None and seen.advance_to > state.seen:
        return replace(base, action="advance", seen=seen.advance_to)
    return replace(base, action="advance" if changed else "idle")


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
    return held != (
        stats.gate_reason_of_tag(stored, rule.selection.max_pbo, rule.selection.min_dsr) is not None
    )


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


def drops_filter(rule: Rule) -> bool:
    """Whether the batch search leaves the rule's filter out: the filter says which runs are
    ranked, but failed runs are announced whatever it says, so with failed alerts FINISHED
    news is searched again with the filter (only when there is news)."""
    return bool(rule.filter) and "failed" in rule.alerts


def is_tracked(state: ExperimentState | None, fp: str) -> bool:
    """Whether the batch search covers an experiment's runs: the rule ranks it (or first saw
    it), or it has failed runs still to announce (its cursor survives a rule change)."""
    return state is not None and (state.fingerprint in (fp, UNRANKED) or state.alert_cursor is not None)


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
