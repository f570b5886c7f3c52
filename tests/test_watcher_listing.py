"""The listing kept between the daemon's passes: an idle pass reads no experiment's tags, yet a
new, renamed, deleted or restored experiment is seen at the next pass, the experiments with news
are decided from their tags as they are now, and tags other clients write to an idle experiment
are seen within ``experiment_list_seconds`` (real servers behind the counting proxy; the
watcher's clocks are passed in, never patched)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from uuid import uuid4

import pytest
from mlflow.tracking import MlflowClient
from structlog.testing import capture_logs

from tests.support.mlflow_server import ServerHandle
from tests.support.proxy import Proxy
from tests.support.watcher_runs import make_run, make_runs, podium_tags
from watcher.listing import MARGIN_SECONDS, KeptListing
from watcher.mlflow_io import MlflowTracking
from watcher.model import ExperimentRecord
from watcher.service import PassResult, Watcher
from watcher.settings import WatcherSettings
from watcher.state import STATE_TAG, ExperimentState

METRIC = "avg_test_r2"


def rule(pattern: str) -> dict[str, object]:
    return {"name": "r", "experiments": [pattern], "metric": METRIC, "top_n": 3, "trigger": "run_finished"}


class Clocks:
    """The watcher's clock (``now``) and its elapsed-time clock, moved by the test."""

    def __init__(self) -> None:
        self.now = time.time()
        self.elapsed = 0.0

    def settle(self) -> None:
        """Past the margin a server's late commits are given."""
        self.elapsed += MARGIN_SECONDS + 1


def watcher_at(
    url: str, pattern: str, clocks: Clocks, rule_settings: dict[str, object] | None = None, **settings: object
) -> Watcher:
    config = WatcherSettings(
        tracking_uri=url, rules=[rule(pattern) | (rule_settings or {})], http={"enabled": False}, **settings
    )
    watcher = Watcher(config, MlflowTracking(url), clock=lambda: clocks.now)
    watcher.monotonic = lambda: clocks.elapsed
    return watcher


def experiment_searches(proxy: Proxy) -> list[str]:
    """The filter of each experiment search the proxy passed, in order."""
    return [
        json.loads(body).get("filter", "") if body else ""
        for (_, path), body in zip(proxy.requests, proxy.bodies, strict=True)
        if path.endswith("/experiments/search")
    ]


def experiment_gets(proxy: Proxy) -> int:
    return sum(1 for _, path in proxy.requests if "/experiments/get" in path)


# -- the kept listing, pure ---------------------------------------------------------------------


def record(i: str, name: str, updated: int, deleted: bool = False, **tags: str) -> ExperimentRecord:
    return ExperimentRecord(i, name, tags, last_update_time=updated, deleted=deleted)


def test_the_search_for_changes_reaches_back_the_margin_until_one_started_past_it() -> None:
    """After a watermark is first seen, searches reach back ``margin`` before it (a commit may
    land after its timestamp); the first search that starts ``margin`` seconds later settles it,
    and those after ask only for what is newer. A newer change starts over."""
    listing = KeptListing(lambda name: name.startswith("w_"), margin_seconds=10)
    assert listing.full_due(0.0, 60)
    listing.listed(listing.start(), [record("1", "w_a", 5_000), record("2", "x_b", 7_000)], 0.0, 100.0)
    assert [r.experiment_id for r in listing.records()] == ["1"]
    assert (listing.full_due(59.0, 60), listing.full_due(60.0, 60), listing.full_due(1.0, 0)) == (
        False,
        True,
        True,
    )
    assert listing.since() == 7_000 - 10_000
    listing.changed(listing.start(), [], started=105.0, elapsed=105.1)
    assert listing.since() == 7_000 - 10_000
    listing.changed(listing.start(), [], started=110.0, elapsed=110.1)
    assert listing.since() == 7_001
    listing.changed(listing.start(), [record("3", "w_c", 9_000)], started=111.0, elapsed=111.1)
    assert listing.since() == 9_000 - 10_000
    listing.changed(
        listing.start(), [record("3", "w_c", 9_000), record("1", "w_a", 9_500, deleted=True)], 121.5, 122
    )
    assert [r.experiment_id for r in listing.records()] == ["3"]


