"""Leaderboard summaries posted to webhooks.

Split in three so each part is testable on its own:

- payloads: `build_payload` turns a `LeaderboardChanged` into DESIGN.md's JSON document, and
  `render` turns that document into the body for a webhook's format (`json`, or `slack` blocks).
  Pure functions of their arguments (the time is passed in).
- delivery: `Sender.deliver` signs and POSTs one body with timeouts and bounded retries with
  back-off on 429, 5xx and connection errors. The delivery id stays the same across retries (and
  across passes), the timestamp and signature are fresh for every attempt, as in MLflow's own
  registry webhooks and the Standard Webhooks scheme they follow.
- the handler: `Notifier` sends a summary for every changed leaderboard to the rule's webhooks.
  A summary still undelivered after the retries is kept as an experiment tag
  (`podium.webhook_pending.<webhook>.<delivery_id>`, the payload as JSON) and sent again at the
  end of a later pass; the tag is deleted once it was delivered, so it is sent once. A receiver
  that refuses a summary outright (a 4xx other than 408/429) is not retried: the same request
  would be refused again. A webhook that failed once in a pass gets no more attempts in that pass
  (its later summaries are kept at once), so a dead receiver costs one round of back-off per pass.
  If a delivered summary's tag cannot be deleted (tracking server down at that moment) this
  process never resends it, but a restarted one would, with the same delivery id: receivers
  deduplicate on `X-Podium-Delivery-Id`. At most 20 summaries per experiment and webhook are
  kept; older ones are dropped with a warning.

Webhook URLs and secrets never reach a log line: targets log their name only, and error messages
from the HTTP client are scrubbed of the URL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import httpx
import structlog

from watcher import metrics
from watcher.errors import ConfigError
from watcher.model import Leaderboard, LeaderboardChanged, WatchedExperiment
from watcher.settings import RuleConfig, WebhookConfig

log = structlog.get_logger(__name__)
# httpx logs every request with its full URL at INFO; a webhook URL (Slack's, say) is a
# credential, so those lines stay off whatever level the process configures.
logging.getLogger("httpx").setLevel(logging.WARNING)

EVENT_NAME = "leaderboard.changed"
DELIVERY_ID_HEADER = "X-Podium-Delivery-Id"
TIMESTAMP_HEADER = "X-Podium-Timestamp"
SIGNATURE_HEADER = "X-Podium-Signature"
SIGNATURE_VERSION = "v1"
PENDING_TAG_PREFIX = "podium.webhook_pending."

Format = Literal["json", "slack"]

# Delay before the 2nd, 3rd, ... attempt (the last one repeats); a webhook's `max_attempts`
# bounds the attempts.
DEFAULT_BACKOFF: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
# Longest wait a receiver can ask for with Retry-After before we give up for this pass.
MAX_RETRY_AFTER_SECONDS = 30.0
# Pending summaries kept per experiment and webhook; the oldest are dropped beyond it, so a
# receiver that is gone for weeks cannot grow an experiment's tags without bound.
MAX_PENDING_PER_WEBHOOK = 20

# Slack's documented limits for the blocks used here.
SLACK_HEADER_MAX = 150
SLACK_SECTION_MAX = 3000
SLACK_MAX_BLOCKS = 50
SLACK_LINES_PER_SECTION = 10
SLACK_MAX_MODELS = 100


# --------------------------------------------------------------------------------------------
# Payloads


def run_url(ui_base_url: str | None, experiment_id: str, run_id: str) -> str | None:
    """Link to a run in the MLflow UI, or None without a UI base URL."""
    if not ui_base_url:
        return None
    return f"{ui_base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def board_url(ui_base_url: str | None, experiment_id: str) -> str | None:
    """Link to an experiment's runs table (MLflow 3 opens a GenAI overview without `/runs`)."""
    if not ui_base_url:
        return None
    return f"{ui_base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"


