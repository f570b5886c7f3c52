"""The daemon's delivery worker as a real process: passes go on while a receiver fails, and
SIGTERM stops the worker mid back-off with exit 0, leaving the summary in the outbox."""

from __future__ import annotations

import json
import time
from pathlib import Path
from uuid import uuid4

import pytest
import yaml
from mlflow.tracking import MlflowClient
from pytest_httpserver import HTTPServer

from tests.support.daemon import Daemon
from tests.support.mlflow_server import ServerHandle
from tests.support.watcher_runs import make_runs
from tests.support.webhooks import requests_to
from watcher.cli import main
from watcher.notify.sender import DELIVERY_ID_HEADER
from watcher.outbox import TAG_PREFIX

pytestmark = [pytest.mark.server, pytest.mark.slow]


def write_config(tmp_path: Path, tracking_uri: str, experiment: str, hook_url: str) -> Path:
    path = tmp_path / "watcher.yaml"
    config = {
        "tracking_uri": tracking_uri,
        "poll_interval_seconds": 3600,
        "http": {"enabled": False},
        # 5 attempts: 1 + 2 + 4 + 8 s of back-off, far longer than the test waits.
        "webhooks": [{"name": "team", "url": hook_url, "max_attempts": 5, "timeout_seconds": 5}],
        "rules": [{"name": "r", "experiments": [experiment], "metric": "avg_test_r2", "notify": ["team"]}],
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def outbox_tags(client: MlflowClient, experiment_id: str) -> dict[str, str]:
    tags = client.get_experiment(experiment_id).tags
    return {k: v for k, v in tags.items() if k.startswith(TAG_PREFIX)}


def test_sigterm_stops_the_worker_mid_retry_and_the_summary_waits_in_mlflow(
    sqlite_server: ServerHandle, receiver: HTTPServer, tmp_path: Path
) -> None:
    receiver.expect_request("/hook").respond_with_data("busy", status=503)
    receiver.start()
    client = MlflowClient(sqlite_server.url)
    name = f"deliver_{uuid4().hex[:6]}"
    exp_id = client.create_experiment(name)
    make_runs(client, exp_id, [0.1, 0.2])
    config = write_config(tmp_path, sqlite_server.url, name, receiver.url_for("/hook"))
    daemon = Daemon(config, sqlite_server.url)
    try:
        finished = daemon.wait_for("pass_finished")
        assert finished["ok"] is True
        assert finished["webhooks_queued"] == 1
        daemon.wait_for("webhook_retry")  # the worker is in its back-off, the pass is long done
        stopping = time.monotonic()
        code = daemon.stop()
        stopped_in = time.monotonic() - stopping
    finally:
        daemon.kill()
    assert code == 0
    assert stopped_in < 10, f"the daemon took {stopped_in:.1f} s to stop"
    names = [e["event"] for e in daemon.events]
    assert names.index("shutdown_requested") < names.index("delivery_worker_stopped")
    assert names[-1] == "watcher_stopped"
    assert "webhook_delivered" not in names
    [(key, value)] = outbox_tags(client, exp_id).items()
    delivery_id = json.loads(value)["entry_id"]
    assert {r.headers[DELIVERY_ID_HEADER] for r in requests_to(receiver, "/hook")} == {delivery_id}

    # The next process sends it, once, with the same delivery id.
    receiver.clear()
    receiver.expect_request("/hook").respond_with_data("ok")
    assert main(["--once", "--config", str(config), "--log-format", "json"]) == 0
    [request] = requests_to(receiver, "/hook")
    assert request.headers[DELIVERY_ID_HEADER] == delivery_id
    assert outbox_tags(client, exp_id) == {}
    assert key.startswith(f"{TAG_PREFIX}webhook.team.")
