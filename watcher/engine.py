"""Reading for a pass: the batch searches, then the ranking searches the planner asks for.

Nothing here writes. Per rule and batch of experiments a pass reads the ended-after-watermark
search (no status filter: FAILED runs are split out in pure code), the holder check
(``tags.model_rank LIKE '%'``) and, only when a rule waits for RUNNING runs or looks for
stalled ones, the RUNNING runs. The planner (:mod:`watcher.planner`) decides from those rows;
for each experiment it ranks, this module runs the threshold searches that find the board
without a scan, and the orphan-tag searches (``top_{N}``, ``production_candidate`` on runs
without ``model_rank``), batched.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal

import structlog

from watcher.detect import MAX_ALERTED, STATE_TAG, UNRANKED, ExperimentState, board_size, fingerprint
from watcher.mlflow_io import EXPERIMENT_BATCH, MlflowTracking, glob_to_like
from watcher.model import (
    MODEL_RANK,
    PRODUCTION_CANDIDATE,
    ExperimentRecord,
    Rule,
    RunRecord,
    WatchedExperiment,
    top_tag,
)
from watcher.outbox import webhook_room
from watcher.planner import (
    FINISHED,
    MAX_FAILED_WAITING,
    SAMPLE_SIZE,
    BoardSearch,
    ExperimentPlan,
    Observed,
    Triage,
    align_watermark,
    board_from_search,
    by_experiment,
    counted_page,
    counts_after_ranking,
    kept_cutoff,
    ordered_search_proof,
    plan_board,
    redundant_advance,
    sample_cutoffs,
    state_only,
    triage,
)
from watcher.settings import WatcherSettings

log = structlog.get_logger("watcher")

FINISHED_FILTER = "attributes.status = 'FINISHED'"
RUNNING_FILTER = "attributes.status = 'RUNNING'"
# Pages of the paged count (ranked/unranked totals after a first ranking) read per pass: a
# 10,000-run experiment is counted in the two passes after its first ranking, ~3 s each.
COUNT_PAGES_PER_PASS = 5
# A full scan reads MLflow's default page of 1,000 runs per request, so every request stays well
# inside the client timeout (MLFLOW_HTTP_REQUEST_TIMEOUT, 30 s in the image): one 50,000-run page
# took 138 s on a sqlite-backed server. Only the paged count and a last-resort board scan page.
SCAN_PAGE = 1_000


def and_filters(*parts: str | None) -> str:
    """Join MLflow filter clauses (the grammar has AND but no parentheses)."""
    return " AND ".join(p for p in parts if p)


def metric_ref(metric: str) -> str:
    return f"metrics.`{metric}`"


def number_literal(value: float) -> str:
    """A filter literal that parses back to exactly ``value``; MLflow's grammar rejects
    exponents such as ``1e+20``, so write the shortest round-trip digits out in full."""
    return f"{Decimal(repr(value)):f}"


def threshold(rule: Rule, cutoff: float) -> str:
    """Runs at or before ``cutoff`` in the rule's order (ties at the cutoff included)."""
    op = "<=" if rule.ascending else ">="
    return f"{metric_ref(rule.metric)} {op} {number_literal(cutoff)}"


def watched_experiments(settings: WatcherSettings, tracking: MlflowTracking) -> list[WatchedExperiment]:
    """Active experiments that a rule matches (first matching rule in file order)."""
    patterns = sorted({p for rule in settings.rules for p in rule.experiments})
    likes = [glob_to_like(p) for p in patterns]
    found: dict[str, ExperimentRecord] = {}
    listings: Iterable[str | None]
    if any(like is None for like in likes):
        listings = [None]
    else:
        listings = sorted({f"name LIKE '{like}'" for like in likes if like is not None})
    for filter_string in listings:
        for exp in tracking.search_experiments(filter_string):
            found[exp.experiment_id] = exp
    watched = []
    for exp in sorted(found.values(), key=lambda e: e.name):
        rule = settings.rule_for(exp.name)
        if rule is not None:
            watched.append(WatchedExperiment(exp.experiment_id, exp.name, dict(exp.tags), rule))
    return watched


