"""A pass's apply step: its plans through the one writer, then the handlers told (:class:`Applied`);
or, in a dry run, the plans kept as they are (:class:`Planned`).

Up to ``write_concurrency`` experiments' plans are written at once (the concurrency window of
:meth:`Applied.apply`); a handler's failure is contained in :func:`_hook`.
"""

from __future__ import annotations

import contextvars
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import structlog

from watcher.errors import ExperimentGone
from watcher.mlflow_io import MlflowTracking
from watcher.model import Handler, Rule, WatchedExperiment
from watcher.planner import ExperimentPlan
from watcher.state import STATE_TAG
from watcher.writer import apply_plan

log = structlog.get_logger("watcher")

T = TypeVar("T")


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

    Up to ``concurrency`` experiments' plans are written at once, each experiment's writes
    in the planner's order (which keeps its ranks unique at every step; no two writes to one
    run at once), and the handlers are told in plan order. What reached MLflow is counted,
    not what was planned: the plans applied in full, the experiments with a run tag written
    (a failed pass stops part way) or whose leaderboard event went out, and the adapter's
    count of tag writes. ``progressed`` is called after each plan written, ``gone`` with each
    experiment found deleted while its plan was written.
    """

    def __init__(
        self,
        tracking: MlflowTracking,
        handlers: Sequence[Handler],
        concurrency: int = 1,
        progressed: Callable[[], None] = lambda: None,
        gone: Callable[[str], None] = lambda experiment_id: None,
    ) -> None:
        self.tracking = tracking
        self.handlers = handlers
        self.concurrency = concurrency
        self.progressed = progressed
        self.gone = gone
        self.plans: list[ExperimentPlan] = []
        self._touched: set[str] = set()
        self._writes_before = tracking.tag_writes

    def start(self) -> None:
        # Per-pass state is reset even when the last pass failed (on_pass_end runs after
        # successful passes only).
        for handler in self.handlers:
            _hook(handler, "on_pass_start", lambda h: h.on_pass_start())

    def apply(self, plans: Sequence[ExperimentPlan], watched: Sequence[WatchedExperiment]) -> None:
        """A window of ``concurrency`` plans in flight: the next plan's writes start once the
        oldest one in flight is announced (with 1, write and announce alternate). After a
        failure no new plan starts; those in flight end, each plan written in full is
        announced, then the first failure is raised. A plan whose experiment was deleted
        meanwhile is left (one log line, not announced) and the others go on."""
        listed = {e.experiment_id: e for e in watched}
        before = dict(self.tracking.tag_writes_by_experiment)

        def write(plan: ExperimentPlan) -> None:
            self.write(plan, listed[plan.experiment_id].tags.get(STATE_TAG))
            self.progressed()

        error: Exception | None = None
        waiting = iter(plans)
        in_flight: deque[tuple[ExperimentPlan, Future[None] | None]] = deque()
        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="apply") as pool:

                def start_next() -> None:
                    plan = next(waiting, None)
                    if plan is not None:
                        # A recomputed podium.selection alone (hand-edited tag, same board) is a write too.
                        writes = plan.changes or plan.state is not None or plan.selection_tag is not None
                        run = contextvars.copy_context().run
                        in_flight.append((plan, pool.submit(run, write, plan) if writes else None))

                for _ in range(self.concurrency):
                    start_next()
                while in_flight:
                    plan, future = in_flight.popleft()
                    try:
                        if future is not None:
                            future.result()
                    except ExperimentGone:
                        # Deleted since it was listed: nothing to announce, the others go on.
                        log.warning(
                            "experiment_gone",
                            experiment_id=plan.experiment_id,
                            experiment_name=plan.experiment_name,
                            reason="deleted_before_writing",
                        )
                        self.gone(plan.experiment_id)
                        if error is None:
                            start_next()
                        continue
                    except Exception as e:
                        error = error or e
                        continue
                    if error is not None and future is None:
                        continue
                    rule = listed[plan.experiment_id].rule
                    assert rule is not None
                    self.announce(plan, rule)
                    self.plans.append(plan)
                    if error is None:
                        start_next()
        finally:
            # A plan that failed part way still changed what it wrote.
            after = self.tracking.tag_writes_by_experiment
            self._touched.update(e for e, n in after.items() if n > before.get(e, 0))
        if error is not None:
            raise error

    def apply_one(self, plan: ExperimentPlan, stored_state: str | None, rule: Rule) -> None:
        """Write one experiment's plan, then tell the handlers what it changed."""
        self.write(plan, stored_state)
        self.announce(plan, rule)

    def write(self, plan: ExperimentPlan, stored_state: str | None) -> None:
        with structlog.contextvars.bound_contextvars(experiment_id=plan.experiment_id):
            apply_plan(self.tracking, plan, stored_state)

    def announce(self, plan: ExperimentPlan, rule: Rule) -> None:
        """Log what a written plan changed and tell the handlers."""
        with structlog.contextvars.bound_contextvars(experiment_id=plan.experiment_id):
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