def test_a_tag_written_while_a_listing_is_in_flight_is_kept_over_its_answer() -> None:
    """The delivery worker deletes an outbox tag while the pass lists: the answer (read
    before the delete) must not bring the tag back; a write before the read began is in it."""
    listing = KeptListing(lambda name: True)
    listing.listed(listing.start(), [record("1", "a", 1, s="old")], 0.0, 0.0)
    listing.tag_written("1", "s", "new")
    assert listing.records()[0].tags == {"s": "new"}
    mark = listing.start()
    listing.tag_written("1", "s", None)
    listing.tag_written("1", "t", "x")
    listing.listed(mark, [record("1", "a", 1, s="new", u="y")], 1.0, 1.0)
    assert listing.records()[0].tags == {"u": "y", "t": "x"}
    listing.tag_written("2", "s", "v")  # not watched: nothing kept
    assert len(listing.records()) == 1


# -- against real servers ----------------------------------------------------------------------


def idle_pass(url: str, proxy_for: Callable[[str], Proxy], n: int, **settings: object) -> tuple[int, int]:
    """Bytes and calls of a daemon's idle pass over ``n`` ranked experiments of one run."""
    client = MlflowClient(url)
    prefix = f"idle{n}_{uuid4().hex[:6]}"
    for i in range(n):
        make_runs(client, client.create_experiment(f"{prefix}_{i:02d}"), [0.5])
    proxy = proxy_for(url)
    clocks = Clocks()
    watcher = watcher_at(proxy.url, f"{prefix}_*", clocks, **settings)
    assert watcher.run_pass().ok
    clocks.settle()
    clocks.now += 1
    assert watcher.run_pass().ok
    proxy.reset()
    clocks.now += 1
    result = watcher.run_pass()
    assert [o.action for o in result.outcomes] == ["idle"] * n
    return proxy.tracking_bytes(), result.tracking_calls


@pytest.mark.server
def test_an_idle_daemon_pass_reads_the_same_bytes_over_30_experiments_as_over_3(
    sqlite_server: ServerHandle, counting_proxy: Callable[[str], Proxy]
) -> None:
    """Each experiment carries its ~1 kB podium.state: a pass that lists them all reads 30 of
    them at 30 experiments; the kept listing's idle pass reads none (two calls: the search for
    changed experiments, the ended-after search), with ``experiment_list_seconds: 0`` it lists
    them all again."""
    kept_3, calls_3 = idle_pass(sqlite_server.url, counting_proxy, 3)
    kept_30, calls_30 = idle_pass(sqlite_server.url, counting_proxy, 30)
    assert calls_3 == calls_30 == 2 <= 3
    assert kept_30 <= kept_3 + 200
    full_3, _ = idle_pass(sqlite_server.url, counting_proxy, 3, experiment_list_seconds=0)
    full_30, _ = idle_pass(sqlite_server.url, counting_proxy, 30, experiment_list_seconds=0)
    assert full_30 > full_3 + 27 * 500


