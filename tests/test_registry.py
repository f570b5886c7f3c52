"""Registry promotion against a real `mlflow server`: the alias follows the leader."""

from __future__ import annotations

import json
from collections.abc import Iterator
from uuid import uuid4

import mlflow
import pytest
from mlflow import MlflowClient
from structlog.testing import capture_logs

from tests.support.mlflow_server import ServerHandle
from tests.support.proxy import Proxy
from tests.support.registry_runs import log_run, predict
from watcher.cli import build_handlers
from watcher.delivery import DeliveryWorker
from watcher.mlflow_io import MlflowRegistry, MlflowTracking
from watcher.model import Handler, Leaderboard, LeaderboardChanged, RankedRun, WatchedExperiment
from watcher.outbox import LEGACY_REGISTRY_TAG, TAG_PREFIX, Outbox
from watcher.registry import TARGET_TAG, RegistryPromoter
from watcher.service import Watcher
from watcher.settings import RegistryConfig, RuleConfig, WatcherSettings

pytestmark = pytest.mark.server


def use(server: ServerHandle) -> str:
    """Point the fluent API (which logs the trainer-like runs) at a server; conftest restores it."""
    mlflow.set_tracking_uri(server.url)
    return server.url


def make_rule(model_name: str, alias: str = "champion") -> RuleConfig:
    return RuleConfig(
        name="wf-xgboost",
        experiments=["exp_*"],
        metric="avg_test_r2",
        registry=RegistryConfig(model_name=model_name, alias=alias),
    )


class Promotions(Handler):
    """The promoter, its outbox and the delivery worker as the CLI wires them; the worker's
    round is run by hand right after each hook, as `--once` does after its pass."""

    def __init__(self, store: MlflowRegistry) -> None:
        self.outbox = Outbox(store)
        self.promoter = RegistryPromoter(self.outbox)
        self.worker = DeliveryWorker(self.outbox, targets={}, registry=store)

    def on_leaderboard_changed(self, event: LeaderboardChanged, rule: RuleConfig) -> dict[str, int]:
        self.promoter.on_leaderboard_changed(event, rule)
        return self.worker.drain()

    def on_pass_end(self, experiments: list[WatchedExperiment]) -> dict[str, int]:
        self.promoter.on_pass_end(experiments)
        self.worker.on_pass_end(experiments)
        return self.worker.drain()


REGISTRY_CALLS = {
    "get_model_version_by_alias",
    "search_model_versions",
    "create_registered_model",
    "create_model_version",
    "set_model_version_tag",
    "delete_model_version_tag",
    "set_registered_model_alias",
    "get_run",
}


def registry_calls(tracking: MlflowTracking) -> dict[str, int]:
    return {k: v for k, v in tracking.calls_by_method.items() if k in REGISTRY_CALLS}


def changed(
    experiment_id: str, name: str, ranked: list[tuple[str, float]], *, new_leader: bool, sequence: int = 1
) -> LeaderboardChanged:
    """The experiment's change number ``sequence``: a promotion's entry id is derived from it."""
    entries = tuple(
        RankedRun(rank=i + 1, run_id=run_id, run_name=run_id[:8], value=value)
        for i, (run_id, value) in enumerate(ranked)
    )
    board = Leaderboard(
        experiment_id=experiment_id,
        experiment_name=name,
        rule="wf-xgboost",
        metric="avg_test_r2",
        ascending=False,
        top_n=10,
        production_candidates=3,
        entries=entries,
        ranked_runs=len(entries),
        unranked_runs=0,
    )
    return LeaderboardChanged(board=board, new_leader=new_leader, entered=(), left=(), sequence=sequence)


def new_experiment() -> tuple[str, str]:
    name = f"exp_{uuid4().hex[:8]}"
    return mlflow.create_experiment(name), name


