"""One reconcile pass over every watched experiment, and on-demand ranking for the HTTP API.

The pass reads little: the watched experiments with their state tags, one search per rule
batch for runs that ended after the watermark, one search for RUNNING runs where a rule
waits for them, and, per experiment that changed, one threshold search (``metrics.m >=
cutoff``) for the kept board. Only a first ranking or a changed rule scans the experiment.
The pure core decides (:mod:`watcher.detect`, :mod:`watcher.ranking`); this module reads,
applies the plan in order and calls the handlers.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import structlog

from watcher import metrics
from watcher.detect import (
    STATE_TAG,
    Decision,
    ExperimentState,
    board_size,
    decide,
    fingerprint,
)
from watcher.errors import ExperimentNotFound, NoRankedRuns, WatcherError
from watcher.mlflow_io import EXPERIMENT_BATCH, MlflowTracking, glob_to_like
from watcher.model import (
    MODEL_RANK,
    ExperimentRecord,
    Handler,
    Leaderboard,
    LeaderboardChanged,
    RunRecord,
    TagChange,
    WatchedExperiment,
)
from watcher.ranking import (
    Candidate,
    desired_tags,
    leaderboard_entries,
    merge_board,
    order,
    plan,
    podium_tags,
    split_ranked,
)
from watcher.settings import RuleConfig, WatcherSettings

log = structlog.get_logger("watcher")

FINISHED_FILTER = "attributes.status = 'FINISHED'"
RUNNING_FILTER = "attributes.status = 'RUNNING'"
# Runs a batch search may return again (their watermark already covers them) before the
# lagging experiments' watermarks are moved up, at the cost of one state write each.
REDUNDANT_LIMIT = 500
# A full scan reads MLflow's default page of 1,000 runs per request, so every request stays well
# inside the client timeout (MLFLOW_HTTP_REQUEST_TIMEOUT, 30 s in the image): one 50,000-run page
# took 138 s on a sqlite-backed server (bench/bench_watcher.py), so a first pass over a big
# experiment would time out on every pass and never rank it. Paging costs about the same in total.
SCAN_PAGE = 1_000


@dataclass(frozen=True)
class ExperimentOutcome:
    """What one pass did to one experiment (``changes`` is the plan, applied unless dry run).

    ``action``: "idle", "advance", "pending", "rerank" or "full" (see :class:`Decision`).
    """

    experiment_id: str
    experiment_name: str
    rule: str
    action: str
    changes: tuple[TagChange, ...] = ()
    event: LeaderboardChanged | None = None
    board: Leaderboard | None = None


@dataclass(frozen=True)
class PassResult:
    pass_id: str
    ok: bool
    dry_run: bool
    started_at: float
    duration_seconds: float
    experiments_checked: int
    experiments_changed: int
    tag_writes: int
    tracking_calls: int
    outcomes: tuple[ExperimentOutcome, ...] = ()
    error: str | None = None
    # What the handlers did (e.g. webhooks_failed), from their optional ``pass_report()``.
    handler_report: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Ranked:
    """A new board prefix and what is needed to plan and record it."""

    board: list[Candidate]
    complete: bool
    current: dict[str, dict[str, str]]  # watcher tags the affected runs carry now
    ranked_runs: int
    unranked_runs: int
    seen: int


@dataclass
class Health:
    """What ``GET /healthz`` reports; times are unix seconds from the watcher's clock."""

    poll_interval_seconds: float
    last_pass_at: float | None = None
    last_ok: bool | None = None
    last_success_at: float | None = None

    def is_healthy(self, now: float) -> bool:
        """Healthy while a pass succeeded within three poll intervals."""
        if self.last_success_at is None:
            return False
        return now - self.last_success_at <= 3 * self.poll_interval_seconds


def and_filters(*parts: str | None) -> str:
    """Join MLflow filter clauses (the grammar has AND but no parentheses)."""
    return " AND ".join(p for p in parts if p)


def metric_ref(metric: str) -> str:
    return f"metrics.`{metric}`"


def number_literal(value: float) -> str:
    """A filter literal that parses back to exactly ``value``; MLflow's grammar rejects
    exponents such as ``1e+20``, so write the shortest round-trip digits out in full."""
    return f"{Decimal(repr(value)):f}"


