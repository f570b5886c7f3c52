"""The query object: everything the dashboard's routes read, and the caches that keep them cheap.

The experiments table reads the daemon's kept listing through the ``kept`` callable (the
records the last pass kept, or None before the first listing): the route then makes no
listing call. Without a kept listing it lists once itself. Experiments ranked on demand that no
rule watches are not in the kept listing: one narrow search (the experiments whose state names
the on-demand rule) finds them, repeated at most every :data:`ON_DEMAND_SECONDS` and after
this process ranks on demand. Leaders' names and trading scores are read once per run (a
leader's name and finished metrics do not change) in one search per page of leaders.
"""

from __future__ import annotations

import collections
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

import structlog
from fastapi import Depends, HTTPException, Request, status

from watcher.dashboard.board import (
    KeptBoard,
    finite,
    kept_board,
    quote_all,
    run_url,
    short,
    valid_experiment_id,
    valid_run_id,
)
from watcher.dashboard.importance import IMPORTANCE_CSV, read_importance
from watcher.dashboard.models import FeatureRow
from watcher.dashboard.universe import TRADING_SCORES, LeaderInfo, Overview
from watcher.jobs import JobRunner
from watcher.mlflow_io import EXPERIMENT_BATCH, MlflowTracking
from watcher.model import ON_DEMAND_RULE, ExperimentRecord, RunRecord
from watcher.settings import WatcherSettings
from watcher.state import STATE_TAG

log = structlog.get_logger("watcher")

CSV_CACHE_SIZE = 512
# Leaders whose names and scores are kept: a universe's leaders several times over.
LEADER_CACHE_SIZE = 20_000
# How often, at most, the experiments route looks for on-demand boards beside the kept listing.
ON_DEMAND_SECONDS = 60.0
# The experiments whose kept state was written by an on-demand ranking.
ON_DEMAND_FILTER = f'tags.`{STATE_TAG}` LIKE \'%"rule":"{ON_DEMAND_RULE}"%\''

KeptListing = Callable[[], Sequence[ExperimentRecord] | None]


class _CsvCache:
    """Parsed ``feature_importance.csv`` per run id (a run's artifacts do not change)."""

    def __init__(self, tracking: MlflowTracking, size: int = CSV_CACHE_SIZE) -> None:
        self._tracking = tracking
        self._size = size
        self._rows: collections.OrderedDict[str, list[FeatureRow]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_id: str) -> list[FeatureRow] | None:
        with self._lock:
            if run_id in self._rows:
                self._rows.move_to_end(run_id)
                return self._rows[run_id]
        with tempfile.TemporaryDirectory(prefix="podium-dashboard-") as tmp:
            local = self._tracking.download_run_file(run_id, IMPORTANCE_CSV, tmp)
            if local is None:
                return None
            try:
                rows = read_importance(Path(local))
            except (ValueError, KeyError, UnicodeDecodeError) as e:
                log.warning("importance_unreadable", run_id=run_id, error=str(e))
                return None
        with self._lock:
            self._rows[run_id] = rows
            while len(self._rows) > self._size:
                self._rows.popitem(last=False)
        return rows


