"""The pass's reads: one rule's batch of experiments gathered, decided, and what the decision
asks for read, until the decision is the batch's plans.

Nothing here decides and nothing here writes. What the pass does (whose holders it reads, what
it sweeps, which rules look for stalled runs, where each search starts) comes in one
:class:`~watcher.planner.Agenda`. :meth:`PassReader.gather` reads, per rule and batch of
experiments, what the agenda says: the ended-after-watermark search (no status filter: FAILED
runs are split out in pure code), the holder check (``tags.model_rank LIKE '%'``), the
RUNNING runs when the rule looks for stalled ones, the orphan-tag holders of the experiments
swept. :func:`watcher.planner.decide_batch` decides from those rows and asks for what else it
must see: the experiments to read afresh (their tags came from the kept listing and their
plan writes a state), the news searched again with the rule's filter, the RUNNING runs an
``experiment_finished`` rule waits for, and, for each experiment it ranks, the threshold
searches that find the board without a scan and the orphan-tag searches; the paged count's
next pages; one search over the first rankings. :meth:`PassReader.read_more` reads exactly
that. What the reads leave for the next pass goes in one :class:`PassScratch`, a local value
of the pass. The plans go to the one writer, through :mod:`watcher.apply`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import structlog

from watcher.lister import ListingReader
from watcher.mlflow_io import EXPERIMENT_BATCH
from watcher.model import TIED_WITH_LEADER, Rule, RunRecord, WatchedExperiment
from watcher.outbox import webhook_room
from watcher.planner import (
    MAX_FAILED_WAITING,
    Agenda,
    BatchDecision,
    Experiment,
    ExperimentPlan,
    ExperimentRead,
    Observed,
    SelectionInput,
    ToRead,
    by_experiment,
    decide_batch,
    drops_filter,
    is_tracked,
    with_rule_filter,
)
from watcher.schedule import first_rankings
from watcher.searches import FINISHED_FILTER, RUNNING_FILTER, PassScratch, Searches, and_filters
from watcher.selection import SELECTION_TAG
from watcher.settings import WatcherSettings
from watcher.state import MAX_ALERTED, ExperimentState, fingerprint, state_of

log = structlog.get_logger("watcher")


def tracked_states(fp: str, states: Mapping[str, ExperimentState | None]) -> dict[str, ExperimentState]:
    """The states the batch search covers (see :func:`is_tracked`), by experiment id."""
    return {i: s for i, s in states.items() if s is not None and is_tracked(s, fp)}


@dataclass
class PassReader(Searches):
    """Gathers what MLflow holds for a batch, has :func:`decide_batch` plan it, and reads what
    the decision asks for; never writes."""

    def plan_pass(
        self,
        settings: WatcherSettings,
        watched: Sequence[WatchedExperiment],
        agenda: Agenda,
        scratch: PassScratch | None = None,
        listing: ListingReader | None = None,
    ) -> list[ExperimentPlan]:
        """Every rule's batches, as the ``agenda`` says; the agenda's ``reranks`` bound the
        re-ranks of the whole pass. ``listing`` reads afresh what the decision asks for (the
        agenda says the tags came from the kept listing); ``scratch`` gets what the reads
        leave for the schedule."""
        scratch = scratch if scratch is not None else PassScratch()
        by_rule: dict[str, list[WatchedExperiment]] = defaultdict(list)
        for exp in watched:
            assert exp.rule is not None
            by_rule[exp.rule.name].append(exp)
        plans: list[ExperimentPlan] = []
        for rule in settings.rules:
            exps = by_rule.get(rule.name, [])
            for start in range(0, len(exps), EXPERIMENT_BATCH):
                batch_plans = self.plan_batch(
                    rule, exps[start : start + EXPERIMENT_BATCH], agenda, scratch, listing
                )
                plans.extend(batch_plans)
                if agenda.reranks is not None:
                    left = max(0, agenda.reranks - sum(p.action == "rerank" for p in batch_plans))
                    agenda = replace(agenda, reranks=left)
        return plans

    def latest_of_first_rankings(
        self, settings: WatcherSettings, watched: Sequence[WatchedExperiment]
    ) -> Mapping[str, int] | None:
        """The latest end time of the first rankings due, rule by rule, when there are more
        than a pass may start (see :func:`watcher.schedule.admitted`); None when they all fit."""
        limit = settings.max_rankings_per_pass
        firsts = first_rankings(watched)
        if len(firsts) <= limit:
            return None
        latest: dict[str, int] = {}
        for rule in settings.rules:
            ids = [e.experiment_id for e in firsts if e.rule is not None and e.rule.name == rule.name]
            latest.update(self.latest_ends(rule, ids, limit))
        return latest

    def plan_batch(
        self,
        rule: Rule,
        exps: Sequence[WatchedExperiment],
        agenda: Agenda,
        scratch: PassScratch | None = None,
        listing: ListingReader | None = None,
    ) -> list[ExperimentPlan]:
        """Plans for one rule's batch, as the ``agenda`` says (see :func:`decide_batch`): its
        sweep searches the ``top_{N}``/``production_candidate`` holders of the experiments it
        takes in, not only of those re-ranked, and re-ranks each idle one from its kept cutoff
        (one threshold search each); its holder checks say whose holders the batch search
        reads (the experiments ranked and not among them have theirs read first)."""
        scratch = scratch if scratch is not None else PassScratch()
        reads = self.gather(rule, exps, agenda, scratch)
        decision = decide_batch(rule, reads, agenda)
        while decision.to_read is not None:
            reads = self.read_more(rule, reads, decision.to_read, agenda, scratch, listing)
            decision = decide_batch(rule, reads, agenda)
        log_decision(rule, reads, decision)
        return list(decision.plans)

    def gather(
        self, rule: Rule, exps: Sequence[WatchedExperiment], agenda: Agenda, scratch: PassScratch
    ) -> list[ExperimentRead]:
        """The batch searches: what MLflow holds for every experiment of the batch: the runs
        ended after the watermarks (from the agenda's floors), the holders of those the
        agenda's holder checks take in, the RUNNING runs when the rule looks for stalled ones
        this pass, and the orphan-tag holders of those the agenda sweeps."""
        fp = fingerprint(rule.metric, rule.ascending, rule.filter)
        states = {e.experiment_id: state_of(e.tags) for e in exps}
        ended = by_experiment(self._ended(rule, fp, states, agenda, scratch))
        ids = list(states)
        checked = [i for i in ids if i in agenda.holder_checks]
        holders = self._holders(checked) if checked else {}
        stall_check = rule.name in agenda.stall_checks and "stalled" in rule.alerts
        running = by_experiment(self._search(ids, RUNNING_FILTER)) if stall_check else None
        to_sweep = [i for i in tracked_states(fp, states) if i in agenda.sweep]
        swept = self._orphans(rule, to_sweep, states) if to_sweep else {}
        return [
            self._read_of(
                rule,
                exp,
                Observed(
                    ended=ended.get(exp.experiment_id, ()),
                    holders=holders.get(exp.experiment_id, ()) if exp.experiment_id in checked else None,
                    running=running.get(exp.experiment_id, ()) if running is not None else None,
                    orphans=swept.get(exp.experiment_id, ()) if exp.experiment_id in to_sweep else None,
                ),
                from_listing=agenda.listed,
            )
            for exp in exps
        ]

    def _read_of(
        self, rule: Rule, exp: WatchedExperiment, observed: Observed, *, from_listing: bool
    ) -> ExperimentRead:
        """One experiment's read: its state, selection tag and outbox room from its tags."""
        return ExperimentRead(
            Experiment(exp.experiment_id, exp.name),
            state_of(exp.tags),
            observed=replace(
                observed,
                alert_room=(
                    webhook_room(exp.experiment_id, exp.tags, rule.notify)
                    if rule.alerts and rule.notify
                    else None
                ),
            ),
            selection_tag=exp.tags.get(SELECTION_TAG) if rule.selection is not None else None,
            from_listing=from_listing,
        )

    def _ended(
        self,
        rule: Rule,
        fp: str,
        states: Mapping[str, ExperimentState | None],
        agenda: Agenda,
        scratch: PassScratch,
    ) -> list[RunRecord]:
        """The runs ended after the watermarks of the experiments the rule ranks already. The
        search reaches back to the alert cursor of an experiment with failed runs still to
        announce; FINISHED runs at or before a watermark are left out by the triage. In a
        daemon pass (the agenda has floors) it starts from each experiment's floor where that
        is later than its watermark, and records how far it read: the latest end time it
        returned (or where it started, when it returned none)."""
        kept = tracked_states(fp, states)
        if not kept:
            return []
        low = self._search_after(kept, agenda)
        ended = self._search(
            list(kept),
            and_filters(f"attributes.end_time > {low}", None if drops_filter(rule) else rule.filter),
        )
        if agenda.floors is not None:
            read_to = max((r.end_time or 0 for r in ended), default=low)
            scratch.searched.update(dict.fromkeys(kept, max(low, read_to)))
        return ended

    @staticmethod
    def _search_after(states: Mapping[str, ExperimentState], agenda: Agenda) -> int:
        """Where the batch search starts: after the lowest watermark (or alert cursor) of
        ``states``, or, in a daemon pass, the kept floor where that is later."""
        floors = agenda.floors
        return min(
            max(s.search_after, floors.get(i, s.search_after))
            if floors is not None and s.alert_cursor is None
            else s.search_after
            for i, s in states.items()
        )

    def read_more(
        self,
        rule: Rule,
        reads: Sequence[ExperimentRead],
        need: ToRead,
        agenda: Agenda,
        scratch: PassScratch,
        listing: ListingReader | None = None,
    ) -> list[ExperimentRead]:
        """Read what the decision asked for; the reads come back with the answers filled in
        (those read afresh and found gone or deleted are left out)."""
        if need.afresh:
            assert listing is not None
            reads = self._afresh(rule, reads, need.afresh, agenda, scratch, listing)
        if need.filtered:
            matching = self._search(
                list(need.filtered),
                and_filters(FINISHED_FILTER, f"attributes.end_time > {need.filtered_since}", rule.filter),
            )
            rows, filtered_out = with_rule_filter([run for r in reads for run in r.observed.ended], matching)
            ended = by_experiment(rows)
            reads = [
                replace(
                    r,
                    observed=replace(
                        r.observed,
                        ended=ended.get(r.experiment_id, ()),
                        filtered_out=filtered_out.get(r.experiment_id, 0),
                    ),
                    filtered=True,
                )
                for r in reads
            ]
        if need.running:
            running = by_experiment(self._search(list(need.running), RUNNING_FILTER))
            reads = [
                replace(r, observed=replace(r.observed, running=running.get(r.experiment_id, ())))
                if r.experiment_id in need.running
                else r
                for r in reads
            ]
        by_id = {r.experiment_id: r for r in reads}
        if need.holders:
            # The experiments ranked whose holders the batch search did not read.
            held = self._holders(need.holders)
            for i in need.holders:
                by_id[i] = replace(by_id[i], observed=replace(by_id[i].observed, holders=held.get(i, ())))
        if need.orphans:
            found = self._orphans(rule, need.orphans, {i: by_id[i].state for i in need.orphans})
            for i in need.orphans:
                by_id[i] = replace(by_id[i], orphans=found.get(i, ()))
        for board in need.boards:
            with structlog.contextvars.bound_contextvars(experiment_id=board.experiment_id):
                by_id[board.experiment_id] = replace(
                    by_id[board.experiment_id],
                    board=self.find_board(board.experiment_id, rule, board.cutoff, board.keep),
                )
            self.progressed()
        for count in need.counts:
            by_id[count.experiment_id] = replace(
                by_id[count.experiment_id], count_pages=self.count_pages(rule, count)
            )
        if need.selections:
            tied = by_experiment(self._search(list(need.selections), f"tags.`{TIED_WITH_LEADER}` LIKE '%'"))
            for i in need.selections:
                with structlog.contextvars.bound_contextvars(experiment_id=i):
                    runs = self.selection_board(rule, by_id[i], scratch)
                by_id[i] = replace(by_id[i], selection_input=SelectionInput(runs, tied.get(i, ())))
        if need.firsts:
            since_ranking = by_experiment(
                self._search(
                    list(need.firsts),
                    and_filters(
                        f"attributes.end_time > {need.since}", None if drops_filter(rule) else rule.filter
                    ),
                )
            )
            for i in need.firsts:
                by_id[i] = replace(by_id[i], since_ranking=since_ranking.get(i, ()))
        return [by_id[r.experiment_id] for r in reads]

    def _afresh(
        self,
        rule: Rule,
        reads: Sequence[ExperimentRead],
        ids: Sequence[str],
        agenda: Agenda,
        scratch: PassScratch,
        listing: ListingReader,
    ) -> list[ExperimentRead]:
        """The experiments ``ids`` read afresh (see :meth:`ListingReader.afresh`) and their
        reads rebuilt from their tags as they are now; one gone or deleted leaves the batch.
        When a state read afresh reaches further back than the batch search did, the batch
        search runs again from there; else the runs of an experiment the rule no longer
        tracks are dropped."""
        fp = fingerprint(rule.metric, rule.ascending, rule.filter)
        before = tracked_states(fp, {r.experiment_id: r.state for r in reads})
        found = listing.afresh(ids)
        out: list[ExperimentRead] = []
        for read in reads:
            if read.experiment_id not in found:
                out.append(read)
                continue
            record = found[read.experiment_id]
            if record is None or record.deleted:
                log.info("experiment_gone", experiment_id=read.experiment_id)
                continue
            exp = WatchedExperiment(record.experiment_id, record.name, dict(record.tags), rule)
            out.append(self._read_of(rule, exp, read.observed, from_listing=False))
        fresh = tracked_states(fp, {r.experiment_id: r.state for r in out})
        if before and fresh and self._search_after(fresh, agenda) < self._search_after(before, agenda):
            ended = by_experiment(
                self._ended(rule, fp, {r.experiment_id: r.state for r in out}, agenda, scratch)
            )
            return [
                replace(
                    r,
                    observed=replace(r.observed, ended=ended.get(r.experiment_id, ()), filtered_out=0),
                    filtered=False,
                )
                for r in out
            ]
        return [
            r if r.experiment_id in fresh else replace(r, observed=replace(r.observed, ended=())) for r in out
        ]


def log_decision(rule: Rule, reads: Sequence[ExperimentRead], decision: BatchDecision) -> None:
    """One batch's decision in the log, experiment by experiment."""
    plans = {p.experiment_id: p for p in decision.plans}
    for read in reads:
        t = decision.triaged[read.experiment_id]
        plan = plans[read.experiment_id]
        if plan.action == "idle" and not (
            t.stalled or t.old_alerts_skipped or t.alerts_lost or t.alerts_held
        ):
            continue  # nothing to say, and most of a thousand experiments are idle
        name = read.experiment.name
        with structlog.contextvars.bound_contextvars(experiment_id=read.experiment_id):
            for run_id in t.stalled:
                log.warning("run_stalled", experiment_name=name, run_id=run_id, rule=rule.name)
            if t.old_alerts_skipped:
                log.info(
                    "alerts_not_announced",
                    experiment_name=name,
                    runs=t.old_alerts_skipped,
                    reason="before_first_seen",
                )
            if t.alerts_lost:
                log.warning(
                    "alerts_not_announced",
                    experiment_name=name,
                    runs=t.alerts_lost,
                    reason="outbox_full",
                    waiting_limit=MAX_FAILED_WAITING,
                )
            if t.alerts_held:
                log.warning(
                    "alerts_held",
                    experiment_name=name,
                    runs=t.alerts_held,
                    queued=len(t.alerts),
                    alerted=len(t.alerted),
                    alerted_limit=MAX_ALERTED,
                )
            counts = decision.counts.get(read.experiment_id)
            if counts is not None:
                board = read.board.board if read.board is not None else ()
                log.info(
                    "experiment_planned",
                    experiment_name=name,
                    rule=rule.name,
                    action=plan.action,
                    reason=t.reason,
                    tag_changes=len(plan.changes),
                    ranked_runs=counts.ranked,
                    unranked_runs=counts.unranked,
                    counting=counts.counting,
                    leader=board[0].run_id if board else None,
                )
            elif plan.action == "count" and plan.state is not None and not plan.state.counting:
                log.info(
                    "experiment_counted",
                    experiment_name=name,
                    ranked_runs=plan.state.ranked_runs,
                    unranked_runs=plan.state.unranked_runs,
                )
            elif plan.action == "pending" and t.reason != "deferred":
                # A deferred ranking is counted once, in pass_finished's rankings_deferred.
                log.info("experiment_pending", experiment_name=name, reason="run_still_running")
