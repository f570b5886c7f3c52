"""What a pass reports: :class:`PassResult` (the CLI prints it, the scheduler reads it) and
:class:`PassHealth` (``GET /healthz``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from watcher.planner import ExperimentPlan


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
