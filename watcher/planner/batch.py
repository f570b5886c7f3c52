"""One rule's batch: what the pass read becomes every experiment's plan, or what it must
read first (:func:`decide_batch`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from watcher.model import Rule
from watcher.planner.board import kept_cutoff
from watcher.planner.plans import (
    align_first_rankings,
    computes_selection,
    count_plan,
    rank_plan,
    record_sweep,
    state_only,
)
from watcher.planner.triage import drops_filter, is_tracked, redundant_advance, triage_for_pass
from watcher.planner.types import (
    RANKING,
    Agenda,
    BatchDecision,
    BoardRequest,
    CountRequest,
    Counts,
    ExperimentPlan,
    ExperimentRead,
    ToRead,
    Triage,
)
from watcher.state import board_size, fingerprint


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
    advance_to = redundant_advance(
        [run for r in reads for run in r.observed.ended], {r.experiment_id: r.state for r in reads}
    )
    if advance_to is not None:
        reads = [
            r
            if r.observed.advance_to is not None
            else replace(r, observed=replace(r.observed, advance_to=advance_to))
            for r in reads
        ]
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
    first = read_first(rule, fp, reads, triaged)
    if first is not None:
        return BatchDecision(triaged, to_read=first)
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
            decided, counts[r.experiment_id] = rank_plan(rule, fp, r, t, now_ms)
        elif t.action == "count" and r.state is not None:
            decided = count_plan(rule, r, r.state, t)
        elif t.reason == "deferred":
            decided = ExperimentPlan(r.experiment_id, r.experiment.name, rule.name, t.action, t.reason)
        else:
            decided = state_only(r.experiment, rule, r.state, t)
        plans.append(decided)
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


def read_first(
    rule: Rule, fp: str, reads: Sequence[ExperimentRead], triaged: Mapping[str, Triage]
) -> ToRead | None:
    """What the batch's triage rests on and was not read yet, one kind at a time:

    - ``afresh``: an experiment whose tags came from the kept listing and whose plan writes
      its state (a run ended after its watermark, finished or not; a stalled run to
      announce): another replica may have moved the state, or someone deleted it by hand;
    - ``filtered``: with the rule's filter left out of the batch search (see
      :func:`drops_filter`), the FINISHED news searched again with it;
    - ``running``: the RUNNING runs of the experiments an ``experiment_finished`` rule may
      rank, so a re-rank of one experiment searches one experiment's running runs however
      many are watched.
    """
    afresh = tuple(
        r.experiment_id
        for r in reads
        if r.from_listing
        and (triaged[r.experiment_id].ended_since or triaged[r.experiment_id].stalls_to_announce)
    )
    if afresh:
        return ToRead(afresh=afresh)
    if drops_filter(rule) and not all(r.filtered for r in reads):
        news = [
            r
            for r in reads
            if r.state is not None
            and is_tracked(r.state, fp)
            and triaged[r.experiment_id].new_ranked + triaged[r.experiment_id].new_unranked > 0
        ]
        if news:
            since = min(r.state.seen for r in news if r.state is not None)
            return ToRead(filtered=tuple(r.experiment_id for r in news), filtered_since=since)
    running = tuple(
        r.experiment_id
        for r in reads
        if r.observed.running is None and triaged[r.experiment_id].waits_for_running
    )
    return ToRead(running=running) if running else None
