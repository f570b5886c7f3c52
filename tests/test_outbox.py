"""The outbox's own edges against a real server: superseded promotions, unreadable tags,
done entries whose tag could not be deleted, payloads too large for a tag."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from uuid import uuid4

import pytest
from mlflow import MlflowClient
from structlog.testing import capture_logs

from tests.support.mlflow_server import ServerHandle, free_port
from tests.support.proxy import Proxy
from watcher.mlflow_io import MlflowRegistry, MlflowTracking
from watcher.model import WatchedExperiment
from watcher.outbox import MAX_TAG_VALUE, TAG_PREFIX, Entry, Outbox, Promotion, WebhookDelivery
from watcher.registry import RegistryPromoter

pytestmark = pytest.mark.server


class Store:
    def __init__(self, server: ServerHandle) -> None:
        self.tracking = MlflowTracking(server.url)
        self.registry = MlflowRegistry(self.tracking)
        self.client = MlflowClient(server.url)
        self.name = f"outbox_{uuid4().hex[:8]}"
        self.experiment_id = self.client.create_experiment(self.name)

    def tags(self) -> dict[str, str]:
        tags = self.client.get_experiment(self.experiment_id).tags
        return {k: v for k, v in tags.items() if k.startswith(TAG_PREFIX)}

    def listing(self) -> list[WatchedExperiment]:
        record = self.tracking.get_experiment_by_name(self.name)
        assert record is not None
        return [WatchedExperiment(record.experiment_id, record.name, record.tags)]

    def entry(self, kind: str, entry_id: str, created_at: float, **data: object) -> Entry:
        work = (
            Promotion(run_id=str(data["run_id"]), model_name="m", alias="champion")
            if kind == "registry"
            else WebhookDelivery(dict(data["payload"]))  # type: ignore[call-overload]
        )
        return Entry(self.experiment_id, entry_id, "team", work, created_at)


@pytest.fixture
def store(sqlite_server: ServerHandle) -> Store:
    return Store(sqlite_server)


def test_a_newer_promotion_supersedes_the_older_of_its_experiment(store: Store) -> None:
    outbox = Outbox(store.registry)
    RegistryPromoter(outbox)  # gives the outbox the registry's supersession policy
    outbox.keep(store.entry("registry", "old", 1.0, run_id="a"))
    outbox.keep(store.entry("registry", "new", 2.0, run_id="b"))
    outbox.keep(store.entry("webhook", "d1", 1.5, payload={}))
    assert len(store.tags()) == 3
    taken = outbox.take_due()
    assert [e.entry_id for e in taken] == ["d1", "new"]  # oldest first, the old promotion dropped
    assert sorted(store.tags()) == sorted(e.tag_key() for e in taken)
    for entry in taken:
        outbox.done(entry)
    assert store.tags() == {}
    assert outbox.pending() == 0


def test_an_unreadable_outbox_tag_is_dropped_with_a_warning(store: Store) -> None:
    store.client.set_experiment_tag(store.experiment_id, f"{TAG_PREFIX}webhook.team.x", "{not json")
    outbox = Outbox(store.registry)
    with capture_logs() as logs:
        assert outbox.adopt(store.listing()) == 0
    assert "outbox_entry_unreadable" in [e["event"] for e in logs]
    assert store.tags() == {}


def test_a_done_entry_whose_tag_could_not_be_deleted_is_never_done_again(store: Store) -> None:
    dead = MlflowRegistry(MlflowTracking(f"http://127.0.0.1:{free_port()}"))
    outbox = Outbox(store.registry, worker_store=dead)
    outbox.keep(store.entry("webhook", "d1", 1.0, payload={}))
    [entry] = outbox.take_due()
    with capture_logs() as logs:
        outbox.done(entry)  # delivered, but the tracking server is unreachable from the worker
    assert "outbox_delete_failed" in [e["event"] for e in logs]
    assert list(store.tags()) == [entry.tag_key()]
    # The next listing still shows the tag: not due again, and its tag is deleted now.
    assert outbox.adopt(store.listing()) == 0
    assert outbox.take_due() == []
    assert store.tags() == {}
    assert outbox.adopt(store.listing()) == 0


def test_an_entry_done_here_is_not_taken_up_again_when_another_replica_writes_its_tag(
    store: Store,
) -> None:
    """Two replicas decide one change: one sends it and deletes its tag, and its next listing
    no longer shows it; then the other writes the same tag (its pass read MLflow a moment
    earlier). The first must not send it a second time: it deletes the tag instead."""
    first, second = Outbox(store.registry), Outbox(store.registry)
    entry = store.entry("webhook", "d1", 1.0, payload={"event": "leaderboard.changed"})
    first.keep(entry)
    [taken] = first.take_due()
    first.done(taken)  # delivered
    assert store.tags() == {}
    assert first.adopt(store.listing()) == 0
    second.keep(entry)
    assert list(store.tags()) == [entry.tag_key()]
    assert first.adopt(store.listing()) == 0
    assert first.take_due() == []
    assert store.tags() == {}
    assert first.keep(entry) is None


def test_two_replicas_keeping_one_entry_at_the_same_instant_both_keep_it_in_mlflow(
    mlflow_server: ServerHandle, counting_proxy: Callable[[str], Proxy]
) -> None:
    """Replicas decide a change at the same moment and write its one outbox tag at once. The
    server creates an experiment tag by a read, then an insert, so one of two writes creating
    it failed on the unique key (the entry then lived in that process's memory only, and a
    pass writing podium.state failed). Both must succeed, each time."""
    store = Store(mlflow_server)
    proxy = counting_proxy(mlflow_server.url)
    replicas = [Outbox(MlflowRegistry(MlflowTracking(proxy.url))) for _ in range(2)]
    for attempt in range(10):
        entry = store.entry("webhook", f"d{attempt}", 1.0, payload={"event": "leaderboard.changed"})
        kept: list[Entry | None] = []
        proxy.writes_open.clear()  # both writes reach the server together
        proxy.held = 0
        threads = [
            threading.Thread(target=lambda o=o, e=entry, k=kept: k.append(o.keep(e))) for o in replicas
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while proxy.held < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        proxy.writes_open.set()
        for thread in threads:
            thread.join(timeout=60)
        assert [k.tag if k is not None else None for k in kept] == [entry.tag_key()] * 2
    assert len(store.tags()) == 10


def test_a_tag_rewritten_while_another_replica_deletes_it_is_written(
    postgres_server: ServerHandle, counting_proxy: Callable[[str], Proxy]
) -> None:
    """A replica delivered an entry and deletes its tag while the other writes that tag again
    (it decided the same change). The server updates a tag by a read, then an update: the
    update of a row deleted since matched none and the write failed (the entry then lived in
    memory only; a podium.state write deleted by hand failed the pass). It must succeed."""
    store = Store(postgres_server)
    proxy = counting_proxy(postgres_server.url)
    writer = MlflowTracking(proxy.url)
    deleter = MlflowClient(proxy.url)
    key = f"{TAG_PREFIX}webhook.team.raced"
    failed: list[Exception] = []

    def write() -> None:
        try:
            writer.set_experiment_tag(store.experiment_id, key, "again")
        except Exception as e:
            failed.append(e)

    attempts = 0
    deadline = time.monotonic() + 30
    while writer.calls_by_method["set_experiment_tag"] == attempts and time.monotonic() < deadline:
        store.client.set_experiment_tag(store.experiment_id, key, "queued")
        proxy.writes_open.clear()  # the write and the delete reach the server together
        proxy.held = 0
        threads = [
            threading.Thread(target=write),
            threading.Thread(target=deleter.delete_experiment_tag, args=(store.experiment_id, key)),
        ]
        for thread in threads:
            thread.start()
        while proxy.held < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        proxy.writes_open.set()
        for thread in threads:
            thread.join(timeout=60)
        assert failed == []
        attempts += 1
    # The race was met (a second try), and the write won over the delete then.
    assert writer.calls_by_method["set_experiment_tag"] == attempts + 1
    assert store.tags().get(key) in (None, "again")


def test_a_payload_too_large_for_a_tag_is_kept_in_memory(store: Store) -> None:
    outbox = Outbox(store.registry)
    with capture_logs() as logs:
        kept = outbox.keep(store.entry("webhook", "big", 1.0, payload={"x": "y" * MAX_TAG_VALUE}))
    assert kept.tag is None
    assert "outbox_entry_in_memory" in [e["event"] for e in logs]
    assert store.tags() == {}
    assert [e.entry_id for e in outbox.take_due()] == ["big"]