def iso_timestamp(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_payload(event: LeaderboardChanged, *, ui_base_url: str | None, now: float) -> dict[str, Any]:
    """DESIGN.md's `leaderboard.changed` document for one changed leaderboard."""
    board: Leaderboard = event.board
    return {
        "event": EVENT_NAME,
        "experiment_id": board.experiment_id,
        "experiment_name": board.experiment_name,
        "rule": board.rule,
        "metric": board.metric,
        "ascending": board.ascending,
        "top_n": board.top_n,
        "models": [
            {
                "rank": entry.rank,
                "run_id": entry.run_id,
                "run_name": entry.run_name,
                "value": entry.value,
                "url": run_url(ui_base_url, board.experiment_id, entry.run_id),
            }
            for entry in board.entries
        ],
        "changes": {
            "new_leader": event.new_leader,
            "entered": list(event.entered),
            "left": list(event.left),
        },
        "ranked_runs": board.ranked_runs,
        "unranked_runs": board.unranked_runs,
        "timestamp": iso_timestamp(now),
    }


def render(fmt: Format, payload: Mapping[str, Any], *, ui_base_url: str | None) -> str:
    """The request body for a webhook of format `fmt`."""
    if fmt == "slack":
        return json.dumps(slack_message(payload, ui_base_url=ui_base_url), ensure_ascii=False)
    return json.dumps(payload, ensure_ascii=False)


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn reserves exactly these three characters.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_link(url: str | None, label: str) -> str:
    label = _slack_escape(label).replace("|", "¦")
    return f"<{url}|{label}>" if url else label


def _format_value(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_message(payload: Mapping[str, Any], *, ui_base_url: str | None) -> dict[str, Any]:
    """A Slack incoming-webhook message: a `text` fallback and a readable board in `blocks`."""
    models: list[Mapping[str, Any]] = list(payload["models"])
    changes: Mapping[str, Any] = payload["changes"]
    experiment = str(payload["experiment_name"])
    direction = "lower is better" if payload["ascending"] else "higher is better"
    names = {m["run_id"]: str(m["run_name"] or m["run_id"]) for m in models}

    leader = models[0] if models else None
    if leader is not None and changes["new_leader"]:
        headline = f"New leader in {experiment}: {names[leader['run_id']]}"
        headline += f" ({payload['metric']} = {_format_value(leader['value'])})"
    else:
        headline = f"Leaderboard changed in {experiment}"
    text = f"{headline}. Top {len(models)} by {payload['metric']} ({direction})."

    board_link = board_url(ui_base_url, str(payload["experiment_id"]))
    summary = (
        f"*Experiment* {_slack_link(board_link, experiment)}\n"
        f"*Rule* {_slack_escape(str(payload['rule']))} · *Metric* `{payload['metric']}` "
        f"({direction}) · {payload['ranked_runs']} ranked, {payload['unranked_runs']} unranked"
    )
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _truncate(headline, SLACK_HEADER_MAX)},
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": _truncate(summary, SLACK_SECTION_MAX)}},
        {"type": "divider"},
    ]

    lines = [
        f"*{m['rank']}.* {_slack_link(m.get('url'), names[m['run_id']])} `{_format_value(m['value'])}`"
        + (" :new:" if m["run_id"] in changes["entered"] else "")
        for m in models[:SLACK_MAX_MODELS]
    ]
    if len(models) > SLACK_MAX_MODELS:
        lines.append(f"… and {len(models) - SLACK_MAX_MODELS} more")
    for start in range(0, len(lines), SLACK_LINES_PER_SECTION):
        chunk = "\n".join(lines[start : start + SLACK_LINES_PER_SECTION])
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": _truncate(chunk, SLACK_SECTION_MAX)}}
        )

    notes = []
    if changes["entered"]:
        notes.append("Entered: " + ", ".join(_slack_escape(names.get(r, r)) for r in changes["entered"]))
    if changes["left"]:
        notes.append("Left: " + ", ".join(_slack_escape(r) for r in changes["left"]))
    notes.append(f"Ranked at {payload['timestamp']}")
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": _truncate(" · ".join(notes), SLACK_SECTION_MAX)}],
        }
    )
    # The context block goes last; keep it when trimming to Slack's block limit.
    if len(blocks) > SLACK_MAX_BLOCKS:
        blocks = blocks[: SLACK_MAX_BLOCKS - 1] + blocks[-1:]
    return {"text": text, "blocks": blocks}


