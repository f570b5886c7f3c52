"""The webhook handler: what a pass owes the rule's webhooks goes into the outbox.

`Notifier` builds the document for every changed leaderboard (and, for the kinds a rule lists in
`alerts`, every failed or stalled run it is told about) and keeps one outbox entry per webhook of
the rule's `notify`. It makes no network call: the delivery worker sends the entries (see
`watcher.delivery`), so a slow or dead receiver never delays a pass.

The delivery id is derived from what is delivered (`delivery_id`), so two replicas, or a
restarted process, that decide the same delivery keep one outbox entry and send one id, on
which receivers deduplicate.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from typing import Any

import structlog

from watcher.model import Handler, LeaderboardChanged, Rule, RunAlert
from watcher.notify.payloads import alert_payload, leaderboard_payload
from watcher.outbox import Entry, Outbox, WebhookDelivery, entry_id

log = structlog.get_logger(__name__)


def delivery_id(
    experiment_id: str, webhook: str, payload: Mapping[str, Any], sequence: int | None = None
) -> str:
    """The delivery id of ``payload`` for ``webhook``: a leaderboard change is its payload
    (less its timestamp) and the change's ``sequence`` in the experiment, so a later identical
    change gets a new id; a run alert is its experiment, run and kind (a run is announced
    once per kind)."""
    if payload["event"] == "leaderboard.changed":
        document = {k: v for k, v in payload.items() if k != "timestamp"}
        return entry_id(payload["event"], experiment_id, webhook, sequence, document)
    return entry_id(payload["event"], experiment_id, payload["run_id"], webhook)


class Notifier(Handler):
    """Handler: records a delivery per webhook for every leaderboard change and alert."""

    def __init__(
        self,
        outbox: Outbox,
        webhooks: Collection[str],
        *,
        ui_base_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._outbox = outbox
        self._webhooks = set(webhooks)
        self._ui_base_url = ui_base_url
        self._clock = clock
        self._report: Counter[str] = Counter()

    def on_leaderboard_changed(self, event: LeaderboardChanged, rule: Rule) -> None:
        if not rule.notify:
            return
        payload = leaderboard_payload(event, ui_base_url=self._ui_base_url, now=self._clock())
        self._keep(event.board.experiment_id, rule, payload, "webhooks_queued", event.sequence)

    def on_run_alert(self, alert: RunAlert, rule: Rule) -> None:
        """Queue one `run.failed` / `run.stalled` delivery per webhook, for the kinds the rule
        asks for (the pass calls this once per run and alert)."""
        if alert.kind not in rule.alerts or not rule.notify:
            return
        payload = alert_payload(alert, ui_base_url=self._ui_base_url, now=self._clock())
        log.info(
            "run_alert_queued",
            kind=alert.kind,
            experiment_id=alert.experiment_id,
            run_id=alert.run_id,
            rule=rule.name,
        )
        self._keep(alert.experiment_id, rule, payload, "alerts_queued")

    def on_pass_start(self) -> None:
        self._report.clear()

    def on_pass_end(self, experiments: object) -> None:
        """Nothing to do: the delivery worker takes up what the listing shows."""

    def pass_report(self) -> dict[str, int]:
        report, self._report = dict(self._report), Counter()
        return report

    def _keep(
        self,
        experiment_id: str,
        rule: Rule,
        payload: Mapping[str, Any],
        counter: str,
        sequence: int | None = None,
    ) -> None:
        for name in rule.notify:
            if name not in self._webhooks:  # check-config rejects this; a guard for hand-built rules
                log.error("webhook_unknown", webhook=name, rule=rule.name)
                continue
            entry = self._outbox.keep(
                Entry(
                    experiment_id=experiment_id,
                    entry_id=delivery_id(experiment_id, name, payload, sequence),
                    target=name,
                    work=WebhookDelivery(dict(payload)),
                    created_at=self._clock(),
                )
            )
            if entry is None:
                continue  # this process holds that delivery already
            self._report[counter] += 1
            log.info(
                "webhook_queued",
                webhook=name,
                delivery_id=entry.entry_id,
                experiment_id=experiment_id,
                payload_event=payload["event"],
                durable=entry.tag is not None,
            )
