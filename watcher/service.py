"""One pass: the agenda (:mod:`watcher.schedule`) -> the reads and the decision
(:mod:`watcher.reader` over :func:`watcher.planner.decide_batch`) -> the apply step
(:mod:`watcher.apply`: the one writer, then the handlers) -> the next memory; and on-demand
ranking for the HTTP API by the same code.

What the daemon remembers between passes is one :class:`~watcher.memory.DaemonMemory`, replaced
whole after each pass; what a pass reads for itself is a local value of the pass. A dry run is
the same pass whose apply step (:class:`~watcher.apply.Planned`) keeps the plan: it is returned
and printed, nothing is written, no handler is called. ``POST /models/rank`` plans first and
raises before anything is written when the answer is an error (unknown experiment, no ranked
run).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from typing import Any

import structlog

from watcher import metrics, schedule
from watcher.apply import Applied, Apply, Planned
from watcher.errors import ExperimentNotFound, NoRankedRuns, WatcherError
from watcher.lister import AFRESH_LIMIT, ListingReader, watched_from, with_afresh
from watcher.listing import KeptListing
from watcher.memory import DaemonMemory
from watcher.mlflow_io import MlflowTracking
from watcher.model import ON_DEMAND_RULE, Handler, Leaderboard, WatchedExperiment
from watcher.planner import Agenda
from watcher.reader import PassReader
from watcher.report import PassHealth, PassResult
from watcher.schedule import HOLDER_CHECK_RUNS
from watcher.searches import PassScratch
from watcher.settings import RuleConfig, WatcherSettings
from watcher.state import STATE_TAG

log = structlog.get_logger("watcher")

__all__ = ["PassHealth", "PassResult", "Watcher"]


class Watcher:
    """Reconciles leaderboards; one pass at a time (``run_pass`` and ``rank_now`` share a lock).

    ``memory`` is what the daemon remembers between passes (the kept listing, the search floors,
    the holder- and stall-check schedules, the per-fold values, the selection views), in this
    process only; each pass replaces it whole."""

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
        self.health = PassHealth(poll_interval_seconds=settings.poll_interval_seconds, started_at=clock())
        self.last_result: PassResult | None = None
        self.reader = PassReader(tracking, progressed=self._read)
        self._passing = False
        self._lock = threading.Lock()
        self.holder_check_runs = HOLDER_CHECK_RUNS
        self.afresh_limit = AFRESH_LIMIT
        # Real elapsed time, for how long a server's late commits may take (see watcher.listing).
        self.monotonic: Callable[[], float] = time.monotonic
        # Every experiment tag this process writes, the delivery worker's too, is written
        # through to the kept listing.
        listing = KeptListing(lambda name: self.settings.rule_for(name) is not None)
        tracking.tag_listeners.append(listing.tag_written)
        self.memory = DaemonMemory(listing)

    # -- a pass ------------------------------------------------------------------------------

    def run_pass(
        self,
        dry_run: bool = False,
        sweep: bool | Collection[str] | None = None,
        holder_check: bool | None = None,
    ) -> PassResult:
        """Reconcile every watched experiment once; never raises (failures are in the result).

        ``sweep`` and ``holder_check`` say what the pass sweeps and whose holders it reads (see
        :func:`watcher.schedule.agenda`): None, as the schedule says; True, every watched
        experiment (a sweep: or the ids given; a one-off pass asks for every holder check: no
        later pass would put a hand-set tag right); False, none.
        """
        with self._lock:
            self._passing = True
            try:
                return self._run_pass(dry_run, sweep, holder_check)
            finally:
                self._passing = False

    def _run_pass(
        self, dry_run: bool, sweep: bool | Collection[str] | None, holder_check: bool | None
    ) -> PassResult:
        pass_id = uuid.uuid4().hex[:12]
        started = self.clock()
        wall = time.perf_counter()
        calls_before = self.tracking.calls
        settings = self.settings
        lister = ListingReader(
            settings, self.tracking, self.memory.listing, self.clock, self.monotonic, self.afresh_limit
        )
        scratch = PassScratch(known=self.memory.fold_values)
        # The apply step: the one writer and the handlers, or (a dry run) the plan kept as it is.
        apply: Apply = (
            Planned()
            if dry_run
            else Applied(
                self.tracking, self.handlers, settings.write_concurrency, self._progressed, lister.forget
            )
        )
        watched: list[WatchedExperiment] = []
        agenda: Agenda | None = None
        error: str | None = None
        report: dict[str, int] = {}
        deferred = 0
        with structlog.contextvars.bound_contextvars(pass_id=pass_id):
            log.info("pass_started", dry_run=dry_run)
            apply.start()
            try:
                full = lister.update(started)
                watched = watched_from(settings, self.memory.listing.records())
                agenda = schedule.agenda(
                    self.memory,
                    watched,
                    started,
                    settings,
                    listed=not full,
                    dry_run=dry_run,
                    sweep=sweep,
                    holder_check=holder_check,
                    latest=self.reader.latest_of_first_rankings(settings, watched),
                    holder_check_runs=self.holder_check_runs,
                )
                _say_if_behind(agenda)
                plans = self.reader.plan_pass(settings, watched, agenda, scratch, lister)
                if lister.found_afresh:
                    watched = with_afresh(watched, lister.found_afresh)
                deferred = schedule.rankings_deferred(agenda, plans, watched)
                apply.apply(plans, watched)
                self.memory = schedule.remember(
                    self.memory,
                    agenda,
                    plans,
                    scratch.searched,
                    watched={e.experiment_id for e in watched},
                    fold_values=scratch.fold_values,
                    checked_at=self.clock(),
                    rankings_deferred=deferred,
                    dry_run=dry_run,
                )
            except Exception as e:  # the daemon must survive anything one pass runs into
                error = str(e) or type(e).__name__
                # A traceback only for bugs; a down server or a bad filter is said in one line.
                log.error(
                    "pass_failed",
                    error=error,
                    error_type=type(e).__name__,
                    exc_info=not isinstance(e, WatcherError),
                )
                if agenda is not None:
                    self.memory = schedule.after_failure(self.memory, agenda, scratch.fold_values)
            ok = error is None
            if ok:
                report = apply.end(watched)
            checks_deferred = agenda.holder_checks_deferred if agenda is not None else 0
            result = PassResult(
                pass_id=pass_id,
                ok=ok,
                dry_run=dry_run,
                started_at=started,
                duration_seconds=time.perf_counter() - wall,
                experiments_checked=len(watched),
                experiments_changed=apply.experiments_changed(),
                tag_writes=apply.tag_writes(),
                tracking_calls=self.tracking.calls - calls_before,
                outcomes=tuple(apply.plans),
                error=error,
                handler_report=report,
                rankings_deferred=deferred,
                holder_checks_deferred=checks_deferred,
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
                duration_seconds=round(result.duration_seconds, 3),
                **({"rankings_deferred": deferred} if deferred else {}),
                **({"holder_checks_deferred": checks_deferred} if checks_deferred else {}),
                **report,
            )
        return result

    def selection_view(self, experiment_id: str) -> dict[str, Any] | None:
        """The selection statistics last computed for the experiment, as the API shows them."""
        return self.memory.selections.get(experiment_id)

    def _progressed(self) -> None:
        self.health.last_progress_at = self.clock()

    def _read(self) -> None:
        """A pass's read answered (a page, a board): progress; an API ranking's is not."""
        if self._passing:
            self._progressed()

    def _record(self, result: PassResult) -> None:
        self.last_result = result
        metrics.PASSES.labels(outcome="ok" if result.ok else "failed").inc()
        metrics.PASS_DURATION.observe(result.duration_seconds)
        ended = result.started_at + result.duration_seconds
        self.health.last_pass_at = ended
        self.health.last_ok = result.ok
        self.health.last_progress_at = None
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
                agenda = Agenda.on_demand(self.clock(), exp.experiment_id)
                scratch = PassScratch(known=self.memory.fold_values)
                plan = self.reader.plan_batch(rule, [watched], agenda, scratch)[0]
                if scratch.fold_values:
                    folds = {**self.memory.fold_values, **scratch.fold_values}
                    self.memory = replace(self.memory, fold_values=folds)
                board = plan.board
                assert board is not None
                if not board.entries:
                    raise NoRankedRuns(
                        f"experiment {experiment_name!r} has no FINISHED run with a finite {metric!r}"
                    )
                Applied(self.tracking, self.handlers).apply_one(plan, exp.tags.get(STATE_TAG), rule)
            return board


def _say_if_behind(agenda: Agenda) -> None:
    """Warn once when an experiment waits for its check a whole interval past due: a round
    of checks (``holder_check_runs`` holder runs a pass) takes longer than
    ``holder_check_seconds``, so the daemon runs passes back to back for good."""
    if agenda.holder_checks_behind is None:
        return
    log.warning(
        "holder_checks_behind",
        holder_check_seconds=agenda.holder_check_seconds,
        longest_unchecked_seconds=round(agenda.holder_checks_behind),
        holder_checks_deferred=agenda.holder_checks_deferred,
        hint="a round of holder checks takes longer than holder_check_seconds: passes run "
        "back to back; raise holder_check_seconds above the round's length",
    )
