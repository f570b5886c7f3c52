"""One pass: gather and decide (:mod:`watcher.engine` over :func:`watcher.planner.decide_batch`),
then apply (:class:`Applied`: the adapter's one writer, then the handlers); and on-demand
ranking for the HTTP API by the same code.

A dry run is the same pass whose apply step (:class:`Planned`) keeps the plan: it is returned
and printed, nothing is written, no handler is called. ``POST /models/rank`` plans first and raises before anything is written when the
answer is an error (unknown experiment, no ranked run).
"""

from __future__ import annotations

import contextvars
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import structlog

from watcher import metrics
from watcher.engine import (
    PassEngine,
    afresh,
    and_filters,
    list_experiments,
    metric_ref,
    number_literal,
    watched_from,
)
from watcher.errors import ExperimentGone, ExperimentNotFound, NoRankedRuns, WatcherError
from watcher.listing import KeptListing
from watcher.mlflow_io import MlflowTracking
from watcher.model import (
    ON_DEMAND_RULE,
    SWEEP_SECONDS,
    ExperimentRecord,
    Handler,
    Leaderboard,
    Rule,
    WatchedExperiment,
)
from watcher.planner import RANKING, ExperimentPlan, includes
from watcher.selection import details, plain_line
from watcher.settings import RuleConfig, WatcherSettings
from watcher.state import STATE_TAG, UNRANKED, ExperimentState, fingerprint
from watcher.writer import apply_plan

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
    # First rankings left for later passes (``max_rankings_per_pass``): the daemon goes on
    # at once while there are some.
    rankings_deferred: int = 0
    # Experiments whose holder check was due but did not fit this pass (``HOLDER_CHECK_RUNS``):
    # the daemon goes on at once while there are some.
    holder_checks_deferred: int = 0


@dataclass
class PassHealth:
    """What ``GET /healthz`` reports; times are unix seconds from the watcher's clock."""

    poll_interval_seconds: float
    # When the watcher started: it is given three poll intervals for its first success.
    started_at: float
    last_pass_at: float | None = None
    last_ok: bool | None = None
    last_success_at: float | None = None
    # When the pass in flight last had a read answered (a page of a batch search, a board) or
    # wrote an experiment's plan: a long pass makes progress long before it ends. Cleared when
    # the pass ends: a failed pass is no progress.
    last_progress_at: float | None = None

    def status(self, now: float) -> Literal["ok", "starting", "unhealthy"]:
        """``ok`` while a pass succeeded, or the pass in flight made progress, within three poll
        intervals; ``starting`` while neither happened yet and the watcher started within three
        poll intervals; else ``unhealthy``."""
        times = [t for t in (self.last_success_at, self.last_progress_at) if t is not None]
        since = max(times) if times else self.started_at
        if now - since > 3 * self.poll_interval_seconds:
            return "unhealthy"
        return "ok" if times else "starting"

    def is_healthy(self, now: float) -> bool:
        return self.status(now) != "unhealthy"


def sweep_due(
    watched: Sequence[WatchedExperiment],
    now_ms: int,
    limit: int,
    asked: bool | Collection[str] | None = None,
) -> list[str]:
    """The ranked experiments a pass sweeps, the longest unswept first, at most ``limit``:
    those whose last sweep is older than ``SWEEP_SECONDS`` (or unknown), or, ``asked`` (True:
    every one, else the ids), those asked for whatever their last sweep. A pass sweeps no more
    than it may re-rank: the rest would be read (their tag holders) and left waiting."""
    due: list[tuple[int, str]] = []
    for exp in watched:
        state = ExperimentState.from_tag(exp.tags.get(STATE_TAG))
        if state is None or state.fingerprint == UNRANKED:
            continue
        if asked is None:
            if state.swept is not None and now_ms - state.swept < SWEEP_SECONDS * 1000:
                continue
        elif not includes(asked, exp.experiment_id):
            continue
        due.append((state.swept or 0, exp.experiment_id))
    return [i for _, i in sorted(due)[:limit]]


# Holder runs one pass's holder check reads at most: MLflow's search returns whole runs, and
# reading a trainer-sized run (30 params, 40 metrics) costs 5-14 ms, server and client, so this
# keeps a pass with a due check near a second. The experiments left over are checked by the passes that
# follow at once, the longest unchecked first.
HOLDER_CHECK_RUNS = 150


