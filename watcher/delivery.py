"""The delivery worker: carries out what the outbox holds, away from the passes.

One round (`drain`) takes every due entry of the outbox, oldest first, and sends each webhook
delivery (signed, with the webhook's timeout and bounded retries, see `watcher.notify.sender`)
or does each registry promotion (`watcher.registry.carry_out`). What succeeded (or can never
succeed: a receiver that refuses it, a webhook no longer configured, a promotion whose run lost
the lead) is done and its tag deleted; what failed stays due, in the outbox, for a later round.
A webhook that failed once is not tried again until the next pass, so a dead receiver costs
one round of back-off per pass, however many deliveries wait for it.

In the daemon the worker is a thread (`start`/`stop`): a round starts whenever a handler keeps
an entry and when a pass ends (the handler hook `on_pass_end` adopts what the pass's listing
shows: entries of an earlier process, failed entries to retry). A hanging receiver therefore
delays no pass. `stop` ends the back-off at once and the round after the request in flight;
what is left stays in the outbox. `--once` runs no thread: it calls `drain` after its pass,
which returns within the retry bound.

What a round did goes to the log (`delivery_round_finished`; `deliveries_finished` for
`--once`), to `/metrics` (`podium_watcher_webhook_deliveries_total`, `..._failures_total`)
and, for the daemon's rounds, summed since the last pass into the next pass summary
(`webhooks_delivered`, `webhooks_failed`, `registry_promoted`, ..., and `outbox_pending`).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping, Sequence

import structlog

from watcher import metrics
from watcher.model import Handler, WatchedExperiment
from watcher.notify.payloads import render
from watcher.notify.sender import Sender, WebhookTarget
from watcher.outbox import Entry, Outbox, Promotion
from watcher.registry import RegistryStore, carry_out

log = structlog.get_logger(__name__)


class DeliveryWorker(Handler):
    """Drains the outbox; a handler too (``on_pass_end``, ``pass_report``)."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        targets: Mapping[str, WebhookTarget],
        registry: RegistryStore | None,
        sender: Sender | None = None,
        ui_base_url: str | None = None,
    ) -> None:
        self.outbox = outbox
        self._targets = dict(targets)
        self._registry = registry
        self.stopping = threading.Event()
        self._sender = sender or Sender(sleep=self._pause, interrupt=self.stopping)
        self._ui_base_url = ui_base_url
        self._wake = threading.Event()
        self._round = threading.Lock()
        self._thread: threading.Thread | None = None
        # Webhooks that failed since the last pass started: not tried again until the next.
        self._down: set[str] = set()
        self._down_lock = threading.Lock()
        # Counts since the last pass report.
        self._since_pass: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        outbox.on_keep = self.wake

    def _pause(self, seconds: float) -> None:
        self.stopping.wait(seconds)  # back-off that a stop ends at once

    # -- handler hooks -----------------------------------------------------------------------

    def on_leaderboard_changed(self, event: object, rule: object) -> None:
        """The notifier and the promoter keep entries; the worker only sends them."""

    def on_pass_start(self) -> None:
        """A new pass: webhooks that failed in the last one get their next try."""
        with self._down_lock:
            self._down.clear()

    def on_pass_end(self, experiments: Sequence[WatchedExperiment]) -> None:
        """Adopt what the listing shows (earlier processes' entries) and start a round."""
        self.outbox.adopt(experiments)
        if self.outbox.pending():
            self.wake()

    def pass_report(self) -> dict[str, int]:
        """What the worker did since the last pass report, and what is still pending."""
        with self._counts_lock:
            report, self._since_pass = dict(self._since_pass), Counter()
        pending = self.outbox.pending()
        if pending:
            report["outbox_pending"] = pending
        return report

    # -- the thread --------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="podium-delivery", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop_timeout(self) -> float:
        """How long a stop may wait: one request at the longest webhook timeout, and some."""
        return max((t.timeout_seconds for t in self._targets.values()), default=0.0) + 5.0

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the request in flight (bounded by its timeout); the rest stays due."""
        self.stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("delivery_worker_still_busy", timeout_seconds=timeout)
        self._sender.close()

    def _run(self) -> None:
        log.info("delivery_worker_started")
        while not self.stopping.is_set():
            self._wake.wait()
            self._wake.clear()
            if self.stopping.is_set():
                break
            self.drain(in_pass_report=True)
        log.info("delivery_worker_stopped", pending=self.outbox.pending())

    # -- one round ---------------------------------------------------------------------------

    def drain(self, *, in_pass_report: bool = False) -> dict[str, int]:
        """Carry out every due entry once; returns the round's counts. Never raises.

        The thread's rounds (``in_pass_report``) also add their counts to the next pass
        summary; a caller that drains by hand (``--once``) reports them itself.
        """
        with self._round:
            counts: Counter[str] = Counter()
            try:
                entries = self.outbox.take_due()
            except Exception as e:
                log.error("delivery_round_failed", error=str(e), exc_info=True)
                return {}
            for entry in entries:
                if self.stopping.is_set():
                    self.outbox.release(entry)
                    continue
                try:
                    outcome = self._carry_out(entry)
                except Exception as e:  # a bug must not kill the worker or lose the entry
                    log.error("delivery_failed", entry_id=entry.entry_id, error=str(e), exc_info=True)
                    self.outbox.release(entry)
                    outcome = f"{entry.kind}_failed"
                if outcome:
                    counts[outcome] += 1
            report = dict(counts)
            if report:
                pending = self.outbox.pending()
                log.info("delivery_round_finished", pending=pending, **report)
            if in_pass_report:
                with self._counts_lock:
                    self._since_pass.update(report)
            return report

    def _carry_out(self, entry: Entry) -> str:
        ctx = {"experiment_id": entry.experiment_id, "entry_id": entry.entry_id}
        work = entry.work
        if isinstance(work, Promotion):
            if self._registry is None:
                self.outbox.done(entry, reason="no registry store")
                return "registry_dropped"
            try:
                promoted = carry_out(self._registry, entry)
            except Exception as e:
                log.error("registry_promotion_failed", target=entry.target, error=str(e), **ctx)
                self.outbox.release(entry)
                return "registry_failed"
            if promoted == "obsolete":
                log.info("registry_pending_obsolete", run_id=work.run_id, **ctx)
            self.outbox.done(entry)
            return f"registry_{promoted}"

        name = entry.target
        target = self._targets.get(name)
        ctx = {"webhook": name, "delivery_id": entry.entry_id, "experiment_id": entry.experiment_id}
        if target is None:
            self.outbox.done(entry, reason="webhook no longer configured")
            return "webhooks_dropped"
        with self._down_lock:
            down = name in self._down
        if down:  # waits for the next pass; counted once, when it failed
            self.outbox.release(entry)
            return ""
        body = render(target.format, work.payload, ui_base_url=self._ui_base_url)
        result = self._sender.deliver(target, body, entry.entry_id)
        failed_attempts = result.attempts - (1 if result.delivered else 0)
        if failed_attempts:
            metrics.WEBHOOK_FAILURES.labels(webhook=name).inc(failed_attempts)
        if result.delivered:
            metrics.WEBHOOK_DELIVERIES.labels(webhook=name).inc()
            log.info("webhook_delivered", attempts=result.attempts, status=result.status, **ctx)
            self.outbox.done(entry)
            return "webhooks_delivered"
        if result.outcome == "rejected":
            log.error("webhook_rejected", status=result.status, error=result.error, **ctx)
            self.outbox.done(entry)
            return "webhooks_rejected"
        with self._down_lock:
            self._down.add(name)
        log.warning(
            "webhook_failed",
            attempts=result.attempts,
            status=result.status,
            error=result.error,
            durable=entry.tag is not None,
            **ctx,
        )
        self.outbox.release(entry)
        return "webhooks_failed"
