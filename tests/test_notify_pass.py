"""Webhooks and registry promotion through real watcher passes against a real `mlflow server`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from uuid import uuid4

import httpx
import mlflow
import pytest
import yaml
from mlflow import MlflowClient
from pytest_httpserver import HTTPServer
from structlog.testing import capture_logs
from werkzeug import Request, Response

from tests.support.mlflow_server import ServerHandle
from tests.support.proxy import Proxy
from tests.support.registry_runs import log_run, predict
from tests.support.webhooks import SECRET, Sleeps, requests_to, sample, verify
from watcher.api import bind_socket, create_app, run_in_thread
from watcher.cli import build_handlers, main
from watcher.delivery import DeliveryWorker
from watcher.mlflow_io import MlflowRegistry, MlflowTracking
from watcher.notify.handler import Notifier
from watcher.notify.sender import DELIVERY_ID_HEADER, Sender, resolve_targets
from watcher.outbox import TAG_PREFIX, Outbox
from watcher.registry import RegistryPromoter
from watcher.service import PassResult, Watcher
from watcher.settings import WatcherSettings

pytestmark = pytest.mark.server


@pytest.fixture
def server(sqlite_server: ServerHandle) -> ServerHandle:
    mlflow.set_tracking_uri(sqlite_server.url)  # conftest restores it after the test
    return sqlite_server


def make_settings(
    url: str, experiment: str, hook_url: str, model_name: str | None, **hook: object
) -> WatcherSettings:
    rule: dict[str, object] = {
        "name": "wf-xgboost",
        "experiments": [experiment],
        "metric": "avg_test_r2",
        "top_n": 3,
        "notify": ["team"],
        "trigger": "run_finished",
    }
    if model_name is not None:
        rule["registry"] = {"model_name": model_name, "alias": "champion"}
    webhook = {"name": "team", "url": hook_url, "format": "json", "secret_env": "PODIUM_TEST_SECRET", **hook}
    return WatcherSettings(
        tracking_uri=url,
        ui_base_url="http://mlflow.local:5000",
        http={"enabled": False},
        webhooks=[webhook],
        rules=[rule],
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
    delivery = build_handlers(settings, tracking)
    watcher = Watcher(settings, tracking, delivery.handlers)
    client = MlflowClient(server.url)

    result = watcher.run_pass()
    assert result.ok
    # The pass only queues; the worker's round (what --once runs before it exits) sends.
    assert result.handler_report == {"webhooks_queued": 1, "registry_queued": 1, "outbox_pending": 2}
    assert requests_to(receiver, "/hook") == []
    assert delivery.worker.drain() == {"webhooks_delivered": 1, "registry_promoted": 1}
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
    assert delivery.worker.drain() == {}
    # The handlers add no tracking call to an idle pass (the outbox reads the listing).
    assert not set(tracking.calls_by_method) & {
        "get_model_version_by_alias",
        "search_model_versions",
        "get_run",
        "set_experiment_tag",
        "delete_experiment_tag",
    }
    assert len(requests_to(receiver, "/hook")) == 1  # an idle pass sends nothing

    better = log_run(exp_id, 0.9)
    assert watcher.run_pass().ok
    assert delivery.worker.drain() == {"webhooks_delivered": 1, "registry_promoted": 1}
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
    """The receiver is down for a pass: the ranking is tagged anyway, the webhook's only
    warning is its failure (every attempt counted), the summary waits in MLflow, and the next
    pass delivers it once, signed, with the same delivery id; later passes send nothing."""
    monkeypatch.setenv("PODIUM_TEST_SECRET", SECRET)
    name = f"exp_{uuid4().hex[:8]}"
    exp_id = mlflow.create_experiment(name)
    leader = log_run(exp_id, 0.7, how="none")
    settings = make_settings(server.url, name, receiver.url_for("/hook"), f"wf-{uuid4().hex[:8]}")
    tracking = MlflowTracking(server.url)
    store = MlflowRegistry(tracking)
    targets = resolve_targets(settings.webhooks)
    outbox = Outbox(store)
    worker = DeliveryWorker(outbox, targets=targets, registry=store, sender=Sender(sleep=Sleeps()))
    watcher = Watcher(settings, tracking, [RegistryPromoter(outbox), Notifier(outbox, targets), worker])
    failures = sample("podium_watcher_webhook_failures_total")

    down = watcher.run_pass()
    assert down.ok  # ranking done and tagged although the receiver is down
    assert MlflowClient(server.url).get_run(leader).data.tags["model_rank"] == "1"
    with capture_logs() as logs:
        assert worker.drain() == {"webhooks_failed": 1, "registry_no_model": 1}
    assert [e["event"] for e in logs if e["log_level"] == "warning" and "webhook" in e] == ["webhook_failed"]
    assert worker.pass_report() == {"outbox_pending": 1}
    assert sample("podium_watcher_webhook_failures_total") == failures + 3  # every failed attempt

    [pending] = pending_summaries(server, exp_id)

    receiver.expect_request("/hook").respond_with_data("ok")
    receiver.start()
    reports = []
    for _ in range(3):
        assert watcher.run_pass().ok
        reports.append(worker.drain())
    assert reports == [{"webhooks_delivered": 1}, {}, {}]
    [request] = requests_to(receiver, "/hook")
    assert verify(SECRET, request.headers, request.get_data())
    assert (
        request.headers[DELIVERY_ID_HEADER] == json.loads(pending)["entry_id"]
    )  # the receiver can deduplicate
    assert json.loads(request.get_data())["experiment_id"] == exp_id
    assert json.loads(request.get_data())["models"][0]["run_id"] == leader
    assert pending_summaries(server, exp_id) == []


def pending_summaries(server: ServerHandle, experiment_id: str) -> list[str]:
    tags = MlflowClient(server.url).get_experiment(experiment_id).tags
    return [v for k, v in tags.items() if k.startswith(TAG_PREFIX)]


def slow_receiver(receiver: HTTPServer, seconds: float) -> None:
    def answer(request: Request) -> Response:
        time.sleep(seconds)
        return Response("ok")

    receiver.expect_request("/hook").respond_with_handler(answer)
    receiver.start()


def test_a_hanging_receiver_delays_no_pass(
    server: ServerHandle, receiver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver takes 5 s to answer; the pass returns long before (the worker thread
    waits for it), and the summary still arrives, once."""
    monkeypatch.setenv("PODIUM_TEST_SECRET", SECRET)
    slow_receiver(receiver, 5.0)
    name = f"exp_{uuid4().hex[:8]}"
    exp_id = mlflow.create_experiment(name)
    log_run(exp_id, 0.7, how="none")
    settings = make_settings(server.url, name, receiver.url_for("/hook"), None, timeout_seconds=30)
    tracking = MlflowTracking(server.url)
    delivery = build_handlers(settings, tracking)
    watcher = Watcher(settings, tracking, delivery.handlers)
    delivery.worker.start()
    try:
        started = time.monotonic()
        result = watcher.run_pass()
        took = time.monotonic() - started
        assert result.ok
        assert result.handler_report.get("webhooks_queued") == 1
        assert took < 2.0, f"the pass took {took:.1f} s with a receiver that answers in 5 s"

        log_run(exp_id, 0.9, how="none")  # a second change while the first is still in flight
        started = time.monotonic()
        assert watcher.run_pass().ok
        assert time.monotonic() - started < 2.0

        deadline = time.monotonic() + 60
        while delivery.worker.outbox.pending() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert delivery.worker.outbox.pending() == 0
    finally:
        delivery.worker.stop()
    requests = requests_to(receiver, "/hook")
    assert len(requests) == 2
    assert len({r.headers[DELIVERY_ID_HEADER] for r in requests}) == 2
    assert all(verify(SECRET, r.headers, r.get_data()) for r in requests)
    assert pending_summaries(server, exp_id) == []