@pytest.mark.server
def test_new_renamed_deleted_and_restored_experiments_are_seen_at_the_next_pass(
    mlflow_server: ServerHandle, counting_proxy: Callable[[str], Proxy]
) -> None:
    """With the watcher's clock standing still (no full listing due), each pass reads only
    the experiments changed since the last: one created with finished runs is ranked, one
    renamed out of the rule's pattern is no longer watched (and comes back renamed into it),
    one deleted is dropped without an error, and comes back when restored."""
    client = MlflowClient(mlflow_server.url)
    prefix = f"life_{uuid4().hex[:6]}"
    first = client.create_experiment(f"{prefix}_a")
    make_runs(client, first, [0.1, 0.2])
    proxy = counting_proxy(mlflow_server.url)
    clocks = Clocks()
    watcher = watcher_at(proxy.url, f"{prefix}_*", clocks)

    def watched_after(change: Callable[[], object]) -> dict[str, str]:
        change()
        clocks.settle()
        proxy.reset()
        result = watcher.run_pass()
        assert result.ok, result.error
        assert all(f.startswith("last_update_time >= ") for f in experiment_searches(proxy))
        return {o.experiment_id: o.action for o in result.outcomes}

    assert watcher.run_pass().ok
    second = client.create_experiment(f"{prefix}_b")
    assert watched_after(lambda: make_runs(client, second, [0.3, 0.4])) == {first: "idle", second: "full"}
    assert podium_tags(client, second)
    assert watched_after(lambda: client.rename_experiment(first, f"gone_{prefix}")) == {second: "idle"}
    assert watched_after(lambda: client.rename_experiment(first, f"{prefix}_c")) == {
        first: "idle",
        second: "idle",
    }
    assert watched_after(lambda: client.delete_experiment(second)) == {first: "idle"}
    assert watched_after(lambda: client.restore_experiment(second)) == {first: "idle", second: "idle"}
    # Settled: an idle pass asks only for what is newer than the last change.
    assert watched_after(lambda: None) == {first: "idle", second: "idle"}
    assert experiment_gets(proxy) == 0


@pytest.mark.server
def test_another_replicas_state_is_read_afresh_when_the_experiment_has_news(
    mlflow_server: ServerHandle, counting_proxy: Callable[[str], Proxy]
) -> None:
    """Replica P ranks; a new leader finishes and replica Q ranks it (its podium.state counts
    the announced change); another new leader finishes. P's kept listing still holds its own
    older state, so P reads the experiment afresh (one call) and announces the change that
    follows Q's, not a second copy of Q's number."""
    client = MlflowClient(mlflow_server.url)
    name = f"replica_{uuid4().hex[:6]}"
    exp_id = client.create_experiment(name)
    make_runs(client, exp_id, [0.1, 0.2, 0.3])
    proxy = counting_proxy(mlflow_server.url)
    clocks = Clocks()
    p = watcher_at(proxy.url, name, clocks)
    q = watcher_at(mlflow_server.url, name, Clocks())
    assert p.run_pass().ok
    assert q.run_pass().ok
    make_runs(client, exp_id, [0.8], prefix="q_leader")
    assert q.run_pass().outcomes[0].event is not None
    q_state = ExperimentState.from_tag(client.get_experiment(exp_id).tags[STATE_TAG])
    assert q_state is not None
    leader = make_runs(client, exp_id, [0.9], prefix="p_leader")[0].run_id

    clocks.now += 1
    proxy.reset()
    result = p.run_pass()
    (outcome,) = result.outcomes
    assert (outcome.action, outcome.reason) == ("rerank", "news")
    assert experiment_gets(proxy) == 1
    assert outcome.event is not None
    assert outcome.event.entered == (leader,)
    assert podium_tags(client, exp_id)[leader]["model_rank"] == "1"
    p_state = ExperimentState.from_tag(client.get_experiment(exp_id).tags[STATE_TAG])
    assert p_state is not None
    assert p_state.ranked_runs == 5


