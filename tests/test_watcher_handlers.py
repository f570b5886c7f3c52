"""How a pass calls its handlers: optional hooks, and every hook's failure contained."""

from __future__ import annotations

from collections.abc import Sequence

from mlflow.tracking import MlflowClient
from structlog.testing import capture_logs

from tests.support.watcher_runs import expected_order, make_runs, new_experiment, podium_tags
from watcher.mlflow_io import MlflowTracking
from watcher.model import Handler, LeaderboardChanged, WatchedExperiment
from watcher.service import Watcher
from watcher.settings import RuleConfig, WatcherSettings


class Failing(Handler):
    """A handler with the optional hooks too, each of which raises."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_pass_start(self) -> None:
        self.calls.append("on_pass_start")
        raise RuntimeError("start bug")

    def on_leaderboard_changed(self, event: LeaderboardChanged, rule: RuleConfig) -> None:
        self.calls.append("on_leaderboard_changed")
        raise RuntimeError("change bug")

    def on_pass_end(self, experiments: Sequence[WatchedExperiment]) -> None:
        self.calls.append("on_pass_end")
        raise RuntimeError("end bug")

    def pass_report(self) -> dict[str, int]:
        self.calls.append("pass_report")
        raise RuntimeError("report bug")


class Reporting(Handler):
    """Only the required hooks plus pass_report; on_pass_start is optional and absent."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_leaderboard_changed(self, event: LeaderboardChanged, rule: RuleConfig) -> None:
        self.calls.append("on_leaderboard_changed")

    def on_pass_end(self, experiments: Sequence[WatchedExperiment]) -> None:
        self.calls.append("on_pass_end")

    def pass_report(self) -> dict[str, int]:
        return {"things_done": 2}


def test_every_hook_is_called_in_order_and_each_failure_is_logged_not_raised(sqlite_uri: str) -> None:
    """A handler raising in any hook (pass_report included) leaves the pass ok and the tags
    written; the next handler still runs, a handler without on_pass_start is fine, and
    pass_report's counts reach the pass summary."""
    client = MlflowClient(sqlite_uri)
    exp_id, name = new_experiment(client)
    made = make_runs(client, exp_id, [0.2, 0.4])
    failing, reporting = Failing(), Reporting()
    settings = WatcherSettings(
        rules=[{"name": "r", "experiments": [name], "metric": "avg_test_r2", "trigger": "run_finished"}],
        http={"enabled": False},
    )
    watcher = Watcher(settings, MlflowTracking(sqlite_uri), [failing, reporting])
    with capture_logs() as logs:
        result = watcher.run_pass()
    assert result.ok
    assert failing.calls == ["on_pass_start", "on_leaderboard_changed", "on_pass_end", "pass_report"]
    assert reporting.calls == ["on_leaderboard_changed", "on_pass_end"]
    assert dict(result.handler_report) == {"things_done": 2}
    board = result.outcomes[0].board
    assert board is not None
    assert [e.run_id for e in board.entries] == expected_order(made)
    assert set(podium_tags(client, exp_id)) == set(expected_order(made))
    failures = [(e["handler"], e["hook"]) for e in logs if e["event"] == "handler_failed"]
    assert failures == [
        ("Failing", "on_pass_start"),
        ("Failing", "on_leaderboard_changed"),
        ("Failing", "on_pass_end"),
        ("Failing", "pass_report"),
    ]
    [finished] = [e for e in logs if e["event"] == "pass_finished"]
    assert finished["things_done"] == 2


def test_a_dry_run_calls_no_hook(sqlite_uri: str) -> None:
    client = MlflowClient(sqlite_uri)
    exp_id, name = new_experiment(client)
    make_runs(client, exp_id, [0.2, 0.4])
    failing = Failing()
    settings = WatcherSettings(
        rules=[{"name": "r", "experiments": [name], "metric": "avg_test_r2", "trigger": "run_finished"}],
        http={"enabled": False},
    )
    result = Watcher(settings, MlflowTracking(sqlite_uri), [failing]).run_pass(dry_run=True)
    assert result.ok
    assert result.tag_writes == 6
    assert failing.calls == []
    assert podium_tags(client, exp_id) == {}
