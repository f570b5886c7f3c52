"""Delivery of one webhook request: signing, timeouts and bounded retries with back-off.

`Sender.deliver` signs and POSTs one body with a timeout per request and bounded retries with
back-off on 408, 429, 5xx and connection errors. The delivery id stays the same across retries
(and across passes and restarts: it is kept with the outbox entry), the timestamp and signature
are fresh for every attempt, as in MLflow's own registry webhooks and the Standard Webhooks
scheme they follow. A receiver that refuses a request outright (a 4xx other than 408/429) is not
retried: the same request would be refused again.

Webhook URLs and secrets never reach a log line: targets log their name only, and error messages
from the HTTP client are scrubbed of the URL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import httpx
import structlog

from watcher.errors import ConfigError
from watcher.model import WebhookFormat

log = structlog.get_logger(__name__)
# httpx logs every request with its full URL at INFO; a webhook URL (Slack's, say) is a
# credential, so those lines stay off whatever level the process configures.
logging.getLogger("httpx").setLevel(logging.WARNING)

DELIVERY_ID_HEADER = "X-Podium-Delivery-Id"
TIMESTAMP_HEADER = "X-Podium-Timestamp"
SIGNATURE_HEADER = "X-Podium-Signature"
SIGNATURE_VERSION = "v1"

# Delay before the 2nd, 3rd, ... attempt (the last one repeats); a webhook's `max_attempts`
# bounds the attempts.
DEFAULT_BACKOFF: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
# Longest wait a receiver can ask for with Retry-After before we leave it to a later round.
MAX_RETRY_AFTER_SECONDS = 30.0


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
    format: WebhookFormat
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
        interrupt: threading.Event | None = None,
    ) -> None:
        """``interrupt``, once set, ends the retries at once (a stopping worker must not wait
        through the back-off); the request in flight still ends within its timeout."""
        # trust_env=False: a proxy from the environment must not see (or reroute) the summaries.
        self._client = client or httpx.Client(trust_env=False, follow_redirects=False)
        self._backoff = tuple(backoff)
        self._sleep = sleep
        self._clock = clock
        self._interrupt = interrupt

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
            if attempt == attempts or (self._interrupt is not None and self._interrupt.is_set()):
                break
            delay = self._backoff[min(attempt, len(self._backoff)) - 1] if self._backoff else 0.0
            if retry_after is not None:
                if retry_after > MAX_RETRY_AFTER_SECONDS:
                    break  # the receiver asked for a long pause: leave it to a later round
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
            if self._interrupt is not None and self._interrupt.is_set():
                break
        return DeliveryResult(target.name, delivery_id, "failed", attempt, status=status, error=error)


def _scrub(error: Exception, target: WebhookTarget) -> str:
    """The error's type and message, without the URL (a Slack webhook URL is a credential)."""
    message = str(error).replace(target.url, "<url>")
    if target.secret:
        message = message.replace(target.secret, "<secret>")
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


class WebhookSpec(Protocol):
    """A webhook as configured (``settings.WebhookConfig`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def url(self) -> str | None: ...

    @property
    def url_env(self) -> str | None: ...

    @property
    def format(self) -> WebhookFormat: ...

    @property
    def secret_env(self) -> str | None: ...

    @property
    def timeout_seconds(self) -> float: ...

    @property
    def max_attempts(self) -> int: ...


def resolve_targets(
    webhooks: Iterable[WebhookSpec], environ: Mapping[str, str] = os.environ
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