def test_alias_follows_a_better_run_and_loads_and_predicts(mlflow_server: ServerHandle) -> None:
    tracking_uri = use(mlflow_server)
    exp_id, exp_name = new_experiment()
    model_name = f"wf-{uuid4().hex[:8]}"
    tracking = MlflowTracking(tracking_uri)
    promoter = Promotions(MlflowRegistry(tracking))
    client = MlflowClient(tracking_uri)
    rule = make_rule(model_name)

    first = log_run(exp_id, 0.5)
    promoter.on_leaderboard_changed(changed(exp_id, exp_name, [(first, 0.5)], new_leader=True), rule)
    v1 = client.get_model_version_by_alias(model_name, "champion")
    assert (v1.version, v1.run_id) == ("1", first)
    assert v1.tags == {"model_rank": "1", "source_run_id": first}

    better = log_run(exp_id, 0.9)
    with capture_logs() as logs:
        promoter.on_leaderboard_changed(
            changed(exp_id, exp_name, [(better, 0.9), (first, 0.5)], new_leader=True, sequence=2), rule
        )
    assert [e["event"] for e in logs if e["log_level"] in ("warning", "error")] == []
    v2 = client.get_model_version_by_alias(model_name, "champion")
    assert (v2.version, v2.run_id) == ("2", better)
    assert v2.tags == {"model_rank": "1", "source_run_id": better}
    logged = {r: client.get_run(r).outputs.model_outputs[0].model_id for r in (first, better)}
    assert v2.source == f"models:/{logged[better]}"  # registered from the run's MLflow 3 LoggedModel
    # The earlier leader's version stays, re-tagged with its current rank; only the alias moved.
    assert client.get_model_version(model_name, "1").tags["model_rank"] == "2"
    champion = predict(f"models:/{model_name}@champion")
    assert champion == pytest.approx(predict(f"models:/{logged[better]}"))
    assert champion != pytest.approx(predict(f"models:/{logged[first]}"))

    # A re-rank that keeps the leader costs one registry read and changes nothing (and the
    # outbox entry's tag: written in the pass, deleted once done).
    tracking.calls_by_method.clear()
    report = promoter.on_leaderboard_changed(
        changed(exp_id, exp_name, [(better, 0.9), (first, 0.5)], new_leader=False, sequence=3), rule
    )
    assert report == {"registry_current": 1}
    assert registry_calls(tracking) == {"get_model_version_by_alias": 1}
    assert not [k for k in client.get_experiment(exp_id).tags if k.startswith(TAG_PREFIX)]
    assert len(client.search_model_versions(f"name = '{model_name}'")) == 2


def test_returning_leader_reuses_its_version(sqlite_server: ServerHandle) -> None:
    tracking_uri = use(sqlite_server)
    exp_id, exp_name = new_experiment()
    model_name = f"wf-{uuid4().hex[:8]}"
    promoter = Promotions(MlflowRegistry(MlflowTracking(tracking_uri)))
    client = MlflowClient(tracking_uri)
    rule = make_rule(model_name)
    a, b = log_run(exp_id, 0.5), log_run(exp_id, 0.6)
    promoter.on_leaderboard_changed(changed(exp_id, exp_name, [(a, 0.5)], new_leader=True), rule)
    promoter.on_leaderboard_changed(
        changed(exp_id, exp_name, [(b, 0.6), (a, 0.5)], new_leader=True, sequence=2), rule
    )
    # b's run is deleted from the board (e.g. its metric was corrected): a leads again.
    promoter.on_leaderboard_changed(changed(exp_id, exp_name, [(a, 0.5)], new_leader=True, sequence=3), rule)
    assert client.get_model_version_by_alias(model_name, "champion").version == "1"
    assert "model_rank" not in client.get_model_version(model_name, "2").tags
    assert len(client.search_model_versions(f"name = '{model_name}'")) == 2


