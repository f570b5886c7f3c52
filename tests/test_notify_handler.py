"""The Notifier handler: one delivery per change, pending summaries kept in MLflow, sent once."""

from __future__ import annotations

import json
from uuid import uuid4

import pytest
from mlflow import MlflowClient
from pytest_httpserver import HTTPServer
from structlog.testing import capture_logs

from tests.support.mlflow_server import free_port
from tests.test_notify import SECRET, Sleeps, make_event, verify
from watcher import metrics
from watcher.errors import ConfigError
from watcher.mlflow_io import MlflowRegistry, MlflowTracking
from watcher.model import LeaderboardChanged, WatchedExperiment
from watcher.notify import (
    DELIVERY_ID_HEADER,
    PENDING_TAG_PREFIX,
    Notifier,
    Sender,
    WebhookTarget,
    resolve_targets,
)
from watcher.settings import RuleConfig, WebhookConfig


class World:
    """A real sqlite tracking store with one experiment, and a notifier wired to it."""

    def __init__(self, tracking_uri: str, targets: list[WebhookTarget]) -> None:
        self.tracking = MlflowTracking(tracking_uri)
        self.client = MlflowClient(tracking_uri)
        self.name = f"exp_{uuid4().hex[:8]}"
        self.experiment_id = self.client.create_experiment(self.name)
        self.rule = RuleConfig(
            name="wf-xgboost", experiments=["exp_*"], metric="avg_test_r2", notify=[t.name for t in targets]
        )
        self.sleeps = Sleeps()
        self.notifier = Notifier(
            {t.name: t for t in targets},
            MlflowRegistry(self.tracking),
            sender=Sender(sleep=self.sleeps),
            ui_base_url="http://mlflow.local:5000",
        )

    def change(self, n: int = 3) -> LeaderboardChanged:
        return make_event(n, experiment_id=self.experiment_id)

    def end_pass(self) -> None:
        """What the service does at the end of a pass: hand over the listed experiments."""
        record = self.tracking.get_experiment_by_name(self.name)
        assert record is not None
        self.notifier.on_pass_end(
            [WatchedExperiment(record.experiment_id, record.name, record.tags, self.rule)]
        )

    def pending(self) -> dict[str, str]:
        tags = self.client.get_experiment(self.experiment_id).tags
        return {k: v for k, v in tags.items() if k.startswith(PENDING_TAG_PREFIX)}


def hook(server: HTTPServer, name: str = "team", fmt: str = "json") -> WebhookTarget:
    return WebhookTarget(name=name, format=fmt, url=server.url_for(f"/{name}"), secret=SECRET)  # type: ignore[arg-type]


def requests_to(server: HTTPServer, path: str) -> list:
    return [request for request, _ in server.log if request.path == path]


