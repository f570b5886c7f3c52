"""Webhooks and registry promotion through real watcher passes against a real `mlflow server`."""

from __future__ import annotations

import json
from uuid import uuid4

import mlflow
import pytest
from mlflow import MlflowClient
from pytest_httpserver import HTTPServer

from tests.support.mlflow_server import ServerHandle
from tests.test_notify import SECRET, Sleeps, verify
from tests.test_notify_handler import requests_to
from tests.test_registry import log_run, predict
from watcher.cli import build_handlers
from watcher.mlflow_io import MlflowRegistry, MlflowTracking
from watcher.notify import DELIVERY_ID_HEADER, PENDING_TAG_PREFIX, Notifier, Sender, resolve_targets
from watcher.registry import RegistryPromoter
from watcher.service import Watcher
from watcher.settings import WatcherSettings

pytestmark = pytest.mark.server


@pytest.fixture
def server(sqlite_server: ServerHandle) -> ServerHandle:
    mlflow.set_tracking_uri(sqlite_server.url)  # conftest restores it after the test
    return sqlite_server


def make_settings(url: str, experiment: str, hook_url: str, model_name: str) -> WatcherSettings:
    return WatcherSettings(
        tracking_uri=url,
        ui_base_url="http://mlflow.local:5000",
        http={"enabled": False},
        webhooks=[{"name": "team", "url": hook_url, "format": "json", "secret_env": "PODIUM_TEST_SECRET"}],
        rules=[
            {
                "name": "wf-xgboost",
                "experiments": [experiment],
                "metric": "avg_test_r2",
                "top_n": 3,
                "registry": {"model_name": model_name, "alias": "champion"},
                "notify": ["team"],
            }
        ],
    )


def test_a_pass_posts_one_summary_per_change_and_moves_the_alias(
    server: ServerHandle, receiver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PODIUM_TEST_SECRET", SECRET)
    receiver.expect_request("/hook", method="POST").respond_with_data("ok")
    receiver.start()
    name, model_name = f"exp_{uuid4().hex[:8]}", f"wf-{uuid4().hex[:8]}"
    exp_id = mlflow.create_experiment(name)
    first = log_run(exp_id, 0.5)
    second = log_run(exp_id, 0.6)
    settings = make_settings(server.url, name, receiver.url_for("/hook"), model_name)
    tracking = MlflowTracking(server.url)
    watcher = Watcher(settings, tracking, build_handlers(settings, tracking))
    client = MlflowClient(server.url)

    result = watcher.run_pass()
    assert result.ok
    assert result.handler_report == {"webhooks_delivered": 1, "registry_promoted": 1}
    [request] = requests_to(receiver, "/hook")
    assert verify(SECRET, request.headers, request.get_data())
    body = json.loads(request.get_data())
    assert [(m["rank"], m["run_id"]) for m in body["models"]] == [(1, second), (2, first)]
    assert body["changes"]["new_leader"] is True
    assert body["models"][0]["url"] == f"http://mlflow.local:5000/#/experiments/{exp_id}/runs/{second}"
    assert client.get_model_version_by_alias(model_name, "champion").run_id == second

    tracking.calls_by_method.clear()
    idle = watcher.run_pass()
    assert idle.ok
    assert idle.handler_report == {}
    # The handlers add no tracking call to an idle pass (the pending check reads the listing).
    assert not set(tracking.calls_by_method) & {
        "get_model_version_by_alias",
        "search_model_versions",
        "get_run",
        "set_experiment_tag",
        "delete_experiment_tag",
    }
    assert len(requests_to(receiver, "/hook")) == 1  # an idle pass sends nothing

    better = log_run(exp_id, 0.9)
    result = watcher.run_pass()
    assert result.handler_report == {"webhooks_delivered": 1, "registry_promoted": 1}
    requests = requests_to(receiver, "/hook")
    assert len(requests) == 2
    body = json.loads(requests[1].get_data())
    assert body["changes"] == {"new_leader": True, "entered": [better], "left": []}
    version = client.get_model_version_by_alias(model_name, "champion")
    assert (version.run_id, version.tags["model_rank"]) == (better, "1")
    assert predict(f"models:/{model_name}@champion") == pytest.approx(predict(f"runs:/{better}/model"))


def test_receiver_down_never_blocks_ranking_and_gets_the_summary_once_later(
    server: ServerHandle, receiver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PODIUM_TEST_SECRET", SECRET)
    name = f"exp_{uuid4().hex[:8]}"
    exp_id = mlflow.create_experiment(name)
    leader = log_run(exp_id, 0.7, how="none")
    settings = make_settings(server.url, name, receiver.url_for("/hook"), f"wf-{uuid4().hex[:8]}")
    tracking = MlflowTracking(server.url)
    store = MlflowRegistry(tracking)
    notifier = Notifier(resolve_targets(settings.webhooks), store, sender=Sender(sleep=Sleeps()))
    watcher = Watcher(settings, tracking, [RegistryPromoter(store), notifier])

    down = watcher.run_pass()
    assert down.ok  # ranking done and tagged although the receiver is down
    assert MlflowClient(server.url).get_run(leader).data.tags["model_rank"] == "1"
    assert down.handler_report == {
        "webhooks_failed": 1,
        "webhooks_kept_pending": 1,
        "registry_no_model": 1,
    }

    [pending] = pending_summaries(server, exp_id)

    receiver.expect_request("/hook").respond_with_data("ok")
    receiver.start()
    reports = [watcher.run_pass().handler_report for _ in range(3)]
    assert reports == [{"webhooks_delivered": 1}, {}, {}]
    [request] = requests_to(receiver, "/hook")
    assert verify(SECRET, request.headers, request.get_data())
    assert request.headers[DELIVERY_ID_HEADER] == json.loads(pending)["delivery_id"]
    assert json.loads(request.get_data())["models"][0]["run_id"] == leader
    assert pending_summaries(server, exp_id) == []


def pending_summaries(server: ServerHandle, experiment_id: str) -> list[str]:
    tags = MlflowClient(server.url).get_experiment(experiment_id).tags
    return [v for k, v in tags.items() if k.startswith(PENDING_TAG_PREFIX)]
