"""The daemon: one pass at start, then one every ``poll_interval_seconds``, until a signal.

SIGTERM or SIGINT never cuts a pass in half: no new pass starts, the one in flight
finishes, the delivery worker stops after its request in flight (what it has not sent stays
in the outbox, in MLflow), then the process exits 0.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from watcher.delivery import DeliveryWorker
from watcher.service import Watcher

log = structlog.get_logger("watcher")


class GracefulShutdown:
    """Turns SIGTERM/SIGINT into a flag the main thread waits on."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.signal_name: str | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name
        self.requested.set()


def run_daemon(
    watcher: Watcher,
    *,
    start_api: Callable[[Watcher], Any] | None = None,
    shutdown: GracefulShutdown | None = None,
    worker: DeliveryWorker | None = None,
) -> int:
    """Run passes on an interval until a signal; returns the exit code (0).

    ``start_api(watcher)`` may start the HTTP API and return an object with ``stop()``;
    ``worker`` runs as a thread beside the passes.
    """
    shutdown = shutdown or GracefulShutdown()
    shutdown.install()
    interval = watcher.settings.poll_interval_seconds
    scheduler = BackgroundScheduler(timezone=UTC)
    # A pass may outlast the interval (a long first pass, the passes that follow at once while
    # rankings or holder checks wait): the ticks that find it running are skipped, as meant,
    # and APScheduler's warning for each tick would fill the log with noise.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)

    def reconcile() -> None:
        # While first rankings or holder checks wait (max_rankings_per_pass,
        # HOLDER_CHECK_RUNS), the next pass starts at once; each pass takes the watcher's lock
        # apart, so API rankings go in between.
        result = watcher.run_pass()
        while (
            result.ok
            and (result.rankings_deferred or result.holder_checks_deferred)
            and not shutdown.requested.is_set()
        ):
            result = watcher.run_pass()

    scheduler.add_job(
        reconcile,
        "interval",
        seconds=interval,
        next_run_time=datetime.now(UTC),  # the first pass at start
        max_instances=1,
        coalesce=True,
        misfire_grace_time=max(1, int(interval)),
        id="reconcile",
    )
    api = start_api(watcher) if start_api is not None else None
    if worker is not None:
        worker.start()
    scheduler.start()
    log.info("watcher_started", poll_interval_seconds=interval, rules=len(watcher.settings.rules))
    try:
        while not shutdown.requested.wait(0.5):
            pass
        log.info("shutdown_requested", signal=shutdown.signal_name)
        scheduler.pause()
        scheduler.shutdown(wait=True)  # lets the pass in flight finish
    finally:
        if worker is not None:
            worker.stop(timeout=worker.stop_timeout())
        if api is not None:
            api.stop()
    log.info("watcher_stopped")
    return 0
