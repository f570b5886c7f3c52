"""A pass reports what reached MLflow, not what it planned (real server behind a real proxy)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from uuid import uuid4

import pytest
from mlflow.tracking import MlflowClient
from structlog.testing import capture_logs

from tests.support.mlflow_server import ServerHandle
from tests.support.proxy import Proxy
from tests.support.watcher_runs import make_runs, podium_tags
from watcher.mlflow_io import MlflowTracking
from watcher.model import Handler, LeaderboardChanged, Rule, WatchedExperiment
from watcher.service import Watcher
from watcher.settings import WatcherSettings

pytestmark = pytest.mark.server


class ServerDiesAfterFirstBoard(Handler):
    """A handler that takes the tracking server down (the proxy answers 503) once the first
    experiment's tags are written: the pass goes on to write the second and fails there."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.events: list[str] = []

    def on_leaderboard_changed(self, event: LeaderboardChanged, rule: Rule) -> None:
        self.events.append(event.board.experiment_id)
        self.proxy.down = True

    def on_pass_end(self, experiments: Sequence[WatchedExperiment]) -> None:
        pass


def tag_count(client: MlflowClient, experiment_id: str) -> int:
    return sum(len(tags) for tags in podium_tags(client, experiment_id).values())


def test_a_pass_that_fails_mid_apply_reports_the_writes_mlflow_holds(
    sqlite_server: ServerHandle, counting_proxy: Callable[[str], Proxy]
) -> None:
    client = MlflowClient(sqlite_server.url)
    prefix = f"counts_{uuid4().hex[:6]}"
    first = client.create_experiment(f"{prefix}_a")
    second = client.create_experiment(f"{prefix}_b")
    make_runs(client, first, [0.1, 0.2, 0.3, 0.4])
    make_runs(client, second, [0.5, 0.6, 0.7])
    proxy = counting_proxy(sqlite_server.url)
    settings = WatcherSettings(
        tracking_uri=proxy.url,
        rules=[{"name": "r", "experiments": [f"{prefix}_*"], "metric": "avg_test_r2", "top_n": 3}],
        http={"enabled": False},
        write_concurrency=1,  # the second experiment's writes start after the first's handlers
    )
    dies = ServerDiesAfterFirstBoard(proxy)
    watcher = Watcher(settings, MlflowTracking(proxy.url), [dies])

    with capture_logs() as logs:
        result = watcher.run_pass()

    assert not result.ok
    assert dies.events == [first]  # the second experiment's writes never got through
    held = {first: tag_count(client, first), second: tag_count(client, second)}
    assert held[first] > 0
    assert held[second] == 0
    assert result.tag_writes == held[first]
    assert result.experiments_changed == 1
    assert [o.experiment_id for o in result.outcomes] == [first]
    assert watcher.last_result == result
    [finished] = [e for e in logs if e["event"] == "pass_finished"]
    assert (finished["ok"], finished["tag_writes"], finished["experiments_changed"]) == (
        False,
        held[first],
        1,
    )

    proxy.down = False  # back up: the next pass writes the rest, and says so
    again = watcher.run_pass()
    assert again.ok
    assert again.tag_writes == tag_count(client, second) > 0
    assert tag_count(client, first) == held[first]
    assert again.experiments_changed == 1