@pytest.mark.server
@pytest.mark.parametrize("alert", ["failed", "stalled"])
def test_a_run_another_replica_announced_is_not_announced_again(
    sqlite_server: ServerHandle, counting_proxy: Callable[[str], Proxy], alert: str
) -> None:
    """A run fails (or stalls) and replica Q announces it, recording it in podium.state; P's
    kept listing still holds the state from before. A run to announce makes P read the
    experiment afresh (one call) before it decides: P announces nothing, and the state it
    writes keeps Q's record."""
    client = MlflowClient(sqlite_server.url)
    name = f"announced_{alert}_{uuid4().hex[:6]}"
    exp_id = client.create_experiment(name)
    make_runs(client, exp_id, [0.1, 0.2])
    settings = {"alerts": [alert], "stalled_after_minutes": 1}
    proxy = counting_proxy(sqlite_server.url)
    p_clocks, q_clocks = Clocks(), Clocks()
    # No full listing (which would read Q's state anyway) while the clocks move a minute on.
    p = watcher_at(proxy.url, name, p_clocks, rule_settings=settings, experiment_list_seconds=3600)
    q = watcher_at(sqlite_server.url, name, q_clocks, rule_settings=settings)
    assert p.run_pass().ok
    p_clocks.settle()
    assert [o.action for o in p.run_pass().outcomes] == ["idle"]  # P decides from its kept listing

    if alert == "failed":
        run_id = make_run(client, exp_id, "failing", {METRIC: 0.5}, status="FAILED")
    else:
        run_id = make_run(client, exp_id, "silent", {METRIC: 0.5}, status="RUNNING")
        # A minute without activity: stalled. The run's last activity is the server's time at
        # its creation, not the clocks' start: the passes before it may take seconds under load.
        for clocks in (p_clocks, q_clocks):
            clocks.now = max(clocks.now, time.time()) + 61
    (announced,) = q.run_pass().outcomes
    assert [a.run_id for a in announced.alerts] == [run_id]
    recorded = ExperimentState.from_tag(client.get_experiment(exp_id).tags[STATE_TAG])
    assert recorded is not None

    p_clocks.now += 1
    proxy.reset()
    (outcome,) = p.run_pass().outcomes
    assert outcome.alerts == ()
    assert experiment_gets(proxy) == 1
    after = ExperimentState.from_tag(client.get_experiment(exp_id).tags[STATE_TAG])
    assert after is not None
    assert (after.seen, after.alerted) == (recorded.seen, recorded.alerted)


@pytest.mark.server
def test_a_state_deleted_by_hand_is_seen_at_once_with_news_else_within_experiment_list_seconds(
    sqlite_server: ServerHandle, counting_proxy: Callable[[str], Proxy]
) -> None:
    """Someone deletes podium.state from two ranked experiments. The one where a run then
    finishes is read afresh and ranked from scratch at the next pass; the idle one keeps its
    kept state until the full listing, ``experiment_list_seconds`` after the last, ranks it
    from scratch too."""
    client = MlflowClient(sqlite_server.url)
    prefix = f"handdel_{uuid4().hex[:6]}"
    busy, idle = (client.create_experiment(f"{prefix}_{c}") for c in "ab")
    for exp_id in (busy, idle):
        make_runs(client, exp_id, [0.1, 0.2, 0.3])
    proxy = counting_proxy(sqlite_server.url)
    clocks = Clocks()
    watcher = watcher_at(proxy.url, f"{prefix}_*", clocks, experiment_list_seconds=60)
    assert watcher.run_pass().ok
    clocks.settle()  # the experiments just created are no longer read as changes
    assert watcher.run_pass().ok
    for exp_id in (busy, idle):
        client.delete_experiment_tag(exp_id, STATE_TAG)
    make_runs(client, busy, [0.05], prefix="late")

    clocks.now += 30
    clocks.settle()
    result = watcher.run_pass()
    assert {o.experiment_id: (o.action, o.reason) for o in result.outcomes} == {
        busy: ("full", "first"),
        idle: ("idle", "watermark"),
    }
    assert STATE_TAG not in client.get_experiment(idle).tags

    clocks.now += 30
    clocks.settle()
    proxy.reset()
    result = watcher.run_pass()
    assert {o.experiment_id: (o.action, o.reason) for o in result.outcomes} == {
        busy: ("idle", "watermark"),
        idle: ("full", "first"),
    }
    assert experiment_searches(proxy) == [f"name LIKE '{prefix}_%'"]
    assert STATE_TAG in client.get_experiment(idle).tags