def test_leader_without_a_model_is_skipped_with_a_warning(sqlite_server: ServerHandle) -> None:
    tracking_uri = use(sqlite_server)
    exp_id, exp_name = new_experiment()
    model_name = f"wf-{uuid4().hex[:8]}"
    promoter = Promotions(MlflowRegistry(MlflowTracking(tracking_uri)))
    run_id = log_run(exp_id, 0.7, how="none")
    with capture_logs() as logs:
        promoter.on_leaderboard_changed(
            changed(exp_id, exp_name, [(run_id, 0.7)], new_leader=True), make_rule(model_name)
        )
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["registry_leader_without_model"]
    assert MlflowClient(tracking_uri).search_model_versions(f"name = '{model_name}'") == []


def test_model_logged_as_plain_run_artifacts_is_registered_from_the_run(sqlite_server: ServerHandle) -> None:
    """Runs logged by pre-3.0 clients have no LoggedModel, only `model/MLmodel` artifacts."""
    tracking_uri = use(sqlite_server)
    exp_id, exp_name = new_experiment()
    model_name = f"wf-{uuid4().hex[:8]}"
    promoter = Promotions(MlflowRegistry(MlflowTracking(tracking_uri)))
    run_id = log_run(exp_id, 0.7, scale=3.0, how="artifacts")
    assert MlflowClient(tracking_uri).get_run(run_id).outputs.model_outputs == []
    promoter.on_leaderboard_changed(
        changed(exp_id, exp_name, [(run_id, 0.7)], new_leader=True), make_rule(model_name)
    )
    version = MlflowClient(tracking_uri).get_model_version_by_alias(model_name, "champion")
    assert version.run_id == run_id
    assert predict(f"models:/{model_name}@champion") == pytest.approx(predict(f"runs:/{run_id}/model"))


@pytest.fixture
def outage(sqlite_server: ServerHandle) -> Iterator[Proxy]:
    """The session's server behind a proxy of this test's own, which goes down (refuses and cuts
    connections) and comes back on the same port as a stopped and restarted server would."""
    proxy = Proxy(sqlite_server.url)
    mlflow.set_tracking_uri(proxy.url)
    yield proxy
    proxy.close()


def watched(tracking: MlflowTracking, name: str) -> list[WatchedExperiment]:
    record = tracking.get_experiment_by_name(name)
    assert record is not None
    return [WatchedExperiment(record.experiment_id, record.name, record.tags)]


def test_promotion_that_failed_is_retried_on_the_next_pass(outage: Proxy) -> None:
    exp_id, exp_name = new_experiment()
    model_name = f"wf-{uuid4().hex[:8]}"
    client = MlflowClient(outage.url)
    tracking = MlflowTracking(outage.url)
    promoter = Promotions(MlflowRegistry(tracking))
    run_id = log_run(exp_id, 0.8)
    client.set_tag(run_id, "model_rank", "1")  # what the watcher's tagger wrote before handlers run

    outage.stop_listening()
    with capture_logs() as logs:
        promoter.on_leaderboard_changed(
            changed(exp_id, exp_name, [(run_id, 0.8)], new_leader=True), make_rule(model_name)
        )
    events = [e["event"] for e in logs]
    assert "registry_promotion_failed" in events  # logged, never raised
    assert "outbox_store_failed" in events  # the server is down: kept in memory
    promoter.on_pass_end([WatchedExperiment(exp_id, exp_name)])  # the failed pass ends

    outage.listen_again()
    assert promoter.on_pass_end(watched(tracking, exp_name)) == {"registry_promoted": 1}
    assert client.get_model_version_by_alias(model_name, "champion").run_id == run_id
    assert not [k for k in client.get_experiment(exp_id).tags if k.startswith(TAG_PREFIX)]


def legacy_pending(run_id: str, model_name: str) -> str:
    """The value of `podium.registry_pending` as earlier versions wrote it."""
    return json.dumps({"run_id": run_id, "model_name": model_name, "alias": "champion"})