# --------------------------------------------------------------------------------------------
# Signing and delivery


def sign(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    """`v1,<base64 HMAC-SHA256(secret, "{delivery_id}.{timestamp}.{body}")>`, as MLflow signs."""
    digest = hmac.new(
        secret.encode("utf-8"), f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256
    ).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


@dataclass(frozen=True)
class WebhookTarget:
    """One configured webhook, with its URL and secret resolved (neither ever shown)."""

    name: str
    format: Format
    url: str = field(repr=False)
    secret: str | None = field(default=None, repr=False)
    timeout_seconds: float = 10.0
    max_attempts: int = 3


@dataclass(frozen=True)
class DeliveryResult:
    """How one summary's delivery ended: `delivered`, `failed` (retry later) or `rejected`."""

    webhook: str
    delivery_id: str
    outcome: Literal["delivered", "failed", "rejected"]
    attempts: int
    status: int | None = None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.outcome == "delivered"


def _retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date; fall back to our own back-off


class Sender:
    """POSTs signed bodies; every retry policy decision lives in `deliver`."""

    def __init__(
        self,
        client: httpx.Client | None = None,
        *,
        backoff: Sequence[float] = DEFAULT_BACKOFF,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # trust_env=False: a proxy from the environment must not see (or reroute) the summaries.
        self._client = client or httpx.Client(trust_env=False, follow_redirects=False)
        self._backoff = tuple(backoff)
        self._sleep = sleep
        self._clock = clock

    def close(self) -> None:
        self._client.close()

    def headers(self, target: WebhookTarget, delivery_id: str, body: str) -> dict[str, str]:
        timestamp = str(int(self._clock()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "podium-watcher",
            DELIVERY_ID_HEADER: delivery_id,
            TIMESTAMP_HEADER: timestamp,
        }
        if target.secret:
            headers[SIGNATURE_HEADER] = sign(target.secret, delivery_id, timestamp, body)
        return headers

    def deliver(self, target: WebhookTarget, body: str, delivery_id: str) -> DeliveryResult:
        """Send `body` to `target`, retrying 408/429/5xx and transport errors with back-off."""
        attempts = max(1, target.max_attempts)
        status: int | None = None
        error: str | None = None
        for attempt in range(1, attempts + 1):
            status, error = None, None
            retry_after: float | None = None
            try:
                response = self._client.post(
                    target.url,
                    content=body.encode("utf-8"),
                    headers=self.headers(target, delivery_id, body),
                    timeout=httpx.Timeout(target.timeout_seconds, connect=min(5.0, target.timeout_seconds)),
                )
            except (httpx.InvalidURL, httpx.UnsupportedProtocol) as e:
                error = _scrub(e, target)
                return DeliveryResult(target.name, delivery_id, "rejected", attempt, error=error)
            except httpx.TransportError as e:  # connect errors, timeouts, broken connections
                error = _scrub(e, target)
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return DeliveryResult(target.name, delivery_id, "delivered", attempt, status=status)
                if not _retryable(status):
                    return DeliveryResult(target.name, delivery_id, "rejected", attempt, status=status)
                retry_after = _retry_after(response)
            if attempt == attempts:
                break
            delay = self._backoff[min(attempt, len(self._backoff)) - 1] if self._backoff else 0.0
            if retry_after is not None:
                if retry_after > MAX_RETRY_AFTER_SECONDS:
                    break  # the receiver asked for a long pause: leave it to a later pass
                delay = max(delay, retry_after)
            log.info(
                "webhook_retry",
                webhook=target.name,
                delivery_id=delivery_id,
                attempt=f"{attempt}/{attempts}",
                status=status,
                error=error,
                delay_seconds=delay,
            )
            self._sleep(delay)
        return DeliveryResult(target.name, delivery_id, "failed", attempt, status=status, error=error)


def _scrub(error: Exception, target: WebhookTarget) -> str:
    """The error's type and message, without the URL (a Slack webhook URL is a credential)."""
    message = str(error).replace(target.url, "<url>")
    if target.secret:
        message = message.replace(target.secret, "<secret>")
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


# --------------------------------------------------------------------------------------------
# The handler


class ExperimentTagStore(Protocol):
    """The part of the tracking adapter that keeps pending summaries (experiment tags)."""

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None: ...

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None: ...


@dataclass(frozen=True)
class PendingSummary:
    """An undelivered summary: sent again, with the same delivery id, on a later pass."""

    experiment_id: str
    webhook: str
    delivery_id: str
    payload: Mapping[str, Any]
    failed_at: float
    tag: str | None = None  # the experiment tag that holds it; None while only in memory

    def tag_key(self) -> str:
        # A safe subset of MLflow's tag key characters; the value keeps the real name.
        webhook = re.sub(r"[^\w\-.]", "_", self.webhook)
        return f"{PENDING_TAG_PREFIX}{webhook}.{self.delivery_id}"

    def tag_value(self) -> str:
        return json.dumps(
            {
                "webhook": self.webhook,
                "delivery_id": self.delivery_id,
                "failed_at": self.failed_at,
                "payload": self.payload,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )

    @classmethod
    def from_tag(cls, experiment_id: str, key: str, value: str) -> PendingSummary:
        data = json.loads(value)
        return cls(
            experiment_id=experiment_id,
            webhook=str(data["webhook"]),
            delivery_id=str(data["delivery_id"]),
            payload=dict(data["payload"]),
            failed_at=float(data.get("failed_at", 0.0)),
            tag=key,
        )


@dataclass
class PassSummary:
    """What the notifier did in one pass, for the pass summary and logs."""

    delivered: int = 0
    failed: int = 0
    rejected: int = 0
    kept_pending: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "delivered": self.delivered,
            "failed": self.failed,
            "rejected": self.rejected,
            "kept_pending": self.kept_pending,
        }


class Notifier:
    """Handler: posts a summary of every changed leaderboard to the rule's webhooks.

    Failures never propagate: the ranking of the pass is already written when this runs.
    """

    def __init__(
        self,
        targets: Mapping[str, WebhookTarget],
        store: ExperimentTagStore,
        *,
        sender: Sender | None = None,
        ui_base_url: str | None = None,
        clock: Callable[[], float] = time.time,
        new_delivery_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        max_pending: int = MAX_PENDING_PER_WEBHOOK,
    ) -> None:
        self._targets = dict(targets)
        self._store = store
        self._sender = sender or Sender(clock=clock)
        self._ui_base_url = ui_base_url
        self._clock = clock
        self._new_delivery_id = new_delivery_id
        self._max_pending = max_pending
        # Webhooks that already failed in this pass: later summaries go straight to pending
        # instead of waiting through the whole back-off again.
        self._down: set[str] = set()
        # Pending summaries whose tag could not be written, retried from memory on a later pass.
        self._carried: list[PendingSummary] = []
        self._new_in_memory: list[PendingSummary] = []
        # Delivered summaries whose pending tag could not be deleted: never sent again.
        self._sent: set[str] = set()
        # Summaries kept in this pass: retried from a later pass only, even when the listing
        # handed to on_pass_end already shows their tag.
        self._kept_this_pass: set[str] = set()
        self._summary = PassSummary()
        self.last_pass = PassSummary()

    # Handler protocol ---------------------------------------------------------------------

    def on_leaderboard_changed(self, event: LeaderboardChanged, rule: RuleConfig) -> None:
        if not rule.notify:
            return
        payload = build_payload(event, ui_base_url=self._ui_base_url, now=self._clock())
        for name in rule.notify:
            target = self._targets.get(name)
            if target is None:  # check-config rejects this; a guard for hand-built settings
                log.error("webhook_unknown", webhook=name, rule=rule.name)
                continue
            summary = PendingSummary(
                experiment_id=event.board.experiment_id,
                webhook=name,
                delivery_id=self._new_delivery_id(),
                payload=payload,
                failed_at=self._clock(),
            )
            if self._send(target, summary) == "failed":
                self._keep(summary)

    def on_pass_start(self) -> None:
        """Forget the per-pass state of a pass that failed before its on_pass_end."""
        self._down.clear()
        self._kept_this_pass.clear()
        self._summary = PassSummary()

    def on_pass_end(self, experiments: Sequence[WatchedExperiment]) -> None:
        try:
            for experiment in experiments:
                self._retry_pending(experiment)
            carried, self._carried = self._carried, []
            for summary in carried:
                target = self._targets.get(summary.webhook)
                if target is not None and self._send(target, summary) == "failed":
                    self._carried.append(summary)
            self._carried.extend(self._new_in_memory)
            self._new_in_memory = []
        finally:
            self.last_pass, self._summary = self._summary, PassSummary()
            self._down.clear()
            self._kept_this_pass.clear()
        if any(self.last_pass.as_dict().values()):
            log.info("webhook_pass_summary", **self.last_pass.as_dict())

    def pass_report(self) -> dict[str, int]:
        """The last pass's webhook counts, for the pass summary (PassResult, `pass_finished`)."""
        return {f"webhooks_{key}": value for key, value in self.last_pass.as_dict().items() if value}

    # Internals ----------------------------------------------------------------------------

    def _send(self, target: WebhookTarget, summary: PendingSummary) -> str:
        ctx = {
            "webhook": target.name,
            "delivery_id": summary.delivery_id,
            "experiment_id": summary.experiment_id,
        }
        if target.name in self._down:
            log.warning("webhook_skipped", reason="failed earlier in this pass", **ctx)
            self._summary.failed += 1
            return "failed"
        body = render(target.format, summary.payload, ui_base_url=self._ui_base_url)
        result = self._sender.deliver(target, body, summary.delivery_id)
        failed_attempts = result.attempts - (1 if result.delivered else 0)
        if failed_attempts:
            metrics.WEBHOOK_FAILURES.labels(webhook=target.name).inc(failed_attempts)
        if result.delivered:
            metrics.WEBHOOK_DELIVERIES.labels(webhook=target.name).inc()
            self._summary.delivered += 1
            log.info("webhook_delivered", attempts=result.attempts, status=result.status, **ctx)
        elif result.outcome == "rejected":
            self._summary.rejected += 1
            log.error("webhook_rejected", status=result.status, error=result.error, **ctx)
        else:
            self._down.add(target.name)
            self._summary.failed += 1
            log.warning(
                "webhook_failed", attempts=result.attempts, status=result.status, error=result.error, **ctx
            )
        if result.outcome != "failed" and summary.tag is not None:
            self._forget(summary)
        return result.outcome

    def _keep(self, summary: PendingSummary) -> None:
        """Store an undelivered summary as an experiment tag, or in memory if that fails too."""
        self._summary.kept_pending += 1
        self._kept_this_pass.add(summary.delivery_id)
        try:
            self._store.set_experiment_tag(summary.experiment_id, summary.tag_key(), summary.tag_value())
        except Exception as e:  # the tracking server may be what is down; keep it in memory
            log.error(
                "webhook_pending_store_failed",
                webhook=summary.webhook,
                delivery_id=summary.delivery_id,
                experiment_id=summary.experiment_id,
                error=str(e),
            )
            self._new_in_memory.append(summary)
        else:
            log.info(
                "webhook_pending_kept",
                webhook=summary.webhook,
                delivery_id=summary.delivery_id,
                experiment_id=summary.experiment_id,
            )

    def _forget(self, summary: PendingSummary) -> None:
        """Delete a pending summary's tag once it was delivered (or refused for good)."""
        assert summary.tag is not None
        self._sent.add(summary.delivery_id)
        try:
            self._store.delete_experiment_tag(summary.experiment_id, summary.tag)
        except Exception as e:
            log.error(
                "webhook_pending_delete_failed",
                delivery_id=summary.delivery_id,
                experiment_id=summary.experiment_id,
                error=str(e),
            )
        else:
            self._sent.discard(summary.delivery_id)

    def _retry_pending(self, experiment: WatchedExperiment) -> None:
        pending: list[PendingSummary] = []
        for key, value in experiment.tags.items():
            if not key.startswith(PENDING_TAG_PREFIX):
                continue
            try:
                pending.append(PendingSummary.from_tag(experiment.experiment_id, key, value))
            except (ValueError, KeyError, TypeError):
                log.warning("webhook_pending_unreadable", experiment_id=experiment.experiment_id, tag=key)
                self._delete_tag(experiment.experiment_id, key)
        pending.sort(key=lambda p: (p.failed_at, p.delivery_id))
        by_webhook: dict[str, list[PendingSummary]] = {}
        for summary in pending:
            by_webhook.setdefault(summary.webhook, []).append(summary)
        for webhook, summaries in by_webhook.items():
            target = self._targets.get(webhook)
            excess = len(summaries) - self._max_pending if target is not None else len(summaries)
            for summary in summaries[: max(excess, 0)]:
                log.warning(
                    "webhook_pending_dropped",
                    reason="webhook no longer configured" if target is None else "too many pending",
                    webhook=webhook,
                    delivery_id=summary.delivery_id,
                    experiment_id=summary.experiment_id,
                )
                self._delete_tag(summary.experiment_id, summary.tag or summary.tag_key())
            if target is None:
                continue
            for summary in summaries[max(excess, 0) :]:
                if summary.delivery_id in self._kept_this_pass:
                    continue
                if summary.delivery_id in self._sent:  # delivered; only the tag deletion failed
                    self._forget(summary)
                    continue
                self._send(target, summary)

    def _delete_tag(self, experiment_id: str, key: str) -> None:
        try:
            self._store.delete_experiment_tag(experiment_id, key)
        except Exception as e:
            log.error("webhook_pending_delete_failed", experiment_id=experiment_id, tag=key, error=str(e))


def resolve_targets(
    webhooks: Iterable[WebhookConfig], environ: Mapping[str, str] = os.environ
) -> dict[str, WebhookTarget]:
    """Webhook targets with URL and secret read from the environment (or the file).

    Raises ConfigError naming the webhook and the variable, never showing a value.
    """
    targets: dict[str, WebhookTarget] = {}
    for hook in webhooks:
        url = hook.url or (environ.get(hook.url_env) if hook.url_env else None)
        if not url:
            where = f"environment variable {hook.url_env} (url_env) is not set" if hook.url_env else "no url"
            raise ConfigError(f"webhook {hook.name!r}: {where}")
        secret = None
        if hook.secret_env:
            secret = environ.get(hook.secret_env) or None
            if secret is None:
                raise ConfigError(
                    f"webhook {hook.name!r}: environment variable {hook.secret_env} (secret_env) is not set"
                )
        targets[hook.name] = WebhookTarget(
            name=hook.name,
            format=hook.format,
            url=url,
            secret=secret,
            timeout_seconds=hook.timeout_seconds,
            max_attempts=hook.max_attempts,
        )
    return targets