@pytest.mark.server
def test_tags_the_watcher_writes_are_kept_as_written_and_many_with_news_are_read_in_one_listing(
    sqlite_server: ServerHandle, counting_proxy: Callable[[str], Proxy]
) -> None:
    """After a re-rank read afresh, the next pass finds the state it wrote in the kept listing:
    nothing is read afresh. When more experiments have news than ``afresh_limit``, one full
    listing reads them all instead of one call each."""
    client = MlflowClient(sqlite_server.url)
    prefix = f"through_{uuid4().hex[:6]}"
    ids = [client.create_experiment(f"{prefix}_{i}") for i in range(3)]
    for exp_id in ids:
        make_runs(client, exp_id, [0.1, 0.2])
    proxy = counting_proxy(sqlite_server.url)
    clocks = Clocks()
    watcher = watcher_at(proxy.url, f"{prefix}_*", clocks)
    assert watcher.run_pass().ok
    clocks.settle()
    assert watcher.run_pass().ok

    def news(experiments: list[str]) -> list[str]:
        for exp_id in experiments:
            make_runs(client, exp_id, [0.9], prefix="news")
        clocks.now += 1
        proxy.reset()
        result = watcher.run_pass()
        assert result.ok, result.error
        return [o.action for o in result.outcomes]

    assert news(ids[:1]) == ["rerank", "idle", "idle"]
    assert experiment_gets(proxy) == 1
    assert [f.split(" >= ")[0] for f in experiment_searches(proxy)] == ["last_update_time"]
    assert news([]) == ["idle"] * 3
    assert experiment_gets(proxy) == 0

    watcher.afresh_limit = 2
    assert news(ids) == ["rerank"] * 3
    assert experiment_gets(proxy) == 0
    assert experiment_searches(proxy)[1:] == [f"name LIKE '{prefix}_%'"]
    assert news([]) == ["idle"] * 3
    for exp_id in ids:
        assert len(podium_tags(client, exp_id)) == 3


@pytest.mark.server
def test_an_experiment_deleted_between_the_listing_and_its_writes_is_left_and_the_pass_goes_on(
    mlflow_server: ServerHandle, counting_proxy: Callable[[str], Proxy]
) -> None:
    """Both experiments get a new leader; the first is deleted while the pass waits to write.
    The pass skips it with one ``experiment_gone`` line (no leaderboard event for it) and
    writes the other: it does not fail."""
    client = MlflowClient(mlflow_server.url)
    prefix = f"gone_{uuid4().hex[:6]}"
    first, second = (client.create_experiment(f"{prefix}_{c}") for c in "ab")
    for exp_id in (first, second):
        make_runs(client, exp_id, [0.1, 0.2])
    proxy = counting_proxy(mlflow_server.url)
    clocks = Clocks()
    watcher = watcher_at(proxy.url, f"{prefix}_*", clocks, write_concurrency=1)
    assert watcher.run_pass().ok
    leaders = {
        exp_id: make_runs(client, exp_id, [0.9], prefix="news")[0].run_id for exp_id in (first, second)
    }

    proxy.writes_open.clear()
    answer: list[PassResult] = []
    passing = threading.Thread(target=lambda: answer.append(watcher.run_pass()))
    with capture_logs() as logs:
        passing.start()
        deadline = time.monotonic() + 30
        while not proxy.held and time.monotonic() < deadline:
            time.sleep(0.02)
        client.delete_experiment(first)
        proxy.writes_open.set()
        passing.join(60)
    (result,) = answer
    assert result.ok, result.error
    assert [(o.experiment_id, o.event is not None) for o in result.outcomes] == [(second, True)]
    assert [e["experiment_id"] for e in logs if e["event"] == "experiment_gone"] == [first]
    assert not [e for e in logs if e["event"] in ("run_gone_before_tagging", "pass_failed")]
    assert podium_tags(client, second)[leaders[second]]["model_rank"] == "1"
    clocks.now += 1
    assert [o.experiment_id for o in watcher.run_pass().outcomes] == [second]