def test_exactly_one_signed_delivery_per_change_and_nothing_on_idle_passes(
    sqlite_uri: str, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/team", method="POST").respond_with_data("ok")
    world = World(sqlite_uri, [hook(httpserver)])
    delivered = (
        metrics.REGISTRY.get_sample_value("podium_watcher_webhook_deliveries_total", {"webhook": "team"}) or 0
    )

    world.notifier.on_leaderboard_changed(world.change(), world.rule)
    world.end_pass()
    world.notifier.on_leaderboard_changed(world.change(4), world.rule)
    world.end_pass()
    for _ in range(2):  # idle passes: no change, nothing pending
        world.end_pass()

    requests = requests_to(httpserver, "/team")
    assert len(requests) == 2
    assert len({r.headers[DELIVERY_ID_HEADER] for r in requests}) == 2
    for request in requests:
        assert verify(SECRET, request.headers, request.get_data())
    bodies = [json.loads(r.get_data()) for r in requests]
    assert [len(b["models"]) for b in bodies] == [3, 4]
    assert (
        bodies[0]["models"][0]["url"]
        == f"http://mlflow.local:5000/#/experiments/{world.experiment_id}/runs/run0"
    )
    assert world.pending() == {}
    assert world.notifier.last_pass.as_dict() == {
        "delivered": 0,
        "failed": 0,
        "rejected": 0,
        "kept_pending": 0,
    }
    after = metrics.REGISTRY.get_sample_value("podium_watcher_webhook_deliveries_total", {"webhook": "team"})
    assert after == delivered + 2


def test_each_webhook_of_a_rule_gets_the_summary_in_its_format(
    sqlite_uri: str, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/team").respond_with_data("ok")
    httpserver.expect_request("/chat").respond_with_data("ok")
    world = World(sqlite_uri, [hook(httpserver), hook(httpserver, "chat", "slack")])
    world.notifier.on_leaderboard_changed(world.change(), world.rule)
    [as_json] = requests_to(httpserver, "/team")
    [as_slack] = requests_to(httpserver, "/chat")
    assert json.loads(as_json.get_data())["event"] == "leaderboard.changed"
    assert {"text", "blocks"} == set(json.loads(as_slack.get_data()))
    assert verify(SECRET, as_slack.headers, as_slack.get_data())


def test_500_500_200_delivers_the_summary_once(sqlite_uri: str, httpserver: HTTPServer) -> None:
    for status in (500, 500, 200):
        httpserver.expect_ordered_request("/team").respond_with_data("x", status=status)
    world = World(sqlite_uri, [hook(httpserver)])
    world.notifier.on_leaderboard_changed(world.change(), world.rule)
    world.end_pass()
    world.end_pass()
    requests = requests_to(httpserver, "/team")
    assert len(requests) == 3  # two refused attempts and one delivery, all of one summary
    assert len({r.headers[DELIVERY_ID_HEADER] for r in requests}) == 1
    assert world.sleeps.calls == [1.0, 2.0]
    assert world.pending() == {}


def test_receiver_down_for_a_pass_gets_the_summary_on_the_next_pass_once(
    sqlite_uri: str, receiver: HTTPServer
) -> None:
    receiver.expect_request("/team").respond_with_data("ok")
    world = World(sqlite_uri, [hook(receiver)])
    failures = (
        metrics.REGISTRY.get_sample_value("podium_watcher_webhook_failures_total", {"webhook": "team"}) or 0
    )

    with capture_logs() as logs:
        world.notifier.on_leaderboard_changed(world.change(), world.rule)
        world.end_pass()
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["webhook_failed"]
    assert world.notifier.last_pass.as_dict() == {
        "delivered": 0,
        "failed": 1,
        "rejected": 0,
        "kept_pending": 1,
    }
    [(key, value)] = world.pending().items()
    delivery_id = json.loads(value)["delivery_id"]
    assert key == f"{PENDING_TAG_PREFIX}team.{delivery_id}"
    after = metrics.REGISTRY.get_sample_value("podium_watcher_webhook_failures_total", {"webhook": "team"})
    assert after == failures + 3  # every failed attempt counts

    receiver.start()
    world.end_pass()  # the next pass, nothing changed: the pending summary goes out
    world.end_pass()
    world.end_pass()

    [request] = requests_to(receiver, "/team")
    assert request.headers[DELIVERY_ID_HEADER] == delivery_id  # the receiver can deduplicate
    assert verify(SECRET, request.headers, request.get_data())
    assert json.loads(request.get_data())["experiment_id"] == world.experiment_id
    assert world.pending() == {}


def test_pending_summaries_survive_a_restart_of_the_watcher(sqlite_uri: str, receiver: HTTPServer) -> None:
    receiver.expect_request("/team").respond_with_data("ok")
    world = World(sqlite_uri, [hook(receiver)])
    world.notifier.on_leaderboard_changed(world.change(), world.rule)
    world.notifier.on_leaderboard_changed(world.change(5), world.rule)
    assert len(world.pending()) == 2

    receiver.start()
    world.notifier = Notifier(
        {"team": hook(receiver)}, MlflowRegistry(world.tracking), sender=Sender(sleep=Sleeps())
    )
    world.end_pass()
    world.end_pass()
    bodies = [json.loads(r.get_data()) for r in requests_to(receiver, "/team")]
    assert [len(b["models"]) for b in bodies] == [3, 5]  # oldest first
    assert world.pending() == {}


def test_refused_summary_is_not_kept(sqlite_uri: str, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/team").respond_with_data("no such hook", status=404)
    world = World(sqlite_uri, [hook(httpserver)])
    with capture_logs() as logs:
        world.notifier.on_leaderboard_changed(world.change(), world.rule)
        world.end_pass()
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["webhook_rejected"]
    assert len(requests_to(httpserver, "/team")) == 1
    assert world.pending() == {}


def test_summary_is_kept_in_memory_when_the_tracking_server_is_down_too(
    sqlite_uri: str, receiver: HTTPServer
) -> None:
    receiver.expect_request("/team").respond_with_data("ok")
    world = World(sqlite_uri, [hook(receiver)])
    dead = MlflowTracking(f"http://127.0.0.1:{free_port()}")
    world.notifier = Notifier({"team": hook(receiver)}, MlflowRegistry(dead), sender=Sender(sleep=Sleeps()))
    with capture_logs() as logs:
        world.notifier.on_leaderboard_changed(world.change(), world.rule)
    assert "webhook_pending_store_failed" in [e["event"] for e in logs]
    world.end_pass()
    receiver.start()
    world.end_pass()
    world.end_pass()
    assert len(requests_to(receiver, "/team")) == 1


def test_a_webhook_that_failed_is_not_retried_again_in_the_same_pass(
    sqlite_uri: str, receiver: HTTPServer
) -> None:
    world = World(sqlite_uri, [hook(receiver)])
    for _ in range(3):  # three experiments changed in one pass while the receiver is down
        world.notifier.on_leaderboard_changed(world.change(), world.rule)
    assert world.sleeps.calls == [1.0, 2.0]  # one round of back-off, not three
    assert len(world.pending()) == 3


def test_too_many_pending_summaries_drop_the_oldest(sqlite_uri: str, receiver: HTTPServer) -> None:
    world = World(sqlite_uri, [hook(receiver)])
    world.notifier = Notifier(
        {"team": hook(receiver)}, MlflowRegistry(world.tracking), sender=Sender(sleep=Sleeps()), max_pending=2
    )
    for n in (1, 2, 3):
        world.notifier.on_leaderboard_changed(world.change(n), world.rule)
    with capture_logs() as logs:
        world.end_pass()
    assert [e["event"] for e in logs].count("webhook_pending_dropped") == 1
    receiver.expect_request("/team").respond_with_data("ok")
    receiver.start()
    world.end_pass()
    assert [len(json.loads(r.get_data())["models"]) for r in requests_to(receiver, "/team")] == [2, 3]
    assert world.pending() == {}


def test_urls_and_secrets_come_from_the_environment_and_are_never_logged(
    sqlite_uri: str, receiver: HTTPServer
) -> None:
    url = receiver.url_for("/hooks/T0/B0/very-secret-path")
    configs = [WebhookConfig(name="team", url_env="PODIUM_TEST_URL", secret_env="PODIUM_TEST_SECRET")]
    with pytest.raises(ConfigError, match="PODIUM_TEST_URL") as missing:
        resolve_targets(configs, {})
    with pytest.raises(ConfigError, match="PODIUM_TEST_SECRET"):
        resolve_targets(configs, {"PODIUM_TEST_URL": url})
    targets = resolve_targets(configs, {"PODIUM_TEST_URL": url, "PODIUM_TEST_SECRET": SECRET})
    assert (targets["team"].url, targets["team"].secret) == (url, SECRET)
    assert "very-secret-path" not in str(missing.value)

    world = World(sqlite_uri, list(targets.values()))
    with capture_logs() as logs:
        world.notifier.on_leaderboard_changed(world.change(), world.rule)  # receiver down
        world.end_pass()
        receiver.expect_request("/hooks/T0/B0/very-secret-path").respond_with_data("ok")
        receiver.start()
        world.end_pass()
    assert len(receiver.log) == 1
    dumped = repr(logs) + repr(targets) + json.dumps(world.pending())
    assert "very-secret-path" not in dumped
    assert SECRET not in dumped


def test_a_pass_that_failed_before_its_end_does_not_silence_the_webhook_next_pass(
    sqlite_uri: str, receiver: HTTPServer
) -> None:
    world = World(sqlite_uri, [hook(receiver)])
    world.notifier.on_pass_start()
    world.notifier.on_leaderboard_changed(world.change(), world.rule)  # receiver down
    # ... and the pass fails afterwards (tracking server gone): no on_pass_end.
    receiver.expect_request("/team").respond_with_data("ok")
    receiver.start()
    world.notifier.on_pass_start()
    world.notifier.on_leaderboard_changed(world.change(4), world.rule)
    assert [len(json.loads(r.get_data())["models"]) for r in requests_to(receiver, "/team")] == [4]
    world.end_pass()  # the summary kept by the failed pass goes out now, once
    world.end_pass()
    assert [len(json.loads(r.get_data())["models"]) for r in requests_to(receiver, "/team")] == [4, 3]


def test_any_webhook_name_makes_a_valid_pending_tag(sqlite_uri: str, receiver: HTTPServer) -> None:
    name = "ops alerts/#1 (é)"
    target = WebhookTarget(name=name, format="json", url=receiver.url_for("/ops"))
    world = World(sqlite_uri, [target])
    world.notifier.on_leaderboard_changed(world.change(), world.rule)
    world.end_pass()
    [key] = world.pending()
    assert key.startswith(f"{PENDING_TAG_PREFIX}ops_alerts__1__é_.")
    receiver.expect_request("/ops").respond_with_data("ok")
    receiver.start()
    world.end_pass()
    assert len(requests_to(receiver, "/ops")) == 1
    assert world.pending() == {}