def test_pending_promotion_in_an_experiment_tag_is_done_after_a_restart(sqlite_server: ServerHandle) -> None:
    """A new watcher process finds the pending promotion an earlier version kept in MLflow
    and completes it once."""
    tracking_uri = use(sqlite_server)
    exp_id, exp_name = new_experiment()
    model_name = f"wf-{uuid4().hex[:8]}"
    client = MlflowClient(tracking_uri)
    tracking = MlflowTracking(tracking_uri)
    store = MlflowRegistry(tracking)
    leader, obsolete_exp = log_run(exp_id, 0.8), new_experiment()
    client.set_tag(leader, "model_rank", "1")
    store.set_experiment_tag(exp_id, LEGACY_REGISTRY_TAG, legacy_pending(leader, model_name))
    # A pending promotion whose run lost the lead meanwhile is dropped, not done.
    old = log_run(obsolete_exp[0], 0.1)
    client.set_tag(old, "model_rank", "2")
    store.set_experiment_tag(obsolete_exp[0], LEGACY_REGISTRY_TAG, legacy_pending(old, model_name))

    report = Promotions(store).on_pass_end(watched(tracking, exp_name) + watched(tracking, obsolete_exp[1]))
    assert report == {"registry_promoted": 1, "registry_obsolete": 1}
    assert client.get_model_version_by_alias(model_name, "champion").run_id == leader
    assert len(client.search_model_versions(f"name = '{model_name}'")) == 1
    assert LEGACY_REGISTRY_TAG not in client.get_experiment(exp_id).tags
    assert LEGACY_REGISTRY_TAG not in client.get_experiment(obsolete_exp[0]).tags

    tracking.calls_by_method.clear()
    Promotions(store).on_pass_end(watched(tracking, exp_name))
    assert dict(tracking.calls_by_method) == {"get_experiment_by_name": 1}  # nothing left to do


def test_a_rule_that_gains_a_registry_promotes_the_current_leader_once(sqlite_server: ServerHandle) -> None:
    """Adding `registry:` to a rule whose experiment is already ranked changes no leaderboard;
    the next pass still points the alias at the kept leader, and later idle passes cost no call."""
    tracking_uri = use(sqlite_server)
    exp_id, exp_name = new_experiment()
    model_name = f"wf-{uuid4().hex[:8]}"
    leader = log_run(exp_id, 0.9)
    log_run(exp_id, 0.5)
    plain = {"name": "wf-xgboost", "experiments": [exp_name], "metric": "avg_test_r2"}
    tracking = MlflowTracking(tracking_uri)

    def watcher_with(rule: dict[str, object]) -> tuple[Watcher, DeliveryWorker]:
        settings = WatcherSettings(rules=[rule], http={"enabled": False})
        delivery = build_handlers(settings, tracking)
        return Watcher(settings, tracking, delivery.handlers), delivery.worker

    watcher, worker = watcher_with(plain)
    assert watcher.run_pass().ok  # ranked before the rule had a registry
    assert worker.drain() == {}
    client = MlflowClient(tracking_uri)
    assert client.search_model_versions(f"name = '{model_name}'") == []

    watcher, worker = watcher_with({**plain, "registry": {"model_name": model_name, "alias": "champion"}})
    result = watcher.run_pass()
    assert result.ok
    assert [o.action for o in result.outcomes] == ["idle"]  # no leaderboard change
    assert result.handler_report == {"registry_queued": 1, "outbox_pending": 1}
    assert worker.drain() == {"registry_promoted": 1}
    version = client.get_model_version_by_alias(model_name, "champion")
    assert (version.run_id, version.tags["model_rank"]) == (leader, "1")
    assert client.get_experiment(exp_id).tags[TARGET_TAG] == f"{model_name}@champion"

    tracking.calls_by_method.clear()
    idle = watcher.run_pass()
    assert idle.handler_report == {}
    assert worker.drain() == {}
    assert set(tracking.calls_by_method) == {"search_experiments", "search_runs"}
    assert len(client.search_model_versions(f"name = '{model_name}'")) == 1