# How far behind a pass's start the floor it keeps for an experiment stays (see
# Watcher._keep_floors): a run's end time is its trainer's clock, so a run of an idle experiment
# that ends while another is re-ranked is still read when that trainer's clock is up to this
# much behind the watcher's (or its commit this late). An idle pass reads again at most the
# runs that ended this long before it; at the default poll interval, each run about once more.
FLOOR_MARGIN_SECONDS = 60.0

# The actions after which a pass has decided every run its batch search returned for an
# experiment (see Watcher._keep_floors).
FLOOR_ACTIONS = frozenset({"idle", "advance", "rerank", "full"})


def holder_checks_due(
    watched: Sequence[WatchedExperiment],
    checked_at: Mapping[str, float],
    now: float,
    interval: float,
    budget: int = HOLDER_CHECK_RUNS,
) -> tuple[list[str], int]:
    """The ranked experiments whose holders this pass reads, and how many more are due.

    Due: not checked within ``interval`` seconds (or never), the longest unchecked first, taken
    while their holders (the top N of the kept board; an empty board counts one) fit ``budget``
    runs; the first always goes. ``interval`` 0 takes every ranked experiment, every pass. An
    experiment not ranked yet has no holders to check: its first ranking reads them."""
    due: list[tuple[float, str, int]] = []
    for exp in watched:
        state = ExperimentState.from_tag(exp.tags.get(STATE_TAG))
        if state is None or state.fingerprint == UNRANKED:
            continue
        last = checked_at.get(exp.experiment_id)
        if interval == 0 or last is None or now - last >= interval:
            due.append((-1.0 if last is None else last, exp.experiment_id, max(1, len(state.holders()))))
    if interval == 0:
        return [i for _, i, _ in due], 0
    taken: list[str] = []
    runs = 0
    for _, exp_id, holders in sorted(due):
        if taken and runs + holders > budget:
            break
        taken.append(exp_id)
        runs += holders
    return taken, len(due) - len(taken)


def needs_first_ranking(exp: WatchedExperiment) -> bool:
    """The experiment's state holds no ranking by its rule's current definition."""
    rule = exp.rule
    assert rule is not None
    state = ExperimentState.from_tag(exp.tags.get(STATE_TAG))
    return state is None or state.fingerprint != fingerprint(rule.metric, rule.ascending, rule.filter)