@dataclass
class Reader:
    """Reads what the planner needs and returns plans; never writes.

    ``running_due(rule)`` tells whether this pass looks for stalled runs of a rule whose
    trigger does not need the RUNNING search anyway (the caller keeps that clock).
    """

    tracking: MlflowTracking
    # Runs in the unordered page a first ranking estimates its cutoffs from.
    sample_size: int = SAMPLE_SIZE

    def plan_pass(
        self,
        settings: WatcherSettings,
        watched: Sequence[WatchedExperiment],
        now_ms: int,
        stall_check: Mapping[str, bool] | None = None,
        sweep: bool = False,
    ) -> list[ExperimentPlan]:
        by_rule: dict[str, list[WatchedExperiment]] = defaultdict(list)
        for exp in watched:
            assert exp.rule is not None
            by_rule[exp.rule.name].append(exp)
        plans: list[ExperimentPlan] = []
        for rule in settings.rules:
            exps = by_rule.get(rule.name, [])
            for start in range(0, len(exps), EXPERIMENT_BATCH):
                batch = exps[start : start + EXPERIMENT_BATCH]
                stall = (stall_check or {}).get(rule.name, False)
                plans.extend(self.plan_batch(rule, batch, now_ms, stall, sweep=sweep))
        return plans

    def plan_batch(
        self,
        rule: Rule,
        exps: Sequence[WatchedExperiment],
        now_ms: int,
        stall_check: bool = False,
        *,
        force_rank: bool = False,
        sweep: bool = False,
    ) -> list[ExperimentPlan]:
        """Plans for one rule's batch; ``force_rank`` ranks every experiment (the API);
        ``sweep`` searches the ``top_{N}``/``production_candidate`` holders of every experiment
        of the batch, not only of those it re-ranks, and re-ranks every idle one from its kept
        cutoff (one threshold search each)."""
        fp = fingerprint(rule.metric, rule.ascending, rule.filter)
        states = {e.experiment_id: ExperimentState.from_tag(e.tags.get(STATE_TAG)) for e in exps}
        # Experiments whose runs the batch search covers: those this rule ranks (or first saw),
        # and any with failed runs still to announce (their cursor survives a rule change).
        tracked = [
            e.experiment_id
            for e in exps
            if (s := states[e.experiment_id]) is not None
            and (s.fingerprint in (fp, UNRANKED) or s.alert_cursor is not None)
        ]
        ids = [e.experiment_id for e in exps]

        # The rule's filter says which runs are ranked; failed runs are announced whatever it
        # says, so with failed alerts the batch search drops it and FINISHED news is searched
        # again with it (only when there is news).
        drop_filter = bool(rule.filter) and "failed" in rule.alerts
        # The search reaches back to the alert cursor of an experiment with failed runs still
        # to announce; FINISHED runs at or before a watermark are left out by the triage.
        ended: list[RunRecord] = []
        filtered_out: dict[str, int] = {}
        kept = {i: s for i in tracked if (s := states[i]) is not None}
        low = min((s.search_after for s in kept.values()), default=0)
        if tracked:
            ended = self.tracking.search_runs(
                tracked, and_filters(f"attributes.end_time > {low}", None if drop_filter else rule.filter)
            )
            news = {
                r.experiment_id
                for r in ended
                if r.status == FINISHED and (r.end_time or 0) > kept[r.experiment_id].seen
            }
            if drop_filter and news:
                news_low = min(kept[i].seen for i in news)
                matching = self.tracking.search_runs(
                    sorted(news),
                    and_filters(FINISHED_FILTER, f"attributes.end_time > {news_low}", rule.filter),
                )
                # FINISHED news the filter leaves out still moves the watermark (see Observed).
                matched = {r.run_id for r in matching}
                for r in ended:
                    if r.status == FINISHED and r.run_id not in matched:
                        end = r.end_time or 0
                        filtered_out[r.experiment_id] = max(filtered_out.get(r.experiment_id, 0), end)
                ended = [r for r in ended if r.status != FINISHED] + matching
        holders = by_experiment(self.tracking.search_runs(ids, f"tags.{MODEL_RANK} LIKE '%'"))
        ended_by = by_experiment(ended)
        advance_to = redundant_advance(ended, states)

        running_by: dict[str, tuple[RunRecord, ...]] | None = None
        needs_running = stall_check and "stalled" in rule.alerts
        if rule.trigger == "experiment_finished" and not needs_running:
            needs_running = any(
                (s := states[e]) is None
                or s.fingerprint != fp
                or s.pending
                or any(r.status == FINISHED and (r.end_time or 0) > s.seen for r in ended_by.get(e, ()))
                for e in ids
            )
        if needs_running:
            running_by = by_experiment(self.tracking.search_runs(ids, RUNNING_FILTER))

        swept = self._orphans(rule, [i for i in ids if i in tracked], states) if sweep else None
        triaged: dict[str, Triage] = {}
        for exp in exps:
            state = states[exp.experiment_id]
            observed = Observed(
                ended=ended_by.get(exp.experiment_id, ()),
                holders=holders.get(exp.experiment_id, ()),
                running=None if running_by is None else running_by.get(exp.experiment_id, ()),
                advance_to=advance_to,
                filtered_out=filtered_out.get(exp.experiment_id, 0),
                orphans=None if swept is None else swept.get(exp.experiment_id, ()),
                alert_room=(
                    webhook_room(exp.experiment_id, exp.tags, rule.notify)
                    if rule.alerts and rule.notify
                    else None
                ),
            )
            t = triage(rule, fp, (exp.experiment_id, exp.name), state, observed, now_ms)
            if force_rank and t.action not in ("rerank", "full"):
                tracked_here = state is not None and state.fingerprint == fp
                t = replace(t, action="rerank" if tracked_here else "full", reason="requested")
            elif sweep and t.action in ("idle", "advance") and state is not None and state.fingerprint == fp:
                # A run whose end time is older than the watermark when it appears (another
                # client's clock, a slow commit) is in no ended-after search: the sweep's
                # threshold search from the kept cutoff finds it whatever its end time.
                t = replace(t, action="rerank", reason="sweep")
            triaged[exp.experiment_id] = t

        to_rank = [e.experiment_id for e in exps if triaged[e.experiment_id].action in ("rerank", "full")]
        orphans = swept if swept is not None else {}
        orphans = {
            **orphans,
            **self._orphans(rule, [i for i in to_rank if swept is None or i not in tracked], states),
        }

        plans: list[ExperimentPlan] = []
        for exp in exps:
            t = triaged[exp.experiment_id]
            state = states[exp.experiment_id]
            key = (exp.experiment_id, exp.name)
            with structlog.contextvars.bound_contextvars(experiment_id=exp.experiment_id):
                for run_id in t.stalled:
                    log.warning("run_stalled", experiment_name=exp.name, run_id=run_id, rule=rule.name)
                if t.old_alerts_skipped:
                    log.info(
                        "alerts_not_announced",
                        experiment_name=exp.name,
                        runs=t.old_alerts_skipped,
                        reason="before_first_seen",
                    )
                if t.alerts_lost:
                    log.warning(
                        "alerts_not_announced",
                        experiment_name=exp.name,
                        runs=t.alerts_lost,
                        reason="outbox_full",
                        waiting_limit=MAX_FAILED_WAITING,
                    )
                if t.alerts_held:
                    log.warning(
                        "alerts_held",
                        experiment_name=exp.name,
                        runs=t.alerts_held,
                        queued=len(t.alerts),
                        alerted=len(t.alerted),
                        alerted_limit=MAX_ALERTED,
                    )
                if t.action in ("rerank", "full"):
                    read = [*holders.get(exp.experiment_id, ()), *orphans.get(exp.experiment_id, ())]
                    plans.append(self.rank(key, rule, fp, state, t, read))
                elif t.action == "count" and state is not None:
                    plans.append(self.count(key, rule, state, t))
                else:
                    if t.action == "pending":
                        log.info("experiment_pending", experiment_name=exp.name, reason="run_still_running")
                    plans.append(state_only(key, rule, state, t))
        if not force_rank:
            plans = self._align_watermarks(rule, plans, None if drop_filter else rule.filter)
        return plans

    def _align_watermarks(
        self, rule: Rule, plans: Sequence[ExperimentPlan], filter_string: str | None
    ) -> list[ExperimentPlan]:
        """Give the experiments ranked for the first time one watermark: the latest end time
        of one search over all of them, so the next batch search returns nothing old.

        An experiment keeps its own watermark when that search shows it a run to act on
        (see :func:`watcher.planner.align_watermark`): the next pass handles it.
        """
        firsts = [p for p in plans if p.action == "full" and p.state is not None]
        if not firsts:
            return list(plans)
        low = min(p.state.seen for p in firsts if p.state is not None)
        rows = self.tracking.search_runs(
            [p.experiment_id for p in firsts], and_filters(f"attributes.end_time > {low}", filter_string)
        )
        top = max(
            [low, *(r.end_time or 0 for r in rows), *(p.state.seen for p in firsts if p.state is not None)]
        )
        rows_by = by_experiment(rows)
        aligned = []
        for p in plans:
            if p in firsts and p.state is not None:
                p = replace(p, state=align_watermark(p.state, rows_by.get(p.experiment_id, ()), top, rule))
            aligned.append(p)
        return aligned

    def _orphans(
        self, rule: Rule, ids: Sequence[str], states: Mapping[str, ExperimentState | None]
    ) -> dict[str, tuple[RunRecord, ...]]:
        """Runs of the experiments being ranked that carry a ``top_{N}`` or
        ``production_candidate`` tag (with or without ``model_rank``): one search per key."""
        if not ids:
            return {}
        keys = {top_tag(rule.top_n), PRODUCTION_CANDIDATE}
        keys |= {top_tag(s.top_n) for i in ids if (s := states.get(i)) is not None}
        rows: list[RunRecord] = []
        for key in sorted(keys):
            rows.extend(self.tracking.search_runs(ids, f"tags.`{key}` LIKE '%'"))
        return by_experiment(rows)

    def find_board(
        self, exp_id: str, rule: Rule, cutoff: float | None, keep: int
    ) -> tuple[BoardSearch, tuple[list, bool]]:
        """The board by threshold searches: from the kept cutoff if there is one, else from
        cutoffs estimated on a sample of the runs that ended last (ordered searches cut at
        ``keep + 1``); a scan only when every estimate fails."""
        finished = and_filters(FINISHED_FILTER, rule.filter)
        if cutoff is not None:
            found = BoardSearch(
                tuple(self.tracking.search_runs([exp_id], and_filters(finished, threshold(rule, cutoff)))),
                cutoff,
                False,
            )
            board = board_from_search(found, rule, keep)
            if board is not None:
                return found, board
            log.info("board_refill_needed", known=len(found.runs))
        # The runs that ended last: the search's latest end time is the experiment's, so the
        # watermark search after a first ranking finds only what ended during the pass.
        sample, token = self.tracking.search_page(
            [exp_id], finished, self.sample_size, order_by=["attributes.end_time DESC"]
        )
        if token is None:
            found = BoardSearch(tuple(sample), None, True)
            board = board_from_search(found, rule, keep)
            assert board is not None
            return found, board
        direction = "ASC" if rule.ascending else "DESC"
        for value in sample_cutoffs(sample, rule.metric, rule.ascending, keep):
            # Ordered on the server and cut at keep + 1 rows: cheap on both backends (a
            # threshold keeps the sort small), and it answers with the board, not every run
            # above the cutoff.
            search = and_filters(finished, threshold(rule, value))
            rows = self.tracking.search_runs(
                [exp_id], search, order_by=[f"{metric_ref(rule.metric)} {direction}"], limit=keep + 1
            )
            proof = ordered_search_proof(rows, rule, value, keep + 1)
            board = board_from_search(proof, rule, keep) if proof is not None else None
            if board is None and len(rows) > keep:
                # The limit cut through ties or unrankable values: every run above the cutoff.
                proof = BoardSearch(tuple(self.tracking.search_runs([exp_id], search)), value, False)
                board = board_from_search(proof, rule, keep)
            if board is not None:
                assert proof is not None
                # The sample's runs count as seen too: they hold the latest end time.
                return BoardSearch((*sample, *proof.runs), proof.cutoff, False), board
        log.warning("board_scan_fallback", reason="sample_has_too_few_ranked_runs", sampled=len(sample))
        everything = {r.run_id: r for r in self.tracking.iter_runs([exp_id], finished, page_size=SCAN_PAGE)}
        found = BoardSearch(tuple(everything.values()), None, True)
        board = board_from_search(found, rule, keep)
        assert board is not None
        return found, board

    def rank(
        self,
        exp: tuple[str, str],
        rule: Rule,
        fp: str,
        state: ExperimentState | None,
        t: Triage,
        read: Sequence[RunRecord],
    ) -> ExperimentPlan:
        keep = board_size(rule.top_n)
        cutoff = kept_cutoff(state, rule, fp) if t.action == "rerank" else None
        found, (board, complete) = self.find_board(exp[0], rule, cutoff, keep)
        if t.action == "full":
            # Every run that ended before the latest end time these searches saw was visible
            # to them: the watermark moves there (the paged count covers the runs up to it).
            # A re-rank keeps the batch search's watermark, so nothing that ended after that
            # search is skipped (failed runs to announce, runs to count).
            t = replace(t, seen=max([t.seen, *(r.end_time or 0 for r in found.runs)]))
        counts = counts_after_ranking(state, fp, t, found, rule.metric)
        plan = plan_board(exp, rule, fp, state, t, board, complete, [*read, *found.runs], counts)
        log.info(
            "experiment_planned",
            experiment_name=exp[1],
            rule=rule.name,
            action=plan.action,
            reason=t.reason,
            tag_changes=len(plan.changes),
            ranked_runs=counts.ranked,
            unranked_runs=counts.unranked,
            counting=counts.counting,
            leader=board[0].run_id if board else None,
        )
        return plan

    def count(self, exp: tuple[str, str], rule: Rule, state: ExperimentState, t: Triage) -> ExperimentPlan:
        """Go on with the paged count of ranked/unranked runs (a bounded number of pages)."""
        base = state_only(exp, rule, state, t).state or state
        filter_string = and_filters(
            FINISHED_FILTER, f"attributes.end_time <= {state.count_upto}", rule.filter
        )
        token = state.count_token
        for _ in range(COUNT_PAGES_PER_PASS):
            page, token = self.tracking.search_page([exp[0]], filter_string, SCAN_PAGE, token)
            base = counted_page(base, page, token, rule.metric)
            if token is None:
                log.info(
                    "experiment_counted",
                    experiment_name=exp[1],
                    ranked_runs=base.ranked_runs,
                    unranked_runs=base.unranked_runs,
                )
                break
        return ExperimentPlan(
            exp[0], exp[1], rule.name, "count", t.reason, state=base, alerts=t.alerts, stalled=t.stalled
        )