class DashboardQuery:
    """What the dashboard's routes read: the watcher's tracking adapter and settings, its kept
    listing, the retrain jobs, and the caches of parsed importance files and leaders. Lookups by
    id answer 404 naming the id (checked before MLflow sees it); tracking failures raise
    :class:`~watcher.errors.TrackingError`, answered 503 by the app's one handler."""

    def __init__(
        self,
        tracking: MlflowTracking,
        settings: WatcherSettings,
        jobs: JobRunner,
        selection_of: Callable[[str], dict[str, Any] | None] = lambda _: None,
        kept: KeptListing = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # The selection statistics this daemon last computed for an experiment (with λ).
        self.selection_of = selection_of
        self.tracking = tracking
        self.settings = settings
        self.jobs = jobs
        self.ui_base_url = settings.ui_base_url
        self.importance = _CsvCache(tracking)
        self.kept = kept
        self._clock = clock
        self._lock = threading.Lock()
        self._leaders: collections.OrderedDict[str, LeaderInfo] = collections.OrderedDict()
        self._on_demand: dict[str, ExperimentRecord] = {}
        self._on_demand_at: float | None = None

    # ---- the experiments table ------------------------------------------------------------------

    def experiments(self) -> tuple[list[ExperimentRecord], bool]:
        """Every experiment the table may show, and whether they came from the kept listing."""
        kept = self.kept()
        if kept is None:
            listed = self.tracking.search_experiments()
            self._keep_on_demand([e for e in listed if self._on_demand_only(e)])
            return listed, False
        now = self._clock()
        with self._lock:
            due = self._on_demand_at is None or now - self._on_demand_at >= ON_DEMAND_SECONDS
        if due:
            self._keep_on_demand(self.tracking.search_experiments(ON_DEMAND_FILTER), now)
        with self._lock:
            extra = dict(self._on_demand)
        watched = {e.experiment_id for e in kept}
        return [*kept, *(e for i, e in extra.items() if i not in watched)], True

    def ranked_on_demand(self) -> None:
        """This process just ranked an experiment on demand: the next table looks again."""
        with self._lock:
            self._on_demand_at = None

    def _on_demand_only(self, exp: ExperimentRecord) -> bool:
        board = kept_board(exp.tags)
        return board is not None and board.rule == ON_DEMAND_RULE and self.settings.rule_for(exp.name) is None

    def _keep_on_demand(self, found: Iterable[ExperimentRecord], at: float | None = None) -> None:
        kept = {e.experiment_id: e for e in found if self._on_demand_only(e)}
        with self._lock:
            self._on_demand = kept
            self._on_demand_at = self._clock() if at is None else at

    def leader_infos(self, rows: Iterable[Overview]) -> dict[str, LeaderInfo]:
        """The leaders of the rows (by run id): those not read before in one search per
        batch of experiments."""
        wanted = {o.leader[0]: o.experiment_id for o in rows if o.leader}
        with self._lock:
            known = {r: self._leaders[r] for r in wanted if r in self._leaders}
        missing = sorted((exp_id, run_id) for run_id, exp_id in wanted.items() if run_id not in known)
        for start in range(0, len(missing), EXPERIMENT_BATCH):
            chunk = missing[start : start + EXPERIMENT_BATCH]
            found = self.tracking.search_runs(
                sorted({exp_id for exp_id, _ in chunk}),
                f"attributes.run_id IN ({quote_all(run_id for _, run_id in chunk)})",
            )
            # A leader deleted since the ranking shows no name, and is not looked for again.
            read = {run_id: LeaderInfo(None) for _, run_id in chunk}
            read.update((r.run_id, _leader_info(r)) for r in found)
            known.update(read)
            with self._lock:
                self._leaders.update(read)
                while len(self._leaders) > LEADER_CACHE_SIZE:
                    self._leaders.popitem(last=False)
        return known

    # ---- one experiment or run --------------------------------------------------------------------

    def experiment(self, experiment_id: str) -> ExperimentRecord:
        """The active experiment, or 404."""
        exp = self.tracking.get_experiment(experiment_id) if valid_experiment_id(experiment_id) else None
        if exp is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, detail=f"no experiment with id {short(experiment_id)!r}"
            )
        return exp

    def run(self, run_id: str) -> RunRecord:
        """The active run, or 404."""
        run = self.tracking.get_run(run_id) if valid_run_id(run_id) else None
        if run is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no run with id {short(run_id)!r}")
        return run

    def ranked_board(self, exp: ExperimentRecord) -> KeptBoard:
        """The experiment's kept board, or 404 when it has not been ranked yet."""
        board = kept_board(exp.tags)
        if board is None or not board.entries:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                detail=f"experiment {exp.name!r} has not been ranked yet (no leaderboard)",
            )
        return board

    def board_runs(self, experiment_id: str, board: KeptBoard) -> dict[str, RunRecord]:
        """The kept board's runs still active, by id (one search)."""
        found = self.tracking.search_runs(
            [experiment_id], f"attributes.run_id IN ({quote_all(i for i, _ in board.entries)})"
        )
        return {r.run_id: r for r in found}

    def url(self, experiment_id: str, run_id: str) -> str | None:
        return run_url(self.ui_base_url, experiment_id, run_id)


def _leader_info(run: RunRecord) -> LeaderInfo:
    scores = {k: finite(run.metrics.get(k)) for k in TRADING_SCORES}
    return LeaderInfo(run.run_name, {k: v for k, v in scores.items() if v is not None})


def dashboard_query(request: Request) -> DashboardQuery:
    query: DashboardQuery = request.app.state.dashboard
    return query


Dashboard = Annotated[DashboardQuery, Depends(dashboard_query)]
