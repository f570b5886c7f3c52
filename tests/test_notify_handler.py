"""The notifier queues, the outbox keeps (in MLflow), the delivery worker sends once."""

from __future__ import annotations

import json
from typing import Any
from uuid import uuid4

import pytest
from mlflow import MlflowClient
from pytest_httpserver import HTTPServer
from structlog.testing import capture_logs

from tests.support.mlflow_server import ServerHandle, free_port
from tests.support.webhooks import SECRET, Sleeps, make_alert, make_event, requests_to, sample, verify
from watcher.delivery import DeliveryWorker
from watcher.errors import ConfigError
from watcher.mlflow_io import MlflowRegistry, MlflowTracking
from watcher.model import LeaderboardChanged, RunAlert, WatchedExperiment
from watcher.notify.handler import Notifier
from watcher.notify.sender import DELIVERY_ID_HEADER, Sender, WebhookTarget, resolve_targets
from watcher.outbox import LEGACY_WEBHOOK_PREFIX, TAG_PREFIX, Outbox
from watcher.settings import RuleConfig, WebhookConfig


class World:
    """A real sqlite tracking store with one experiment; a notifier, an outbox and a worker
    wired to it as the CLI wires them (the worker run by hand, one round per pass)."""

    def __init__(self, tracking_uri: str, targets: list[WebhookTarget], **rule: Any) -> None:
        self.tracking_uri = tracking_uri
        self.tracking = MlflowTracking(tracking_uri)
        self.client = MlflowClient(tracking_uri)
        self.name = f"exp_{uuid4().hex[:8]}"
        self.experiment_id = self.client.create_experiment(self.name)
        self.rule = RuleConfig(
            name="wf-xgboost",
            experiments=["exp_*"],
            metric="avg_test_r2",
            notify=[t.name for t in targets],
            **rule,
        )
        self.targets = targets
        self.restart()

    def restart(self, store: MlflowRegistry | None = None, **outbox: Any) -> None:
        """A new process: nothing in memory, only what MLflow holds."""
        self.sleeps = Sleeps()
        self.outbox = Outbox(store or MlflowRegistry(self.tracking), **outbox)
        self.notifier = Notifier(
            self.outbox, [t.name for t in self.targets], ui_base_url="http://mlflow.local:5000"
        )
        self.worker = DeliveryWorker(
            self.outbox,
            targets={t.name: t for t in self.targets},
            registry=None,
            sender=Sender(sleep=self.sleeps),
            ui_base_url="http://mlflow.local:5000",
        )

    def change(self, n: int = 3, sequence: int = 1) -> LeaderboardChanged:
        return make_event(n, experiment_id=self.experiment_id, sequence=sequence)

    def alert(self, kind: str = "failed") -> RunAlert:
        alert = make_alert(kind)
        return RunAlert(**{**alert.__dict__, "experiment_id": self.experiment_id})

    def run_pass(self, *events: LeaderboardChanged | RunAlert) -> dict[str, int]:
        """What a pass does with these handlers, then one worker round (as `--once` does)."""
        self.worker.on_pass_start()
        for event in events:
            if isinstance(event, RunAlert):
                self.notifier.on_run_alert(event, self.rule)
            else:
                self.notifier.on_leaderboard_changed(event, self.rule)
        record = self.tracking.get_experiment_by_name(self.name)
        assert record is not None
        self.worker.on_pass_end(
            [WatchedExperiment(record.experiment_id, record.name, record.tags, self.rule)]
        )
        return self.worker.drain()

    def pending(self) -> dict[str, str]:
        tags = self.client.get_experiment(self.experiment_id).tags
        return {k: v for k, v in tags.items() if k.startswith((TAG_PREFIX, LEGACY_WEBHOOK_PREFIX))}


pytestmark = pytest.mark.server


@pytest.fixture
def tracking_uri(sqlite_server: ServerHandle) -> str:
    """The session's real sqlite-backed server (a fresh experiment per test keeps them apart)."""
    return sqlite_server.url


def hook(server: HTTPServer, name: str = "team", fmt: str = "json") -> WebhookTarget:
    return WebhookTarget(name=name, format=fmt, url=server.url_for(f"/{name}"), secret=SECRET)  # type: ignore[arg-type]


