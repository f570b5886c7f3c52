"""Prometheus metrics of the watcher, on a registry of their own (served by ``GET /metrics``).

Label conventions: ``PASSES`` has ``outcome`` ("ok" | "failed"); ``TRACKING_CALLS`` has
``call`` (the adapter method, e.g. "search_runs"); ``WEBHOOK_DELIVERIES`` and
``WEBHOOK_FAILURES`` have ``webhook`` (the webhook's name in the config).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

PASSES = Counter(
    "podium_watcher_passes",
    "Reconcile passes, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
PASS_DURATION = Histogram(
    "podium_watcher_pass_duration_seconds",
    "Wall time of one reconcile pass.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
    registry=REGISTRY,
)
TRACKING_CALLS = Counter(
    "podium_watcher_tracking_calls",
    "Calls made to the MLflow tracking server, by adapter method.",
    ["call"],
    registry=REGISTRY,
)
TAG_WRITES = Counter(
    "podium_watcher_tag_writes",
    "Run tag changes applied (one per tag set or deleted).",
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "podium_watcher_webhook_deliveries",
    "Webhook summaries delivered, by webhook.",
    ["webhook"],
    registry=REGISTRY,
)
WEBHOOK_FAILURES = Counter(
    "podium_watcher_webhook_failures",
    "Webhook delivery attempts that failed, by webhook.",
    ["webhook"],
    registry=REGISTRY,
)
LAST_SUCCESS = Gauge(
    "podium_watcher_last_success_timestamp_seconds",
    "Unix time at which the last successful pass ended.",
    registry=REGISTRY,
)
