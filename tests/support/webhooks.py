"""Webhook test helpers: a leaderboard change and an alert to announce, the receiver's side of
the signature scheme, a recorded back-off, and the requests a local receiver got."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from pytest_httpserver import HTTPServer

from watcher import metrics
from watcher.model import Leaderboard, LeaderboardChanged, RankedRun, RunAlert
from watcher.notify.sender import DELIVERY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER

SECRET = "s3cr3t-for-tests"


def make_event(
    n: int = 3, *, new_leader: bool = True, experiment_id: str = "7", sequence: int = 1
) -> LeaderboardChanged:
    entries = tuple(
        RankedRun(rank=i + 1, run_id=f"run{i}", run_name=f"trial-{i}", value=0.9 - i / 100) for i in range(n)
    )
    board = Leaderboard(
        experiment_id=experiment_id,
        experiment_name="wf_xgboost_AAPL_f12_tr12m_te3m",
        rule="wf-xgboost",
        metric="avg_test_r2",
        ascending=False,
        top_n=10,
        production_candidates=3,
        entries=entries,
        ranked_runs=n,
        unranked_runs=1,
    )
    return LeaderboardChanged(
        board=board, new_leader=new_leader, entered=("run0",), left=("gone1",), sequence=sequence
    )


def verify(secret: str, headers: Any, body: bytes) -> bool:
    """The receiver's side of the documented scheme, written out independently of watcher.notify."""
    delivery_id = headers[DELIVERY_ID_HEADER]
    timestamp = headers[TIMESTAMP_HEADER]
    version, _, signature = headers[SIGNATURE_HEADER].partition(",")
    expected = hmac.new(
        secret.encode(), f"{delivery_id}.{timestamp}.{body.decode()}".encode(), hashlib.sha256
    ).digest()
    return version == "v1" and hmac.compare_digest(base64.b64decode(signature), expected)


class Sleeps:
    """An injectable sleep that records the back-off instead of waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def make_alert(kind: str = "failed", *, last_activity: int | None = 1_767_225_000_000) -> RunAlert:
    return RunAlert(
        kind=kind,  # type: ignore[arg-type]
        experiment_id="7",
        experiment_name="wf_xgboost_AAPL_f12_tr12m_te3m",
        rule="wf-xgboost",
        run_id="run9",
        run_name="trial-<9>",
        status="FAILED" if kind == "failed" else "RUNNING",
        last_activity=last_activity,
    )


def requests_to(server: HTTPServer, path: str) -> list:
    return [request for request, _ in server.log if request.path == path]


def sample(name: str, webhook: str = "team") -> float:
    return metrics.REGISTRY.get_sample_value(name, {"webhook": webhook}) or 0.0