@pytest.mark.server
def test_a_pass_that_listed_every_experiment_for_one_rule_reads_none_again_for_the_next(
    sqlite_server: ServerHandle, counting_proxy: Callable[[str], Proxy]
) -> None:
    """The first rule's batch has more experiments with news than ``afresh_limit``: one full
    listing reads them all. The second rule's experiment with news was in that listing too: it
    is not read again one by one."""
    client = MlflowClient(sqlite_server.url)
    prefix = f"tworules_{uuid4().hex[:6]}"
    ids = {c: client.create_experiment(f"{prefix}_{c}") for c in ("a1", "a2", "b1")}
    for exp_id in ids.values():
        make_runs(client, exp_id, [0.1, 0.2])
    proxy = counting_proxy(sqlite_server.url)
    clocks = Clocks()
    config = WatcherSettings(
        tracking_uri=proxy.url,
        rules=[{**rule(f"{prefix}_a*"), "name": "a"}, {**rule(f"{prefix}_b*"), "name": "b"}],
        http={"enabled": False},
    )
    watcher = Watcher(config, MlflowTracking(proxy.url), clock=lambda: clocks.now)
    watcher.monotonic = lambda: clocks.elapsed
    watcher.afresh_limit = 1
    assert watcher.run_pass().ok
    clocks.settle()
    for exp_id in ids.values():
        make_runs(client, exp_id, [0.9], prefix="news")
    clocks.now += 1
    proxy.reset()
    result = watcher.run_pass()
    assert result.ok, result.error
    assert [o.action for o in result.outcomes] == ["rerank"] * 3
    assert experiment_searches(proxy)[1:] == [f"name LIKE '{prefix}_a%'", f"name LIKE '{prefix}_b%'"]
    assert experiment_gets(proxy) == 0


@pytest.mark.server
def test_an_experiment_deleted_and_collected_between_passes_is_gone_after_one_pass(
    mlflow_server: ServerHandle, counting_proxy: Callable[[str], Proxy]
) -> None:
    """Deleted and hard-deleted (``mlflow gc``) between two passes, an experiment leaves no row
    for the search for changes to find. The next pass's holder check finds its holders gone and
    the write finds the experiment gone (one ``experiment_gone`` line); it leaves the kept
    listing then, so the passes after write nothing for it, well before the full listing."""
    client = MlflowClient(mlflow_server.url)
    prefix = f"gc_{uuid4().hex[:6]}"
    doomed, kept = (client.create_experiment(f"{prefix}_{c}") for c in "ab")
    for exp_id in (doomed, kept):
        make_runs(client, exp_id, [0.1, 0.2])
    proxy = counting_proxy(mlflow_server.url)
    clocks = Clocks()
    watcher = watcher_at(proxy.url, f"{prefix}_*", clocks, holder_check_seconds=0)
    assert watcher.run_pass().ok
    clocks.settle()
    assert watcher.run_pass().ok
    client.delete_experiment(doomed)
    collect = [sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", mlflow_server.backend_uri]
    collect += ["--tracking-uri", mlflow_server.url, "--experiment-ids", doomed]
    subprocess.run(collect, check=True, capture_output=True, timeout=120)

    def gone_lines() -> list[str]:
        clocks.now += 1
        clocks.settle()
        with capture_logs() as logs:
            result = watcher.run_pass()
        assert result.ok, result.error
        assert [o.experiment_id for o in result.outcomes] == [kept]
        return [e["experiment_id"] for e in logs if e["event"] == "experiment_gone"]

    assert gone_lines() == [doomed]
    proxy.reset()
    assert gone_lines() == []
    assert not [p for _, p in proxy.tracking_calls() if p.endswith(("delete-tag", "set-experiment-tag"))]
    assert [r.experiment_id for r in watcher.memory.listing.records()] == [kept]
