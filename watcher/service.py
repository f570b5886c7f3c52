"""One reconcile pass, and on-demand ranking for the HTTP API (skeleton; filled in next)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from watcher.errors import ExperimentNotFound, NoRankedRuns  # noqa: F401  (raised by rank_now)
from watcher.mlflow_io import MlflowTracking
from watcher.model import Handler, Leaderboard, LeaderboardChanged, TagChange
from watcher.settings import WatcherSettings


@dataclass(frozen=True)
class ExperimentOutcome:
    """What one pass did to one experiment (``changes`` is the plan, applied unless dry run)."""

    experiment_id: str
    experiment_name: str
    rule: str
    action: str  # "idle" | "pending" | "reranked" | "ranked" (first/full)
    changes: tuple[TagChange, ...] = ()
    event: LeaderboardChanged | None = None


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


@dataclass
class Health:
    poll_interval_seconds: float
    last_pass_at: float | None = None
    last_ok: bool | None = None
    last_success_at: float | None = None

    def is_healthy(self, now: float) -> bool:
        """Healthy while a pass succeeded within three poll intervals."""
        if self.last_success_at is None:
            return False
        return now - self.last_success_at <= 3 * self.poll_interval_seconds


@dataclass
class Watcher:
    settings: WatcherSettings
    tracking: MlflowTracking
    handlers: Sequence[Handler] = ()
    clock: Callable[[], float] = time.time
    health: Health = field(init=False)

    def __post_init__(self) -> None:
        self.health = Health(poll_interval_seconds=self.settings.poll_interval_seconds)

    def run_pass(self, dry_run: bool = False) -> PassResult:
        raise NotImplementedError

    def rank_now(
        self,
        experiment_name: str,
        metric: str,
        top_n: int,
        ascending: bool,
        production_candidates: int = 3,
    ) -> Leaderboard:
        raise NotImplementedError
