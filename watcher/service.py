"""One pass: gather and decide (:mod:`watcher.engine` over :func:`watcher.planner.decide_batch`),
then apply (:class:`Applied`: the adapter's one writer, then the handlers); and on-demand
ranking for the HTTP API by the same code.

A dry run is the same pass whose apply step (:class:`Planned`) keeps the plan: it is returned
and printed, nothing is written, no handler is called. ``POST /models/rank`` plans first and raises before anything is written when the
answer is an error (unknown experiment, no ranked run).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import structlog

from watcher import metrics
from watcher.engine import PassEngine, and_filters, metric_ref, number_literal, watched_experiments
from watcher.errors import ExperimentNotFound, NoRankedRuns, WatcherError
from watcher.mlflow_io import MlflowTracking
from watcher.model import ON_DEMAND_RULE, Handler, Leaderboard, Rule, WatchedExperiment
from watcher.planner import ExperimentPlan
from watcher.selection import details, plain_line
from watcher.settings import RuleConfig, WatcherSettings
from watcher.state import STATE_TAG

log = structlog.get_logger("watcher")

T = TypeVar("T")

__all__ = ["PassHealth", "PassResult", "Watcher", "and_filters", "metric_ref", "number_literal"]


@dataclass(frozen=True)
class PassResult:
    """What one pass did. ``experiments_changed``, ``tag_writes`` and ``outcomes`` count what
    reached MLflow (the run tag writes it accepted, the experiments they touched or whose
    leaderboard event went out, the plans applied in full), so a pass that fails part way
    reports what it wrote, not what it planned; a dry run reports its plan."""

    pass_id: str
    ok: bool
    dry_run: bool
    started_at: float
    duration_seconds: float
    experiments_checked: int
    experiments_changed: int
    tag_writes: int
    tracking_calls: int
    outcomes: tuple[ExperimentPlan, ...] = ()
    error: str | None = None
    # What the handlers did (e.g. webhooks_failed), from their optional ``pass_report()``.
    handler_report: Mapping[str, int] = field(default_factory=dict)


@dataclass
class PassHealth:
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


# Seconds between sweeps: passes that also search the top_{N}/production_candidate holders of
# every watched experiment (two calls per batch) and re-rank each idle one from its kept cutoff
# (one threshold search each). Hand-set tags on runs without model_rank, and a run whose end
# time was older than the watermark when it appeared, are put right within this time even when
# nothing finishes; every other idle pass stays at 3 calls per batch.
SWEEP_SECONDS = 900.0


def stall_check_interval(rule: Rule) -> float:
    """Seconds between searches for stalled runs of a rule that waits for none: a tenth of
    its ``stalled_after_minutes`` (at most 10 minutes), so a stall is announced late by at
    most that much and idle passes mostly skip the search."""
    return min(600.0, rule.stalled_after_minutes * 6.0)


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
        self.health = PassHealth(poll_interval_seconds=settings.poll_interval_seconds)
        self.last_result: PassResult | None = None
        self.engine = PassEngine(tracking)
        self.selections: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stall_checked: dict[str, float] = {}
        self._swept = clock()

    # -- a pass ------------------------------------------------------------------------------

    def run_pass(self, dry_run: bool = False, sweep: bool | None = None) -> PassResult:
        """Reconcile every watched experiment once; never raises (failures are in the result).

        ``sweep``: also search the ``top_{N}``/``production_candidate`` holders of every
        watched experiment and re-rank each idle one from its kept cutoff (see
        ``SWEEP_SECONDS``). None leaves it to the daemon's clock; a one-off pass (``--once``)
        asks for it, since no later pass will put a hand-set tag or a late run right.
        """
        with self._lock:
            return self._run_pass(dry_run, sweep)

    def _stall_checks(self, now: float) -> dict[str, bool]:
        due = {}
        for rule in self.settings.rules:
            if "stalled" not in rule.alerts:
                continue
            last = self._stall_checked.get(rule.name)
            due[rule.name] = last is None or now - last >= stall_check_interval(rule)
            if due[rule.name]:
                self._stall_checked[rule.name] = now
        return due

    def _run_pass(self, dry_run: bool, sweep: bool | None) -> PassResult:
        pass_id = uuid.uuid4().hex[:12]
        started = self.clock()
        wall = time.perf_counter()
        calls_before = self.tracking.calls
        # The apply step: the one writer and the handlers, or (a dry run) the plan kept as it is.
        apply: Apply = Planned() if dry_run else Applied(self.tracking, self.handlers)
        watched: list[WatchedExperiment] = []
        error: str | None = None
        report: dict[str, int] = {}
        with structlog.contextvars.bound_contextvars(pass_id=pass_id):
            log.info("pass_started", dry_run=dry_run)
            apply.start()
            try:
                watched = watched_experiments(self.settings, self.tracking)
                if sweep is None:
                    sweep = started - self._swept >= SWEEP_SECONDS
                plans = self.engine.plan_pass(
                    self.settings, watched, int(started * 1000), self._stall_checks(started), sweep
                )
                if sweep:
                    self._swept = started
                apply.apply(plans, watched)
                if not dry_run:
                    self._keep_selections(plans)
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
            if ok:
                report = apply.end(watched)
            duration = time.perf_counter() - wall
            result = PassResult(
                pass_id=pass_id,
                ok=ok,
                dry_run=dry_run,
                started_at=started,
                duration_seconds=duration,
                experiments_checked=len(watched),
                experiments_changed=apply.experiments_changed(),
                tag_writes=apply.tag_writes(),
                tracking_calls=self.tracking.calls - calls_before,
                outcomes=tuple(apply.plans),
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

    def _keep_selections(self, plans: Sequence[ExperimentPlan]) -> None:
        """The statistics computed this pass, as ``GET /api/experiments/{id}/selection`` shows
        them (the tag's JSON, λ per split, the tied and left-out runs); kept until the next
        computation for the experiment, in this process only."""
        for plan in plans:
            if plan.selection is not None and plan.selection_tag is not None:
                view = {**json.loads(plan.selection_tag), **details(plan.selection)}
                if plan.board is not None and plan.board.leader is not None:
                    view["line"] = plain_line(plan.selection, plan.board.leader.run_id)
                self.selections[plan.experiment_id] = view

    def selection_view(self, experiment_id: str) -> dict[str, Any] | None:
        return self.selections.get(experiment_id)

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

    # -- on demand (HTTP API) ----------------------------------------------------------------

    def rank_now(
        self,
        experiment_name: str,
        metric: str,
        top_n: int,
        ascending: bool,
        production_candidates: int = 3,
    ) -> Leaderboard:
        """Rank and tag one experiment now, by the same planner as a pass.

        Raises :class:`ExperimentNotFound` or :class:`NoRankedRuns` before anything is
        written; tracking failures raise :class:`TrackingError`. Handlers get the event under
        an ad-hoc rule named ``api`` (no webhooks, no registry, no alerts). When a config
        rule watches the experiment with the same metric and direction, its filter applies
        too, so the kept board stays valid; the rule's own ``top_n`` returns with its next pass.
        """
        with self._lock:
            exp = self.tracking.get_experiment_by_name(experiment_name)
            if exp is None:
                raise ExperimentNotFound(f"experiment {experiment_name!r} not found")
            owner = self.settings.rule_for(exp.name)
            same_ranking = owner is not None and (owner.metric, owner.ascending) == (metric, ascending)
            rule = RuleConfig(
                name=ON_DEMAND_RULE,
                experiments=[experiment_name],
                metric=metric,
                ascending=ascending,
                top_n=top_n,
                production_candidates=min(production_candidates, top_n),
                filter=owner.filter if owner is not None and same_ranking else None,
                trigger="run_finished",
            )
            watched = WatchedExperiment(exp.experiment_id, exp.name, dict(exp.tags), rule)
            with structlog.contextvars.bound_contextvars(experiment_id=exp.experiment_id):
                plan = self.engine.plan_batch(rule, [watched], int(self.clock() * 1000), force_rank=True)[0]
                board = plan.board
                assert board is not None
                if not board.entries:
                    raise NoRankedRuns(
                        f"experiment {experiment_name!r} has no FINISHED run with a finite {metric!r}"
                    )
                Applied(self.tracking, self.handlers).apply_one(plan, exp.tags.get(STATE_TAG), rule)
            return board


def _hook(handler: Handler, hook: str, call: Callable[[Handler], T]) -> T | None:
    """Call one hook of a handler (``call(handler)``; ``hook`` names it in the log).

    A handler's exception is logged and contained: the tags are written when handlers run,
    and one handler's failure must not stop the others or the pass.
    """
    try:
        return call(handler)
    except Exception as e:
        log.error("handler_failed", handler=type(handler).__name__, hook=hook, error=str(e), exc_info=True)
        return None


class Apply(Protocol):
    """The last step of a pass: what happens to its plans. ``plans`` are the plans applied in
    full (a dry run: every plan); the counts say what reached MLflow."""

    plans: list[ExperimentPlan]

    def start(self) -> None: ...

    def apply(self, plans: Sequence[ExperimentPlan], watched: Sequence[WatchedExperiment]) -> None: ...

    def end(self, watched: Sequence[WatchedExperiment]) -> dict[str, int]: ...

    def experiments_changed(self) -> int: ...

    def tag_writes(self) -> int: ...


@dataclass
class Planned:
    """A dry run's apply step: nothing is written and no handler is called; the counts are
    the plan's."""

    plans: list[ExperimentPlan] = field(default_factory=list)

    def start(self) -> None:
        return None

    def apply(self, plans: Sequence[ExperimentPlan], watched: Sequence[WatchedExperiment]) -> None:
        self.plans = list(plans)

    def end(self, watched: Sequence[WatchedExperiment]) -> dict[str, int]:
        return {}

    def experiments_changed(self) -> int:
        return sum(1 for p in self.plans if p.changes or p.event)

    def tag_writes(self) -> int:
        return sum(len(p.changes) for p in self.plans)


class Applied:
    """A pass's apply step: every plan through the one writer, the handlers told.

    What reached MLflow is counted, not what was planned: the plans applied in full, the
    experiments with a run tag written (a failed pass stops part way) or whose leaderboard
    event went out, and the adapter's count of tag writes.
    """

    def __init__(self, tracking: MlflowTracking, handlers: Sequence[Handler]) -> None:
        self.tracking = tracking
        self.handlers = handlers
        self.plans: list[ExperimentPlan] = []
        self._touched: set[str] = set()
        self._writes_before = tracking.tag_writes

    def start(self) -> None:
        # Per-pass state is reset even when the last pass failed (on_pass_end runs after
        # successful passes only).
        for handler in self.handlers:
            _hook(handler, "on_pass_start", lambda h: h.on_pass_start())

    def apply(self, plans: Sequence[ExperimentPlan], watched: Sequence[WatchedExperiment]) -> None:
        listed = {e.experiment_id: e for e in watched}
        for p in plans:
            exp = listed[p.experiment_id]
            assert exp.rule is not None
            writes = self.tracking.tag_writes
            try:
                self.apply_one(p, exp.tags.get(STATE_TAG), exp.rule)
            finally:
                # A plan that failed part way still changed what it wrote.
                if self.tracking.tag_writes > writes:
                    self._touched.add(p.experiment_id)
            self.plans.append(p)

    def apply_one(self, plan: ExperimentPlan, stored_state: str | None, rule: Rule) -> None:
        """Write one experiment's plan, then tell the handlers what it changed."""
        with structlog.contextvars.bound_contextvars(experiment_id=plan.experiment_id):
            self.tracking.apply_plan(plan, stored_state)
            if plan.changes:
                log.info(
                    "experiment_ranked",
                    experiment_name=plan.experiment_name,
                    rule=plan.rule,
                    action=plan.action,
                    tag_changes=len(plan.changes),
                )
            if plan.event is not None:
                event = plan.event
                log.info(
                    "leaderboard_changed",
                    experiment_name=plan.experiment_name,
                    new_leader=event.new_leader,
                    entered=len(event.entered),
                    left=len(event.left),
                )
                for handler in self.handlers:
                    _hook(handler, "on_leaderboard_changed", lambda h: h.on_leaderboard_changed(event, rule))
            for alert in plan.alerts:
                log.warning(
                    "run_alert", kind=alert.kind, run_id=alert.run_id, experiment_name=alert.experiment_name
                )
                for handler in self.handlers:
                    _hook(handler, "on_run_alert", lambda h: h.on_run_alert(alert, rule))  # noqa: B023

    def end(self, watched: Sequence[WatchedExperiment]) -> dict[str, int]:
        report: dict[str, int] = {}
        for handler in self.handlers:
            _hook(handler, "on_pass_end", lambda h: h.on_pass_end(watched))
            report.update(_hook(handler, "pass_report", lambda h: h.pass_report()) or {})
        return report

    def experiments_changed(self) -> int:
        return len(self._touched | {p.experiment_id for p in self.plans if p.event})

    def tag_writes(self) -> int:
        return self.tracking.tag_writes - self._writes_before