# Experiments with news a pass reads afresh one by one (one call each) when their tags came from
# the kept listing; more are read in one full listing.
REREAD_LIMIT = 20


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
        self.health = PassHealth(poll_interval_seconds=settings.poll_interval_seconds, started_at=clock())
        self.last_result: PassResult | None = None
        self.engine = PassEngine(tracking, progressed=self._read)
        self._passing = False
        self.selections: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stall_checked: dict[str, float] = {}
        # When each experiment's holders were last read by a holder check (this process only:
        # a restarted daemon checks every experiment again).
        self._holders_checked: dict[str, float] = {}
        self.holder_check_runs = HOLDER_CHECK_RUNS
        # Said once while the holder checks cannot keep up with holder_check_seconds.
        self._holder_checks_behind = False
        # The watched experiments' records, kept between passes (experiment_list_seconds); every
        # experiment tag this process writes, the delivery worker's too, is written through.
        self.listing = KeptListing(lambda name: self.settings.rule_for(name) is not None)
        tracking.tag_listeners.append(self.listing.tag_written)
        # Real elapsed time, for how long a server's late commits may take (see watcher.listing).
        self.monotonic: Callable[[], float] = time.monotonic
        # Records read afresh this pass (None: gone or deleted), by id.
        self._afresh: dict[str, ExperimentRecord | None] = {}
        self._listed_in_pass = False
        self.reread_limit = REREAD_LIMIT

    # -- a pass ------------------------------------------------------------------------------

    def run_pass(
        self,
        dry_run: bool = False,
        sweep: bool | Collection[str] | None = None,
        holder_check: bool | None = None,
    ) -> PassResult:
        """Reconcile every watched experiment once; never raises (failures are in the result).

        ``sweep``: True sweeps every watched experiment (searches its ``top_{N}``/
        ``production_candidate`` holders, re-ranks it from its kept cutoff), or the ids given;
        None those whose last sweep, kept in MLflow, is older than ``SWEEP_SECONDS``; False none.
        ``holder_check``: True reads the holders of every watched experiment; None those not
        read for ``holder_check_seconds``, at most ``holder_check_runs`` holder runs (a one-off
        pass asks for all: no later pass would put a hand-set tag right); False none.
        """
        with self._lock:
            self._passing = True
            try:
                return self._run_pass(dry_run, sweep, holder_check)
            finally:
                self._passing = False

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

    def _holder_checks(self, watched: Sequence[WatchedExperiment], now: float) -> tuple[list[str], int]:
        """The experiments whose holder check is due (see :func:`holder_checks_due`), counted
        from the end of their last check; none while the passes catch up with first rankings
        left by the last one (each reads its own holders)."""
        interval = self.settings.holder_check_seconds
        previous = self.last_result
        if previous is not None and previous.ok and previous.rankings_deferred and interval > 0:
            return [], 0
        due, deferred = holder_checks_due(
            watched, self._holders_checked, now, interval, self.holder_check_runs
        )
        self._say_if_behind(due, deferred, now, interval)
        return due, deferred

    def _say_if_behind(self, due: Sequence[str], deferred: int, now: float, interval: float) -> None:
        """Warn once when an experiment waits for its check a whole interval past due: a round
        of checks (``holder_check_runs`` holder runs a pass) takes longer than
        ``holder_check_seconds``, so the daemon runs passes back to back for good."""
        if not deferred:
            self._holder_checks_behind = False
            return
        last = [self._holders_checked[i] for i in due if i in self._holders_checked]
        waited = now - min(last) if last else 0.0
        if interval > 0 and waited > 2 * interval and not self._holder_checks_behind:
            self._holder_checks_behind = True
            log.warning(
                "holder_checks_behind",
                holder_check_seconds=interval,
                longest_unchecked_seconds=round(waited),
                holder_checks_deferred=deferred,
                hint="a round of holder checks takes longer than holder_check_seconds: passes run "
                "back to back; raise holder_check_seconds above the round's length",
            )

    def _admitted(self, watched: Sequence[WatchedExperiment]) -> tuple[set[str] | None, int]:
        """The experiments this pass may rank for the first time (None: every one) and how
        many wait for a later pass: at most ``max_rankings_per_pass``, those whose runs ended
        last first."""
        limit = self.settings.max_rankings_per_pass
        firsts = [e for e in watched if needs_first_ranking(e)]
        if len(firsts) <= limit:
            return None, 0
        latest: dict[str, int] = {}
        for rule in self.settings.rules:
            ids = [e.experiment_id for e in firsts if e.rule is not None and e.rule.name == rule.name]
            latest.update(self.engine.latest_ends(rule, ids, limit))
        order = sorted(firsts, key=lambda e: (-latest.get(e.experiment_id, 0), e.name))
        return {e.experiment_id for e in order[:limit]}, len(firsts) - limit

    def _run_pass(
        self, dry_run: bool, sweep: bool | Collection[str] | None, holder_check: bool | None
    ) -> PassResult:
        pass_id = uuid.uuid4().hex[:12]
        started = self.clock()
        wall = time.perf_counter()
        calls_before = self.tracking.calls
        # The apply step: the one writer and the handlers, or (a dry run) the plan kept as it is.
        apply: Apply = (
            Planned()
            if dry_run
            else Applied(
                self.tracking, self.handlers, self.settings.write_concurrency, self._progressed, self._forget
            )
        )
        watched: list[WatchedExperiment] = []
        error: str | None = None
        report: dict[str, int] = {}
        deferred = checks_deferred = 0
        with structlog.contextvars.bound_contextvars(pass_id=pass_id):
            log.info("pass_started", dry_run=dry_run)
            apply.start()
            try:
                self._afresh = {}
                self._listed_in_pass = False
                full = self._list(started)
                searched: dict[str, int] | None = None if dry_run else {}
                watched = watched_from(self.settings, self.listing.records())
                now_ms = int(started * 1000)
                check: bool | list[str] = holder_check if holder_check is not None else False
                if holder_check is None:
                    check, checks_deferred = self._holder_checks(watched, started)
                admit, deferred = self._admitted(watched)
                limit = self.settings.max_rankings_per_pass
                plans = self.engine.plan_pass(
                    self.settings,
                    watched,
                    now_ms,
                    self._stall_checks(started),
                    sweep_due(watched, now_ms, limit, sweep) if sweep is not False else False,
                    holder_check=check,
                    admit=admit,
                    reranks=limit,
                    reread=None if full else self._reread,
                    searched=searched,
                )
                if self._afresh:
                    watched = afresh(watched, self._afresh)
                # Re-ranks beyond the limit wait too (first rankings were counted above).
                waiting = {p.experiment_id for p in plans if p.reason == "deferred"}
                deferred += sum(
                    1 for e in watched if e.experiment_id in waiting and not needs_first_ranking(e)
                )
                apply.apply(plans, watched)
                # The experiments checked, and those ranked (a ranking reads its holders first);
                # not those whose ranking waits: their next check must find what this one did.
                checked = [e.experiment_id for e in watched] if check is True else list(check or [])
                checked += [p.experiment_id for p in plans if p.action in RANKING]
                checked = [i for i in checked if i not in waiting]
                self._holders_checked.update(dict.fromkeys(checked, self.clock()))
                if searched is not None:
                    self._keep_floors(plans, searched, now_ms)
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
                duration_seconds=round(duration, 3),
                **({"rankings_deferred": deferred} if deferred else {}),
                **({"holder_checks_deferred": checks_deferred} if checks_deferred else {}),
                **report,
            )
        return result

    def _list(self, now: float, *, full: bool = False) -> bool:
        """Bring the kept listing up to date: every watched experiment when a full listing is
        due (or ``full``), else the experiments created, renamed, deleted or restored since the
        last answer. True when it listed them all."""
        listing = self.listing
        full = full or listing.full_due(now, self.settings.experiment_list_seconds)
        started = self.monotonic()
        mark = listing.start()
        try:
            if full:
                found = list_experiments(self.settings, self.tracking)
            else:
                found = self.tracking.search_experiments(
                    f"last_update_time >= {listing.since()}", deleted_too=True
                )
        except BaseException:
            listing.abandon(mark)
            raise
        if full:
            listing.listed(mark, found, now, self.monotonic())
            self._listed_in_pass = True
        else:
            listing.changed(mark, found, started, self.monotonic())
        return full

    def _reread(self, ids: Sequence[str]) -> dict[str, ExperimentRecord | None]:
        """The experiments ``ids`` as they are now (one call each; more than ``reread_limit``:
        one full listing; none when this pass listed them all already), kept in the listing
        too."""
        if len(ids) > self.reread_limit or self._listed_in_pass:
            if not self._listed_in_pass:  # another batch of this pass may have listed them all
                self._list(self.clock(), full=True)
            records = {r.experiment_id: r for r in self.listing.records()}
            found = {i: records.get(i) for i in ids}
        else:
            mark = self.listing.start()
            try:
                found = {i: self.tracking.get_experiment(i) for i in ids}
            except BaseException:
                self.listing.abandon(mark)
                raise
            self.listing.reread(mark, found)
        self._afresh.update(found)
        return found

    def _forget(self, experiment_id: str) -> None:
        """An experiment found gone while its plan was written: out of the kept listing (a
        hard-deleted one, ``mlflow gc``, is never seen by the search for changes)."""
        self.listing.reread(self.listing.start(), {experiment_id: None})

    def _keep_floors(self, plans: Sequence[ExperimentPlan], searched: Mapping[str, int], now_ms: int) -> None:
        """After a pass's plans were written: the end time up to which the batch search read
        each experiment becomes the experiment's floor (the next searches start there), where
        the pass decided everything it read — nothing new, or ranked (its state moved past its
        news) — not where the news waits (a deferred re-rank, a board still counting, a trigger
        waiting for the last run). Experiments no longer searched lose theirs.

        The end times come from every experiment's trainers: a run of this experiment that
        ended before another experiment's latest end time may be committed after the search
        (a slow commit, a trainer's clock behind, another's ahead). A floor stays
        ``FLOOR_MARGIN_SECONDS`` before the pass's start (``now_ms``), when every run that ended by
        then was visible to the search."""
        settled = now_ms - int(FLOOR_MARGIN_SECONDS * 1000)
        searched = {i: min(to, settled) for i, to in searched.items()}
        floors = self.engine.floors
        done = {
            p.experiment_id
            for p in plans
            if p.action in FLOOR_ACTIONS and p.reason != "deferred" and p.experiment_id in searched
        }
        self.engine.floors = {
            i: max(to, floors.get(i, to)) if i in done else floors[i]
            for i, to in searched.items()
            if i in done or i in floors
        }

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