class Watcher:
    """Reconciles leaderboards; one pass at a time (``run_pass`` and ``rank_now`` share a lock)."""

    def __init__(
        self,
        settings: WatcherSettings,
        tracking: MlflowTracking,
        handlers: Sequence[Handler] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.tracking = tracking
        self.handlers = tuple(handlers)
        self.clock = clock
        self.health = Health(poll_interval_seconds=settings.poll_interval_seconds)
        self.last_result: PassResult | None = None
        self._lock = threading.Lock()

    # -- a pass ------------------------------------------------------------------------------

    def run_pass(self, dry_run: bool = False) -> PassResult:
        """Reconcile every watched experiment once; never raises (failures are in the result)."""
        with self._lock:
            return self._run_pass(dry_run)

    def _run_pass(self, dry_run: bool) -> PassResult:
        pass_id = uuid.uuid4().hex[:12]
        started = self.clock()
        wall = time.perf_counter()
        calls_before = self.tracking.calls
        outcomes: list[ExperimentOutcome] = []
        watched: list[WatchedExperiment] = []
        error: str | None = None
        report: dict[str, int] = {}
        with structlog.contextvars.bound_contextvars(pass_id=pass_id):
            log.info("pass_started", dry_run=dry_run)
            if not dry_run:
                # Per-pass state is reset even when the last pass failed (on_pass_end runs
                # after successful passes only).
                self._call_handlers("on_pass_start")
            try:
                watched = self._watched_experiments()
                outcomes = self._reconcile(watched, dry_run)
            except Exception as e:  # the daemon must survive anything one pass runs into
                error = str(e) or type(e).__name__
                # A traceback only for bugs; a down server or a bad filter is said in one line.
                log.error(
                    "pass_failed",
                    error=error,
                    error_type=type(e).__name__,
                    exc_info=not isinstance(e, WatcherError),
                )
            ok = error is None
            if ok and not dry_run:
                for handler in self.handlers:
                    _call_hook(handler, "on_pass_end", watched)
                    report.update(_call_hook(handler, "pass_report") or {})
            duration = time.perf_counter() - wall
            result = PassResult(
                pass_id=pass_id,
                ok=ok,
                dry_run=dry_run,
                started_at=started,
                duration_seconds=duration,
                experiments_checked=len(watched),
                experiments_changed=sum(1 for o in outcomes if o.changes or o.event),
                tag_writes=sum(len(o.changes) for o in outcomes),
                tracking_calls=self.tracking.calls - calls_before,
                outcomes=tuple(outcomes),
                error=error,
                handler_report=report,
            )
            self._record(result)
            log.info(
                "pass_finished",
                ok=ok,
                dry_run=dry_run,
                experiments_checked=result.experiments_checked,
                experiments_changed=result.experiments_changed,
                tag_writes=result.tag_writes,
                tracking_calls=result.tracking_calls,
                duration_seconds=round(duration, 3),
                **report,
            )
        return result

    def _call_handlers(self, hook: str, *args: Any) -> None:
        for handler in self.handlers:
            _call_hook(handler, hook, *args)

    def _record(self, result: PassResult) -> None:
        self.last_result = result
        metrics.PASSES.labels(outcome="ok" if result.ok else "failed").inc()
        metrics.PASS_DURATION.observe(result.duration_seconds)
        ended = result.started_at + result.duration_seconds
        self.health.last_pass_at = ended
        self.health.last_ok = result.ok
        if result.ok:
            self.health.last_success_at = ended
            metrics.LAST_SUCCESS.set(ended)

    def _watched_experiments(self) -> list[WatchedExperiment]:
        """Active experiments that a rule matches (first matching rule in file order)."""
        patterns = sorted({p for rule in self.settings.rules for p in rule.experiments})
        likes = [glob_to_like(p) for p in patterns]
        found: dict[str, ExperimentRecord] = {}
        if any(like is None for like in likes):
            listings: Iterable[str | None] = [None]
        else:
            listings = sorted({f"name LIKE '{like}'" for like in likes if like is not None})
        for filter_string in listings:
            for exp in self.tracking.search_experiments(filter_string):
                found[exp.experiment_id] = exp
        watched = []
        for exp in sorted(found.values(), key=lambda e: e.name):
            rule = self.settings.rule_for(exp.name)
            if rule is not None:
                watched.append(WatchedExperiment(exp.experiment_id, exp.name, dict(exp.tags), rule))
        return watched

    def _reconcile(self, watched: Sequence[WatchedExperiment], dry_run: bool) -> list[ExperimentOutcome]:
        by_rule: dict[str, list[WatchedExperiment]] = defaultdict(list)
        for exp in watched:
            assert exp.rule is not None
            by_rule[exp.rule.name].append(exp)
        outcomes: list[ExperimentOutcome] = []
        for rule in self.settings.rules:
            exps = by_rule.get(rule.name, [])
            for start in range(0, len(exps), EXPERIMENT_BATCH):
                outcomes.extend(self._reconcile_batch(rule, exps[start : start + EXPERIMENT_BATCH], dry_run))
        return outcomes

    def _reconcile_batch(
        self, rule: RuleConfig, exps: Sequence[WatchedExperiment], dry_run: bool
    ) -> list[ExperimentOutcome]:
        fp = fingerprint(rule.metric, rule.ascending, rule.filter)
        states = {e.experiment_id: ExperimentState.from_tag(e.tags.get(STATE_TAG)) for e in exps}
        tracked = [e for e in exps if (s := states[e.experiment_id]) is not None and s.fingerprint == fp]

        new_runs: dict[str, list[RunRecord]] = defaultdict(list)
        advance_to: int | None = None
        if tracked:
            low = min(states[e.experiment_id].seen for e in tracked)  # type: ignore[union-attr]
            found = self.tracking.search_runs(
                [e.experiment_id for e in tracked],
                and_filters(FINISHED_FILTER, f"attributes.end_time > {low}", rule.filter),
            )
            redundant = 0
            for run in found:
                state = states.get(run.experiment_id)
                if state is not None and (run.end_time or 0) > state.seen:
                    new_runs[run.experiment_id].append(run)
                else:
                    redundant += 1
            if redundant and (redundant >= REDUNDANT_LIMIT or not new_runs):
                advance_to = max(run.end_time or 0 for run in found)

        running: set[str] = set()
        if rule.trigger == "experiment_finished":
            waiting = [
                e.experiment_id
                for e in exps
                if (s := states[e.experiment_id]) is None
                or s.fingerprint != fp
                or s.pending
                or new_runs.get(e.experiment_id)
            ]
            if waiting:
                running = {r.experiment_id for r in self.tracking.search_runs(waiting, RUNNING_FILTER)}

        outcomes = []
        for exp in exps:
            with structlog.contextvars.bound_contextvars(experiment_id=exp.experiment_id):
                state = states[exp.experiment_id]
                news = new_runs.get(exp.experiment_id, [])
                ranked, unranked = split_ranked(news, rule.metric)
                decision = decide(
                    state,
                    fp,
                    [r.end_time or 0 for r in news],
                    len(ranked),
                    unranked,
                    running=exp.experiment_id in running,
                    wait_for_running=rule.trigger == "experiment_finished",
                    top_n=rule.top_n,
                    production_candidates=rule.production_candidates,
                    advance_to=advance_to,
                )
                outcomes.append(self._act(exp, rule, fp, state, decision, dry_run))
        return outcomes

    def _act(
        self,
        exp: WatchedExperiment,
        rule: RuleConfig,
        fp: str,
        state: ExperimentState | None,
        decision: Decision,
        dry_run: bool,
    ) -> ExperimentOutcome:
        record = ExperimentRecord(exp.experiment_id, exp.name, exp.tags)
        if decision.action == "idle":
            return ExperimentOutcome(exp.experiment_id, exp.name, rule.name, "idle")
        if decision.action in ("advance", "pending"):
            if decision.action == "pending":
                log.info("experiment_pending", experiment_name=exp.name, reason="run_still_running")
            if state is not None:
                new_state = replace(
                    state.with_new_runs(decision.new_ranked, decision.new_unranked, decision.seen),
                    pending=state.pending or decision.action == "pending",
                )
                self._write_state(record, new_state, dry_run)
            return ExperimentOutcome(exp.experiment_id, exp.name, rule.name, decision.action)
        return self._rank(record, rule, fp, state, decision, dry_run)

    # -- ranking -----------------------------------------------------------------------------

    def _rank(
        self,
        exp: ExperimentRecord,
        rule: RuleConfig,
        fp: str,
        state: ExperimentState | None,
        decision: Decision | None,
        dry_run: bool,
    ) -> ExperimentOutcome:
        keep = board_size(rule.top_n)
        result = None
        if decision is not None and decision.action == "rerank" and state is not None:
            result = self._incremental(exp, rule, state, decision, keep)
        action = "rerank"
        if result is None:
            action = "full"
            result = self._full(exp, rule, state, keep)
        board, complete, current = result.board, result.complete, result.current
        ranked_runs, unranked_runs, seen = result.ranked_runs, result.unranked_runs, result.seen
        new_state = ExperimentState(
            rule=rule.name,
            fingerprint=fp,
            top_n=rule.top_n,
            production_candidates=rule.production_candidates,
            seen=max(seen, decision.seen if decision else 0),
            pending=False,
            board=tuple(board),
            complete=complete,
            ranked_runs=ranked_runs,
            unranked_runs=unranked_runs,
        )
        entries = leaderboard_entries(board, rule.top_n)
        leaderboard = Leaderboard(
            experiment_id=exp.experiment_id,
            experiment_name=exp.name,
            rule=rule.name,
            metric=rule.metric,
            ascending=rule.ascending,
            top_n=rule.top_n,
            production_candidates=rule.production_candidates,
            entries=entries,
            ranked_runs=ranked_runs,
            unranked_runs=unranked_runs,
        )
        changes = plan(desired_tags(entries, rule.top_n, rule.production_candidates), current)
        event = _event(leaderboard, state)
        if not dry_run:
            self._apply(changes)
            self._write_state(exp, new_state, dry_run)
        log.info(
            "experiment_ranked",
            experiment_name=exp.name,
            rule=rule.name,
            action=action,
            tag_changes=len(changes),
            ranked_runs=ranked_runs,
            unranked_runs=unranked_runs,
            leader=entries[0].run_id if entries else None,
            dry_run=dry_run,
        )
        if event is not None and not dry_run:
            log.info(
                "leaderboard_changed",
                experiment_name=exp.name,
                new_leader=event.new_leader,
                entered=len(event.entered),
                left=len(event.left),
            )
            self._call_handlers("on_leaderboard_changed", event, rule)
        return ExperimentOutcome(
            exp.experiment_id, exp.name, rule.name, action, tuple(changes), event, leaderboard
        )

    def _incremental(
        self,
        exp: ExperimentRecord,
        rule: RuleConfig,
        state: ExperimentState,
        decision: Decision,
        keep: int,
    ) -> _Ranked | None:
        """Merge the kept board with a threshold search; None when a full ranking is needed."""
        ranked_runs = state.ranked_runs + decision.new_ranked
        unranked_runs = state.unranked_runs + decision.new_unranked
        if state.complete:
            if ranked_runs + unranked_runs > 4 * keep:
                return None  # a whole sweep arrived at once: scanning is as cheap as searching
            threshold = None
        elif not state.board:
            return None
        else:
            op = "<=" if rule.ascending else ">="
            threshold = f"{metric_ref(rule.metric)} {op} {number_literal(state.board[-1].value)}"
        runs = self.tracking.search_runs(
            [exp.experiment_id], and_filters(FINISHED_FILTER, threshold, rule.filter)
        )
        fresh, _ = split_ranked(runs, rule.metric)
        merged = merge_board(
            state.board, state.complete, fresh, ascending=rule.ascending, top_n=rule.top_n, keep=keep
        )
        if merged is None:
            log.info("board_refill_needed", experiment_name=exp.name, known=len(fresh))
            return None
        board, complete = merged
        current = {r.run_id: podium_tags(r.tags) for r in runs}
        for run_id, tags in state.tags_of_holders().items():
            current.setdefault(run_id, tags)  # not found: deleted or behind the cutoff now
        return _Ranked(board, complete, current, ranked_runs, unranked_runs, decision.seen)

    def _full(
        self,
        exp: ExperimentRecord,
        rule: RuleConfig,
        state: ExperimentState | None,
        keep: int,
    ) -> _Ranked:
        """Rank from every FINISHED run that matches the rule (first pass or a changed rule)."""
        # By run id: a run started during the scan shifts the offset pages, so one may repeat.
        scanned = self.tracking.iter_runs(
            [exp.experiment_id], and_filters(FINISHED_FILTER, rule.filter), page_size=SCAN_PAGE
        )
        runs = list({r.run_id: r for r in scanned}.values())
        holders = self.tracking.search_runs([exp.experiment_id], f"tags.{MODEL_RANK} LIKE '%'")
        candidates, unranked = split_ranked(runs, rule.metric)
        ordered = order(candidates, rule.ascending)
        current = {r.run_id: podium_tags(r.tags) for r in [*runs, *holders]}
        seen = max([r.end_time or 0 for r in runs] + [state.seen if state else 0])
        return _Ranked(ordered[:keep], len(ordered) <= keep, current, len(candidates), unranked, seen)

    def _apply(self, changes: Sequence[TagChange]) -> None:
        """Deletions one call each, then one ``log_batch`` per run (changes come grouped)."""
        i = 0
        while i < len(changes):
            change = changes[i]
            if change.is_delete:
                if not self.tracking.delete_run_tag(change.run_id, change.key):
                    log.info("tag_already_gone", run_id=change.run_id, key=change.key)
                metrics.TAG_WRITES.inc()
                i += 1
                continue
            batch = {}
            while i < len(changes) and changes[i].run_id == change.run_id and not changes[i].is_delete:
                batch[changes[i].key] = changes[i].new
                i += 1
            if not self.tracking.set_run_tags(
                change.run_id, {k: v for k, v in batch.items() if v is not None}
            ):
                log.warning("run_gone_before_tagging", run_id=change.run_id)
            metrics.TAG_WRITES.inc(len(batch))

    def _write_state(self, exp: ExperimentRecord, state: ExperimentState, dry_run: bool) -> None:
        text = state.to_tag()
        if dry_run or exp.tags.get(STATE_TAG) == text:
            return
        self.tracking.set_experiment_tag(exp.experiment_id, STATE_TAG, text)

    # -- on demand (HTTP API) ----------------------------------------------------------------

    def rank_now(
        self,
        experiment_name: str,
        metric: str,
        top_n: int,
        ascending: bool,
        production_candidates: int = 3,
    ) -> Leaderboard:
        """Rank and tag one experiment now, by the same code as a pass.

        Raises :class:`ExperimentNotFound` or :class:`NoRankedRuns`; tracking failures raise
        :class:`TrackingError`. Handlers get the event under an ad-hoc rule named ``api``
        (no webhooks, no registry). When a config rule watches the experiment with the same
        metric and direction, its filter applies too, so the kept board stays valid and both
        rank incrementally; the rule's own ``top_n`` returns with its next pass.
        """
        with self._lock:
            exp = self.tracking.get_experiment_by_name(experiment_name)
            if exp is None:
                raise ExperimentNotFound(f"experiment {experiment_name!r} not found")
            owner = self.settings.rule_for(exp.name)
            same_ranking = owner is not None and (owner.metric, owner.ascending) == (metric, ascending)
            rule = RuleConfig(
                name="api",
                experiments=[experiment_name],
                metric=metric,
                ascending=ascending,
                top_n=top_n,
                production_candidates=min(production_candidates, top_n),
                filter=owner.filter if owner is not None and same_ranking else None,
                trigger="run_finished",
            )
            fp = fingerprint(metric, ascending, rule.filter)
            state = ExperimentState.from_tag(exp.tags.get(STATE_TAG))
            decision: Decision | None = None
            if state is not None and state.fingerprint == fp:
                news = self.tracking.search_runs(
                    [exp.experiment_id],
                    and_filters(FINISHED_FILTER, f"attributes.end_time > {state.seen}", rule.filter),
                )
                ranked, unranked = split_ranked(news, metric)
                seen = max([state.seen] + [r.end_time or 0 for r in news])
                decision = Decision("rerank", seen, len(ranked), unranked)
            with structlog.contextvars.bound_contextvars(experiment_id=exp.experiment_id):
                outcome = self._rank(exp, rule, fp, state, decision, dry_run=False)
            assert outcome.board is not None
            if not outcome.board.entries:
                raise NoRankedRuns(
                    f"experiment {experiment_name!r} has no FINISHED run with a finite {metric!r}"
                )
            return outcome.board


def _call_hook(handler: Handler, hook: str, *args: Any) -> Any:
    """Call one hook of a handler (skipped when it lacks an optional one, see ``PassHooks``).

    A handler's exception is logged and contained: the tags are written when handlers run,
    and one handler's failure must not stop the others or the pass.
    """
    method = getattr(handler, hook, None)
    if not callable(method):
        return None
    try:
        return method(*args)
    except Exception as e:
        log.error("handler_failed", handler=type(handler).__name__, hook=hook, error=str(e), exc_info=True)
        return None


def _event(board: Leaderboard, previous: ExperimentState | None) -> LeaderboardChanged | None:
    """The change against the last pass's board, or None when the top N is the same."""
    old = [c.run_id for c in previous.holders()] if previous is not None else []
    new = [e.run_id for e in board.entries]
    if old == new and previous is not None and previous.top_n == board.top_n:
        return None
    if not old and not new:
        return None
    return LeaderboardChanged(
        board=board,
        new_leader=bool(new) and (not old or old[0] != new[0]),
        entered=tuple(r for r in new if r not in old),
        left=tuple(r for r in old if r not in new),
    )