def test_exactly_one_signed_delivery_per_change_and_nothing_on_idle_passes(
    tracking_uri: str, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/team", method="POST").respond_with_data("ok")
    world = World(tracking_uri, [hook(httpserver)])
    delivered = sample("podium_watcher_webhook_deliveries_total")

    assert world.run_pass(world.change()) == {"webhooks_delivered": 1}
    assert world.run_pass(world.change(4)) == {"webhooks_delivered": 1}
    assert world.run_pass() == {}  # idle passes: no change, nothing pending
    assert world.run_pass() == {}

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
    assert world.outbox.pending() == 0
    assert sample("podium_watcher_webhook_deliveries_total") == delivered + 2


def test_the_handler_only_queues_the_delivery_as_an_experiment_tag(
    tracking_uri: str, receiver: HTTPServer
) -> None:
    """No request leaves in the pass: the summary waits in the outbox, with its delivery id."""
    world = World(tracking_uri, [hook(receiver)])
    receiver.expect_request("/team").respond_with_data("ok")
    receiver.start()
    world.notifier.on_leaderboard_changed(world.change(), world.rule)
    assert world.notifier.pass_report() == {"webhooks_queued": 1}
    assert len(receiver.log) == 0
    [(key, value)] = world.pending().items()
    entry = json.loads(value)
    assert key == f"{TAG_PREFIX}webhook.team.{entry['entry_id']}"
    assert entry["data"]["payload"]["event"] == "leaderboard.changed"
    world.worker.drain()
    [request] = requests_to(receiver, "/team")
    assert request.headers[DELIVERY_ID_HEADER] == entry["entry_id"]
    assert world.pending() == {}


def test_each_webhook_of_a_rule_gets_the_summary_in_its_format(
    tracking_uri: str, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/team").respond_with_data("ok")
    httpserver.expect_request("/chat").respond_with_data("ok")
    world = World(tracking_uri, [hook(httpserver), hook(httpserver, "chat", "slack")])
    world.run_pass(world.change())
    [as_json] = requests_to(httpserver, "/team")
    [as_slack] = requests_to(httpserver, "/chat")
    assert json.loads(as_json.get_data())["event"] == "leaderboard.changed"
    assert {"text", "blocks"} == set(json.loads(as_slack.get_data()))
    assert verify(SECRET, as_slack.headers, as_slack.get_data())


def test_500_500_200_delivers_the_summary_once(tracking_uri: str, httpserver: HTTPServer) -> None:
    for status in (500, 500, 200):
        httpserver.expect_ordered_request("/team").respond_with_data("x", status=status)
    world = World(tracking_uri, [hook(httpserver)])
    world.run_pass(world.change())
    world.run_pass()
    requests = requests_to(httpserver, "/team")
    assert len(requests) == 3  # two refused attempts and one delivery, all of one summary
    assert len({r.headers[DELIVERY_ID_HEADER] for r in requests}) == 1
    assert world.sleeps.calls == [1.0, 2.0]
    assert world.pending() == {}


def test_undelivered_summaries_survive_a_restart_and_are_sent_once_oldest_first(
    tracking_uri: str, receiver: HTTPServer
) -> None:
    receiver.expect_request("/team").respond_with_data("ok")
    world = World(tracking_uri, [hook(receiver)])
    world.run_pass(world.change(), world.change(5))  # receiver down: both stay in the outbox
    ids = sorted(json.loads(v)["entry_id"] for v in world.pending().values())
    assert len(ids) == 2

    receiver.start()
    world.restart()  # a new process knows only what MLflow holds
    assert world.run_pass() == {"webhooks_delivered": 2}
    assert world.run_pass() == {}
    requests = requests_to(receiver, "/team")
    assert [len(json.loads(r.get_data())["models"]) for r in requests] == [3, 5]  # oldest first
    assert sorted(r.headers[DELIVERY_ID_HEADER] for r in requests) == ids
    assert world.pending() == {}


def test_summaries_kept_by_an_earlier_version_are_still_sent_once(
    tracking_uri: str, receiver: HTTPServer
) -> None:
    """An upgrade loses nothing: `podium.webhook_pending.*` tags are read and removed once sent."""
    receiver.expect_request("/team").respond_with_data("ok")
    receiver.start()
    world = World(tracking_uri, [hook(receiver)])
    payload = {"event": "leaderboard.changed", "experiment_id": world.experiment_id, "models": []}
    world.client.set_experiment_tag(
        world.experiment_id,
        f"{LEGACY_WEBHOOK_PREFIX}team.d-legacy",
        json.dumps({"webhook": "team", "delivery_id": "d-legacy", "failed_at": 1.0, "payload": payload}),
    )
    assert world.run_pass() == {"webhooks_delivered": 1}
    assert world.run_pass() == {}
    [request] = requests_to(receiver, "/team")
    assert request.headers[DELIVERY_ID_HEADER] == "d-legacy"
    assert json.loads(request.get_data()) == payload
    assert world.pending() == {}


def test_one_change_kept_by_two_notifiers_is_one_entry_and_a_later_identical_change_another(
    tracking_uri: str, receiver: HTTPServer
) -> None:
    """Two processes' notifiers, with their own clocks, keep the same change (and alert) under
    one delivery id, so one tag; the same board change numbered later is a new entry. A process
    that adopted the entry from the listing and keeps it again sends it once."""
    world = World(tracking_uri, [hook(receiver)], alerts=["failed"])
    other = Notifier(
        Outbox(MlflowRegistry(world.tracking)),
        ["team"],
        ui_base_url="http://mlflow.local:5000",
        clock=lambda: 2_000_000_000.0,
    )
    other.on_leaderboard_changed(world.change(sequence=2), world.rule)
    other.on_run_alert(world.alert("failed"), world.rule)
    world.notifier.on_leaderboard_changed(world.change(sequence=2), world.rule)
    world.notifier.on_run_alert(world.alert("failed"), world.rule)
    kept = [json.loads(v) for v in world.pending().values()]
    assert sorted(e["data"]["payload"]["event"] for e in kept) == ["leaderboard.changed", "run.failed"]
    [summary] = [e["entry_id"] for e in kept if e["data"]["payload"]["event"] == "leaderboard.changed"]

    world.notifier.on_leaderboard_changed(world.change(sequence=4), world.rule)
    ids = {json.loads(v)["entry_id"] for v in world.pending().values()}
    assert len(ids) == 3
    assert summary in ids

    receiver.expect_request("/team").respond_with_data("ok")
    receiver.start()
    world.restart()  # adopts the three from the listing
    world.run_pass()
    world.notifier.on_leaderboard_changed(world.change(sequence=2), world.rule)  # done here already
    assert world.notifier.pass_report() == {}
    assert world.run_pass() == {}
    requests = requests_to(receiver, "/team")
    assert sorted(r.headers[DELIVERY_ID_HEADER] for r in requests) == sorted(ids)
    assert world.pending() == {}


def test_refused_summary_is_not_kept(tracking_uri: str, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/team").respond_with_data("no such hook", status=404)
    world = World(tracking_uri, [hook(httpserver)])
    with capture_logs() as logs:
        assert world.run_pass(world.change()) == {"webhooks_rejected": 1}
        world.run_pass()
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["webhook_rejected"]
    assert len(requests_to(httpserver, "/team")) == 1
    assert world.pending() == {}


def test_summary_is_kept_in_memory_when_the_tracking_server_is_down_too(
    tracking_uri: str, receiver: HTTPServer
) -> None:
    receiver.expect_request("/team").respond_with_data("ok")
    world = World(tracking_uri, [hook(receiver)])
    world.restart(MlflowRegistry(MlflowTracking(f"http://127.0.0.1:{free_port()}")))
    with capture_logs() as logs:
        world.run_pass(world.change())
    assert "outbox_store_failed" in [e["event"] for e in logs]
    assert world.outbox.pending() == 1
    receiver.start()
    world.run_pass()
    world.run_pass()
    assert len(requests_to(receiver, "/team")) == 1


def test_a_webhook_that_failed_is_not_retried_again_in_the_same_pass(
    tracking_uri: str, receiver: HTTPServer
) -> None:
    world = World(tracking_uri, [hook(receiver)])
    world.worker.on_pass_start()
    for sequence in (1, 2, 3):  # three changes in one pass while the receiver is down
        world.notifier.on_leaderboard_changed(world.change(sequence=sequence), world.rule)
        world.worker.drain()  # the daemon's worker wakes on every queued entry
    assert world.sleeps.calls == [1.0, 2.0]  # one round of back-off, not three
    assert len(world.pending()) == 3
    world.run_pass()  # the next pass tries again, once more
    assert world.sleeps.calls == [1.0, 2.0] * 2


def test_too_many_pending_summaries_drop_the_oldest(tracking_uri: str, receiver: HTTPServer) -> None:
    world = World(tracking_uri, [hook(receiver)])
    world.restart(max_per_target=2)
    with capture_logs() as logs:
        world.run_pass(*(world.change(n) for n in (1, 2, 3)))
    assert [e["event"] for e in logs].count("outbox_entry_dropped") == 1
    assert len(world.pending()) == 2
    receiver.expect_request("/team").respond_with_data("ok")
    receiver.start()
    world.restart()
    world.run_pass()
    assert [len(json.loads(r.get_data())["models"]) for r in requests_to(receiver, "/team")] == [2, 3]
    assert world.pending() == {}


def test_urls_and_secrets_come_from_the_environment_and_are_never_logged(
    tracking_uri: str, receiver: HTTPServer
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

    world = World(tracking_uri, list(targets.values()))
    with capture_logs() as logs:
        world.run_pass(world.change())  # receiver down
        receiver.expect_request("/hooks/T0/B0/very-secret-path").respond_with_data("ok")
        receiver.start()
        world.run_pass()
    assert len(receiver.log) == 1
    dumped = repr(logs) + repr(targets) + json.dumps(world.pending())
    assert "very-secret-path" not in dumped
    assert SECRET not in dumped


def test_any_webhook_name_makes_a_valid_outbox_tag(tracking_uri: str, receiver: HTTPServer) -> None:
    name = "ops alerts/#1 (é)"
    target = WebhookTarget(name=name, format="json", url=receiver.url_for("/ops"))
    world = World(tracking_uri, [target])
    world.run_pass(world.change())
    [key] = world.pending()
    assert key.startswith(f"{TAG_PREFIX}webhook.ops_alerts__1__é_.")
    receiver.expect_request("/ops").respond_with_data("ok")
    receiver.start()
    world.run_pass()
    assert len(requests_to(receiver, "/ops")) == 1
    assert world.pending() == {}


def test_alerts_go_signed_and_once_to_the_rules_webhooks_for_the_kinds_it_lists(
    tracking_uri: str, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/team").respond_with_data("ok")
    httpserver.expect_request("/chat").respond_with_data("ok")
    world = World(tracking_uri, [hook(httpserver), hook(httpserver, "chat", "slack")], alerts=["failed"])
    assert world.run_pass(world.alert("failed"), world.alert("stalled")) == {"webhooks_delivered": 2}
    assert world.run_pass() == {}
    [as_json] = requests_to(httpserver, "/team")
    [as_slack] = requests_to(httpserver, "/chat")
    body = json.loads(as_json.get_data())
    assert (body["event"], body["run_id"], body["status"]) == ("run.failed", "run9", "FAILED")
    assert body["url"] == f"http://mlflow.local:5000/#/experiments/{world.experiment_id}/runs/run9"
    assert verify(SECRET, as_json.headers, as_json.get_data())
    assert verify(SECRET, as_slack.headers, as_slack.get_data())
    assert list(json.loads(as_slack.get_data())) == ["text"]
    assert world.pending() == {}


def test_an_undelivered_alert_is_retried_with_its_delivery_id(
    tracking_uri: str, receiver: HTTPServer
) -> None:
    world = World(tracking_uri, [hook(receiver)], alerts=["failed", "stalled"])
    world.run_pass(world.alert("stalled"))  # receiver down
    [value] = world.pending().values()
    receiver.expect_request("/team").respond_with_data("ok")
    receiver.start()
    world.restart()
    world.run_pass()
    world.run_pass()
    [request] = requests_to(receiver, "/team")
    assert request.headers[DELIVERY_ID_HEADER] == json.loads(value)["entry_id"]
    assert json.loads(request.get_data())["event"] == "run.stalled"


def test_a_rule_without_alerts_or_webhooks_queues_no_alert(tracking_uri: str, httpserver: HTTPServer) -> None:
    world = World(tracking_uri, [hook(httpserver)])  # alerts: [] by default
    world.notifier.on_run_alert(world.alert("failed"), world.rule)
    silent = RuleConfig(name="quiet", experiments=["x"], metric="m", alerts=["failed"])
    world.notifier.on_run_alert(world.alert("failed"), silent)
    assert world.outbox.pending() == 0
    assert world.pending() == {}