def write_config(tmp_path: Path, settings: WatcherSettings) -> str:
    path = tmp_path / "watcher.yaml"
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json", exclude_none=True)), encoding="utf-8")
    return str(path)


def test_once_delivers_before_it_exits_and_a_later_run_sends_what_failed_once(
    server: ServerHandle, receiver: HTTPServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PODIUM_TEST_SECRET", SECRET)
    name = f"exp_{uuid4().hex[:8]}"
    exp_id = mlflow.create_experiment(name)
    log_run(exp_id, 0.7, how="none")
    config = write_config(
        tmp_path, make_settings(server.url, name, receiver.url_for("/hook"), None, max_attempts=1)
    )

    assert main(["--once", "--config", config, "--log-format", "json"]) == 0  # receiver down
    [pending] = pending_summaries(server, exp_id)  # kept in MLflow for the next run

    receiver.expect_request("/hook").respond_with_data("ok")
    receiver.start()
    log_run(exp_id, 0.9, how="none")
    assert main(["--once", "--config", config, "--log-format", "json"]) == 0
    requests = requests_to(receiver, "/hook")
    # Both went out before the process returned: the kept one (same delivery id) and the new one.
    assert len(requests) == 2
    assert json.loads(pending)["entry_id"] in {r.headers[DELIVERY_ID_HEADER] for r in requests}
    assert pending_summaries(server, exp_id) == []
    assert main(["--once", "--config", config, "--log-format", "json"]) == 0
    assert len(requests_to(receiver, "/hook")) == 2  # nothing is sent twice


def test_a_run_that_fails_or_stalls_after_the_rule_saw_the_experiment_is_announced_once(
    server: ServerHandle, receiver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PODIUM_TEST_SECRET", SECRET)
    receiver.expect_request("/hook").respond_with_data("ok")
    receiver.start()
    name = f"exp_{uuid4().hex[:8]}"
    exp_id = mlflow.create_experiment(name)
    log_run(exp_id, 0.7, how="none")
    settings = make_settings(server.url, name, receiver.url_for("/hook"), None)
    rule = settings.rules[0].model_copy(
        update={"alerts": ["failed", "stalled"], "stalled_after_minutes": 1, "trigger": "experiment_finished"}
    )
    settings = settings.model_copy(update={"rules": [rule]})
    tracking = MlflowTracking(server.url)
    delivery = build_handlers(settings, tracking)
    shift = [0.0]  # the watcher's clock runs ahead once the stuck run exists
    watcher = Watcher(settings, tracking, delivery.handlers, clock=lambda: time.time() + shift[0])

    def events() -> list[dict[str, object]]:
        return [json.loads(r.get_data()) for r in requests_to(receiver, "/hook")]

    assert watcher.run_pass().ok  # the rule sees the experiment: its first summary, no alert
    delivery.worker.drain()
    assert [e["event"] for e in events()] == ["leaderboard.changed"]

    client = MlflowClient(server.url)
    failed = client.create_run(exp_id, run_name="broken-trial").info.run_id
    client.set_terminated(failed, "FAILED")
    stalled = client.create_run(exp_id, run_name="stuck-trial").info.run_id
    shift[0] = 90.0  # 90 s later by the watcher's clock: RUNNING with no activity for 1.5 minutes
    for _ in range(3):
        assert watcher.run_pass().ok
        delivery.worker.drain()

    alerts = {e["event"]: e for e in events() if str(e["event"]).startswith("run.")}
    assert sorted(alerts) == ["run.failed", "run.stalled"]  # one each, never twice
    assert len([e for e in events() if str(e["event"]).startswith("run.")]) == 2
    assert (alerts["run.failed"]["run_id"], alerts["run.failed"]["status"]) == (failed, "FAILED")
    assert alerts["run.failed"]["run_name"] == "broken-trial"
    assert (alerts["run.stalled"]["run_id"], alerts["run.stalled"]["status"]) == (stalled, "RUNNING")
    assert alerts["run.stalled"]["url"] == f"http://mlflow.local:5000/#/experiments/{exp_id}/runs/{stalled}"
    assert str(alerts["run.stalled"]["last_activity"]).endswith("Z")
    for request in requests_to(receiver, "/hook"):
        assert verify(SECRET, request.headers, request.get_data())
    assert pending_summaries(server, exp_id) == []


def finished_runs(client: MlflowClient, exp_id: str, values: list[float]) -> None:
    for value in values:
        run_id = client.create_run(exp_id).info.run_id
        client.log_metric(run_id, "avg_test_r2", value)
        client.set_terminated(run_id, "FINISHED")


def alert_watcher(
    server: ServerHandle, receiver: HTTPServer, experiments: list[str], trigger: str
) -> tuple[Watcher, DeliveryWorker, list[float]]:
    settings = make_settings(server.url, experiments[0], receiver.url_for("/hook"), None)
    rule = settings.rules[0].model_copy(
        update={
            "experiments": experiments,
            "alerts": ["failed", "stalled"],
            "stalled_after_minutes": 1,
            "trigger": trigger,
        }
    )
    settings = settings.model_copy(update={"rules": [rule]})
    tracking = MlflowTracking(server.url)
    delivery = build_handlers(settings, tracking)
    shift = [0.0]
    watcher = Watcher(settings, tracking, delivery.handlers, clock=lambda: time.time() + shift[0])
    return watcher, delivery.worker, shift


def run_alerts(receiver: HTTPServer) -> list[dict[str, object]]:
    found = [json.loads(r.get_data()) for r in requests_to(receiver, "/hook")]
    return [e for e in found if str(e["event"]).startswith("run.")]


def test_an_experiment_first_seen_while_a_run_is_running_announces_what_fails_or_stalls_later(
    server: ServerHandle, receiver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B waits for a RUNNING run when the rule first sees it: runs that fail meanwhile, and the
    run that then stalls, are announced once each, like in A, which ranks at once."""
    monkeypatch.setenv("PODIUM_TEST_SECRET", SECRET)
    receiver.expect_request("/hook").respond_with_data("ok")
    receiver.start()
    client = MlflowClient(server.url)
    tag = uuid4().hex[:8]
    a_id = client.create_experiment(f"al_{tag}_A")
    b_id = client.create_experiment(f"al_{tag}_B")
    finished_runs(client, a_id, [0.1 * i for i in range(10)])
    finished_runs(client, b_id, [0.05 * i for i in range(10)])
    long_run = client.create_run(b_id, run_name="long").info.run_id
    watcher, worker, shift = alert_watcher(server, receiver, [f"al_{tag}_*"], "experiment_finished")

    assert watcher.run_pass().ok  # A ranks; B waits for its RUNNING run
    assert client.get_experiment(b_id).tags.get("podium.state")  # B's first sight is kept
    failed = {}
    for exp_id in (a_id, b_id):
        failed[exp_id] = client.create_run(exp_id, run_name="broken").info.run_id
        client.set_terminated(failed[exp_id], "FAILED")
    assert watcher.run_pass().ok
    worker.drain()
    shift[0] = 90.0  # the long run has been silent for 1.5 minutes by the watcher's clock
    for _ in range(2):
        assert watcher.run_pass().ok
        worker.drain()

    got = sorted((e["event"], e["run_id"]) for e in run_alerts(receiver))
    want = sorted([("run.failed", failed[a_id]), ("run.failed", failed[b_id]), ("run.stalled", long_run)])
    assert got == want
    ranked = client.search_runs([b_id], "tags.model_rank = '1'")
    assert [r.data.metrics["avg_test_r2"] for r in ranked] == [0.45]  # B ranked once it stalled


def test_sixty_runs_stalling_at_once_are_each_announced_exactly_once(
    server: ServerHandle, receiver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More stalled runs than the outbox holds per webhook: each pass queues what fits, oldest
    first, and leaves the rest for later passes; none is dropped, none announced twice."""
    monkeypatch.setenv("PODIUM_TEST_SECRET", SECRET)
    receiver.expect_request("/hook").respond_with_data("ok")
    receiver.start()
    client = MlflowClient(server.url)
    name = f"flood_{uuid4().hex[:8]}"
    exp_id = client.create_experiment(name)
    finished_runs(client, exp_id, [0.5])
    watcher, worker, shift = alert_watcher(server, receiver, [name], "run_finished")
    assert watcher.run_pass().ok
    worker.drain()
    stuck = {client.create_run(exp_id, run_name=f"stuck{i:02d}").info.run_id for i in range(60)}

    counts = []
    for k in range(6):
        shift[0] = 90.0 + 60.0 * k  # a stall check is due every pass
        assert watcher.run_pass().ok
        worker.drain()
        counts.append(len(run_alerts(receiver)))
    announced = [e["run_id"] for e in run_alerts(receiver)]
    assert sorted(announced) == sorted(stuck)  # every run once: none dropped, none twice
    assert counts[0] < 60  # spread over passes (the outbox holds 20 per webhook) ...
    assert counts[-1] == 60  # ... then nothing more
    assert pending_summaries(server, exp_id) == []


def test_more_runs_failing_at_once_than_the_outbox_holds_are_each_announced_once_oldest_first(
    server: ServerHandle, receiver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """45 runs fail at the same millisecond while the receiver is down: a pass queues what
    the outbox holds (20 per webhook), the rest wait behind the state's cursor although the
    watermark moved past them; once the receiver is back, later passes announce them as the
    outbox drains, in (end_time, run_id) order, every run exactly once."""
    monkeypatch.setenv("PODIUM_TEST_SECRET", SECRET)
    client = MlflowClient(server.url)
    name = f"failflood_{uuid4().hex[:8]}"
    exp_id = client.create_experiment(name)
    finished_runs(client, exp_id, [0.5])
    settings = make_settings(server.url, name, receiver.url_for("/hook"), None, max_attempts=1)
    rule = settings.rules[0].model_copy(update={"alerts": ["failed"]})
    settings = settings.model_copy(update={"rules": [rule]})
    delivery = build_handlers(settings, MlflowTracking(server.url))
    watcher = Watcher(settings, MlflowTracking(server.url), delivery.handlers)
    assert watcher.run_pass().ok  # the rule sees the experiment; its summary waits (receiver down)
    assert delivery.worker.drain() == {"webhooks_failed": 1}

    runs = [client.create_run(exp_id, run_name=f"broken{i:02d}").info.run_id for i in range(45)]
    ended_at = int(time.time() * 1000) + 1
    for run_id in runs:
        client.set_terminated(run_id, "FAILED", end_time=ended_at)
    for _ in range(2):  # the outbox fills, then stays full
        assert watcher.run_pass().ok
        delivery.worker.drain()
    state = json.loads(client.get_experiment(exp_id).tags["podium.state"])
    assert state.get("alert_cursor") == [ended_at, sorted(runs)[18]]  # 18 queued beside the summary
    assert state["seen"] == ended_at

    receiver.expect_request("/hook").respond_with_data("ok")
    receiver.start()
    for _ in range(5):
        assert watcher.run_pass().ok
        delivery.worker.drain()
    announced = [e["run_id"] for e in run_alerts(receiver)]
    assert announced == sorted(runs)  # each once, oldest first (ties by run id)
    assert {e["event"] for e in run_alerts(receiver)} == {"run.failed"}
    assert pending_summaries(server, exp_id) == []
    assert json.loads(client.get_experiment(exp_id).tags["podium.state"])["alert_cursor"] is None
    summaries = [r for r in requests_to(receiver, "/hook") if b"leaderboard.changed" in r.get_data()]
    assert len(summaries) == 1  # the first summary, sent once; no FINISHED run counted again


def test_an_api_ranking_with_another_top_n_posts_no_false_summary_and_a_real_change_once(
    server: ServerHandle, receiver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule ranks a top 10 and announces it; POST /models/rank tags a top 3 in between.
    The next pass puts the top 10 back and posts nothing (it is what the rule announced); a
    better run afterwards is announced once, as the change against the rule's board."""
    monkeypatch.setenv("PODIUM_TEST_SECRET", SECRET)
    receiver.expect_request("/hook").respond_with_data("ok")
    receiver.start()
    client = MlflowClient(server.url)
    name = f"apirank_{uuid4().hex[:8]}"
    exp_id = client.create_experiment(name)
    finished_runs(client, exp_id, [0.5 + i / 100 for i in range(12)])
    settings = make_settings(server.url, name, receiver.url_for("/hook"), None)
    settings = settings.model_copy(update={"rules": [settings.rules[0].model_copy(update={"top_n": 10})]})
    delivery = build_handlers(settings, MlflowTracking(server.url))
    watcher = Watcher(settings, MlflowTracking(server.url), delivery.handlers)
    api = run_in_thread(create_app(watcher), bind_socket("127.0.0.1", 0))

    def summaries() -> list[dict[str, object]]:
        found = [json.loads(r.get_data()) for r in requests_to(receiver, "/hook")]
        return [e for e in found if e["event"] == "leaderboard.changed"]

    def top(n: int) -> list[str]:
        runs = client.search_runs([exp_id], f"tags.top_{n} = 'true'")
        return [r.info.run_id for r in sorted(runs, key=lambda r: int(r.data.tags["model_rank"]))]

    try:
        assert watcher.run_pass().ok
        delivery.worker.drain()
        assert len(summaries()) == 1
        announced = top(10)
        assert len(announced) == 10

        with httpx.Client(base_url=api.url, timeout=60) as http:
            r = http.post(
                "/models/rank",
                params={"experiment_name": name, "metric": "avg_test_r2", "top_n": 3, "ascending": "false"},
            )
        assert r.status_code == 200, r.text
        assert [m["run_id"] for m in r.json()["models"]] == announced[:3]
        assert top(3) == announced[:3]
        assert top(10) == []

        back = watcher.run_pass()
        assert back.ok
        assert [(o.action, o.reason) for o in back.outcomes] == [("rerank", "reshaped")]
        delivery.worker.drain()
        assert top(10) == announced  # the rule's board is back ...
        assert len(summaries()) == 1  # ... and it is what the rule announced: no summary

        better = client.create_run(exp_id).info.run_id
        client.log_metric(better, "avg_test_r2", 0.99)
        client.set_terminated(better, "FINISHED")
        for _ in range(2):
            assert watcher.run_pass().ok
            delivery.worker.drain()
    finally:
        api.stop()
    assert len(summaries()) == 2  # the real change, once
    change = summaries()[1]["changes"]
    assert change == {"new_leader": True, "entered": [better], "left": [announced[-1]]}
    assert top(10) == [better, *announced[:9]]


def test_two_replicas_deciding_one_change_keep_one_outbox_entry_and_post_one_delivery_id(
    server: ServerHandle,
    receiver: HTTPServer,
    monkeypatch: pytest.MonkeyPatch,
    counting_proxy: Callable[[str], Proxy],
) -> None:
    """Two watchers over one experiment both read it before either writes (each held at its
    first write by its own proxy), so both decide its first ranking: they keep one summary and
    one promotion, under one tag each. Each replica still holds the summary it kept and sends
    it, so the receiver gets two POSTs, both with the tag's delivery id: it drops the copy.
    Later passes of either send nothing more."""
    monkeypatch.setenv("PODIUM_TEST_SECRET", SECRET)
    receiver.expect_request("/hook").respond_with_data("ok")
    receiver.start()
    name = f"exp_{uuid4().hex[:8]}"
    exp_id = mlflow.create_experiment(name)
    log_run(exp_id, 0.5, how="none")
    log_run(exp_id, 0.6, how="none")
    replicas = []
    for _ in range(2):
        proxy = counting_proxy(server.url)
        proxy.writes_open.clear()
        settings = make_settings(proxy.url, name, receiver.url_for("/hook"), f"wf-{exp_id}")
        tracking = MlflowTracking(proxy.url)
        delivery = build_handlers(settings, tracking)
        replicas.append((proxy, Watcher(settings, tracking, delivery.handlers), delivery.worker))

    results: list[PassResult] = []
    threads = [threading.Thread(target=lambda w=w: results.append(w.run_pass())) for _, w, _ in replicas]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while not all(p.held for p, _, _ in replicas) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(p.held for p, _, _ in replicas), "a replica never reached its first write"
    for proxy, _, _ in replicas:
        proxy.writes_open.set()
    for thread in threads:
        thread.join(timeout=120)
    assert [r.ok for r in results] == [True, True]
    # Both decided the change: each queued it, under the same tags.
    assert [r.handler_report.get("webhooks_queued") for r in results] == [1, 1]
    assert [r.handler_report.get("registry_queued") for r in results] == [1, 1]
    kept = {k: json.loads(v) for k, v in MlflowClient(server.url).get_experiment(exp_id).tags.items()}
    [summary] = [v for k, v in kept.items() if k.startswith(f"{TAG_PREFIX}webhook.")]
    [promotion] = [k for k in kept if k.startswith(f"{TAG_PREFIX}registry.")]
    assert promotion

    for _, _, worker in replicas:
        worker.drain()
    requests = requests_to(receiver, "/hook")
    assert len(requests) == 2  # one per replica: the outbox has no claim, receivers deduplicate
    assert {r.headers[DELIVERY_ID_HEADER] for r in requests} == {summary["entry_id"]}
    assert all(verify(SECRET, r.headers, r.get_data()) for r in requests)
    assert pending_summaries(server, exp_id) == []
    for _, watcher, worker in replicas:
        assert watcher.run_pass().ok
        worker.drain()
    assert len(requests_to(receiver, "/hook")) == 2
    assert pending_summaries(server, exp_id) == []
