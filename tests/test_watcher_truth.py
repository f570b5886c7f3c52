"""The tags in MLflow are the true board whatever happens around the watcher (real servers).

Each test first does to an experiment what a user, a second replica or MLflow itself does
(hand-set tags, deleted and restored runs, changed values, a stale plan applied last) and
then checks that the next pass leaves exactly the tags a full ranking of what MLflow holds
would give: one run per rank, no stale tag anywhere.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from uuid import uuid4

import pytest
import yaml
from mlflow.tracking import MlflowClient
from structlog.testing import capture_logs

from tests.support.mlflow_server import ServerHandle
from tests.support.proxy import Proxy
from tests.support.watcher_runs import (
    METRIC,
    WRITE_PATHS,
    assert_board,
    expected_order,
    make_run,
    make_runs,
    new_experiment,
    next_ms,
    podium_tags,
    rule,
    true_board,
    watched_experiments,
    writes,
)
from tests.support.watcher_runs import watcher_for as watcher_over
from watcher.errors import NoRankedRuns
from watcher.mlflow_io import MlflowTracking
from watcher.model import Handler, RunAlert
from watcher.planner import Agenda
from watcher.service import Watcher
from watcher.settings import WatcherSettings
from watcher.state import STATE_TAG
from watcher.writer import apply_plan

pytestmark = pytest.mark.server


def watcher_for(url: str, *rules: dict[str, object]) -> Watcher:
    """A watcher whose holder check is due every pass: what a user or a replica does is put
    right by the very next pass (the daemon's default checks every 60 seconds)."""
    return watcher_over(url, *rules, holder_check_seconds=0)


@pytest.fixture
def client(mlflow_server: ServerHandle) -> MlflowClient:
    return MlflowClient(mlflow_server.url)


def test_hand_set_ranks_on_poor_and_failed_runs_are_removed_by_the_next_pass(
    mlflow_server: ServerHandle, client: MlflowClient
) -> None:
    """model_rank=1 and top_10 set by hand on a poor FINISHED run and on a FAILED run go at the
    very next pass (nothing new finished); a top_10 alone on a run without model_rank goes at
    the next re-rank."""
    exp_id, name = new_experiment(client)
    made = make_runs(client, exp_id, [0.3 + 0.01 * i for i in range(30)])
    failed = make_run(client, exp_id, "failed", {METRIC: 5.0}, status="FAILED")
    watcher = watcher_for(mlflow_server.url, rule(name))
    assert watcher.run_pass().ok
    poor = made[0].run_id
    for run_id in (poor, failed):
        client.set_tag(run_id, "model_rank", "1")
        client.set_tag(run_id, "top_10", "true")
    result = watcher.run_pass()
    assert (result.outcomes[0].action, result.outcomes[0].reason) == ("rerank", "holders")
    assert podium_tags(client, exp_id) == true_board(client, exp_id)

    client.set_tag(made[1].run_id, "top_10", "true")  # no model_rank: found when re-ranking
    client.set_tag(made[2].run_id, "production_candidate", "true")
    make_runs(client, exp_id, [0.1], prefix="new")
    assert watcher.run_pass().ok
    assert podium_tags(client, exp_id) == true_board(client, exp_id)


def test_once_removes_hand_set_top_n_and_candidate_tags_on_runs_without_model_rank(
    mlflow_server: ServerHandle, client: MlflowClient, tmp_path: Path
) -> None:
    """`python -m watcher --once --sweep` with nothing new: a top_10 or production_candidate set
    by hand on a run that holds no model_rank goes in that one pass, and a best run whose end
    time is older than the watermark (another client's clock) is ranked (without --sweep,
    a `--once` sweeps what was last swept 15 minutes ago or more)."""
    exp_id, name = new_experiment(client)
    made = make_runs(client, exp_id, [0.3 + 0.01 * i for i in range(20)])
    watcher = watcher_for(mlflow_server.url, rule(name))
    assert watcher.run_pass().ok
    client.set_tag(made[0].run_id, "top_10", "true")
    client.set_tag(made[1].run_id, "production_candidate", "true")
    late = client.create_run(exp_id, run_name="late").info.run_id
    client.log_metric(late, METRIC, 0.99)
    first_end = client.get_run(made[0].run_id).info.end_time
    client.set_terminated(late, "FINISHED", end_time=first_end - 60_000)
    idle = watcher.run_pass()  # no sweep: the ended-after search cannot see it
    assert [o.action for o in idle.outcomes] == ["idle"]
    assert late not in podium_tags(client, exp_id)
    config = tmp_path / "watcher.yaml"
    config.write_text(yaml.safe_dump({"tracking_uri": mlflow_server.url, "rules": [rule(name)]}))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "watcher",
            "--config",
            str(config),
            "--once",
            "--sweep",
            "--log-format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},
    )
    assert done.returncode == 0, done.stderr
    assert podium_tags(client, exp_id) == true_board(client, exp_id)
    assert made[0].run_id not in podium_tags(client, exp_id)
    assert podium_tags(client, exp_id)[late]["model_rank"] == "1"


def test_a_deleted_or_worsened_holder_is_replaced_at_once_and_a_restored_one_never_doubles_rank_1(
    mlflow_server: ServerHandle, client: MlflowClient
) -> None:
    """A deleted leader is replaced by the holder check at once; holders deleted or whose value
    dropped are replaced from the kept board by the re-rank a new run starts, exactly, with no
    holder check due; a deleted leader restored with its old model_rank=1 never doubles rank 1."""
    exp_id, name = new_experiment(client)
    made = make_runs(client, exp_id, [0.01 * i for i in range(20)])
    now = [time.time()]
    watcher = watcher_over(
        mlflow_server.url, rule(name, top_n=4), holder_check_seconds=60, clock=lambda: now[0]
    )
    assert watcher.run_pass().ok
    ranked = expected_order(made)
    leader = ranked[0]

    client.delete_run(leader)
    now[0] += 60
    result = watcher.run_pass()
    assert (result.outcomes[0].action, result.outcomes[0].reason) == ("rerank", "holders")
    board = podium_tags(client, exp_id)
    assert board == true_board(client, exp_id, top_n=4)
    assert sorted(int(t["model_rank"]) for t in board.values()) == list(range(1, 5))

    client.log_metric(ranked[1], METRIC, -5.0, timestamp=next_ms())
    newcomer = make_runs(client, exp_id, [0.055], prefix="new")
    result = watcher.run_pass()
    assert result.ok
    assert result.outcomes[0].action == "rerank"
    alive = [m for m in made if m.run_id != leader]
    values = {m.run_id: m.value for m in [*alive, *newcomer]}
    values[ranked[1]] = -5.0
    truth = sorted(values, key=lambda r: -values[r])  # values are distinct
    assert_board(client, exp_id, truth, top_n=4)
    assert podium_tags(client, exp_id) == true_board(client, exp_id, top_n=4)

    client.restore_run(leader)  # it comes back with its old model_rank=1
    now[0] += 60
    assert watcher.run_pass().ok
    assert podium_tags(client, exp_id) == true_board(client, exp_id, top_n=4)
    assert podium_tags(client, exp_id)[leader]["model_rank"] == "1"


def test_a_holder_whose_value_changed_is_re_ranked_by_the_next_pass(
    mlflow_server: ServerHandle, client: MlflowClient
) -> None:
    exp_id, name = new_experiment(client)
    made = make_runs(client, exp_id, [0.1 * i for i in range(15)])
    watcher = watcher_for(mlflow_server.url, rule(name))
    assert watcher.run_pass().ok
    leader = made[-1].run_id
    client.log_metric(leader, METRIC, -5.0, timestamp=next_ms())
    assert watcher.run_pass().ok
    assert podium_tags(client, exp_id) == true_board(client, exp_id)
    assert leader not in podium_tags(client, exp_id)


def test_a_replicas_stale_plan_applied_last_is_put_right_by_the_next_pass(
    mlflow_server: ServerHandle, client: MlflowClient
) -> None:
    """Replica P reads and plans; a better run finishes; replica Q does its whole pass; P
    applies its stale plan and state last. The next pass (either replica) finds the holders
    differ from what MLflow says and restores the true board."""
    exp_id, name = new_experiment(client)
    make_runs(client, exp_id, [0.1 * i for i in range(12)])
    p, q = watcher_for(mlflow_server.url, rule(name)), watcher_for(mlflow_server.url, rule(name))
    assert q.run_pass().ok
    make_runs(client, exp_id, [0.55], prefix="mid")

    watched = watched_experiments(p.settings, p.tracking)
    every = frozenset(e.experiment_id for e in watched)
    stale = p.reader.plan_pass(p.settings, watched, Agenda(now_ms=next_ms(), holder_checks=every))
    make_runs(client, exp_id, [0.99], prefix="best")
    assert q.run_pass().ok
    for plan in stale:
        apply_plan(p.tracking, plan, None)
    ranks = [t["model_rank"] for t in podium_tags(client, exp_id).values()]
    assert len(ranks) != len(set(ranks)) or podium_tags(client, exp_id) != true_board(client, exp_id)

    assert p.run_pass().ok
    assert podium_tags(client, exp_id) == true_board(client, exp_id)
    assert p.run_pass().tag_writes == 0


def test_rank_now_with_a_metric_no_run_has_writes_nothing(
    mlflow_server: ServerHandle, client: MlflowClient
) -> None:
    """POST /models/rank answers 404 for a metric no run has: the tags and the state stay."""
    exp_id, name = new_experiment(client)
    make_runs(client, exp_id, [0.1 * i for i in range(12)])
    watcher = watcher_for(mlflow_server.url, rule(name))
    assert watcher.run_pass().ok
    before = (podium_tags(client, exp_id), client.get_experiment(exp_id).tags.get(STATE_TAG))
    with pytest.raises(NoRankedRuns):
        watcher.rank_now(name, "no_such_metric", top_n=10, ascending=False)
    assert (podium_tags(client, exp_id), client.get_experiment(exp_id).tags.get(STATE_TAG)) == before
    assert watcher.run_pass().outcomes[0].action == "idle"


def test_a_first_ranking_finds_the_board_without_a_scan_and_counts_later(
    mlflow_server: ServerHandle, counting_proxy: Callable[[str], Proxy]
) -> None:
    """More runs than the sample page: no page beyond the sample and no ordered search without
    a threshold before the tags are written (the threshold searches are ordered on the server
    and cut at the kept board plus one); the tags equal a full ranking's (ties by end time);
    the counts are completed by later passes, a bounded number of pages each."""
    client = MlflowClient(mlflow_server.url)
    exp_id, name = new_experiment(client)
    values = [round(0.013 * ((i * 37) % 61), 3) for i in range(90)]  # shuffled, with ties
    values += [math.nan, None]  # type: ignore[list-item]
    make_runs(client, exp_id, values)
    proxy = counting_proxy(mlflow_server.url)
    watcher = watcher_for(proxy.url, rule(name))
    watcher.reader.sample_size = 20
    result = watcher.run_pass()
    assert result.ok

    before_writes = []
    for (_, path), body in zip(proxy.requests, proxy.bodies, strict=True):
        if path.rsplit("/", 1)[-1] in WRITE_PATHS:
            break
        before_writes.append((path, json.loads(body or b"{}")))
    searches = [b for p, b in before_writes if p.endswith("/runs/search")]
    assert searches
    ordered = [b for b in searches if b.get("order_by")]
    assert ordered
    for body in ordered:
        filter_string = body.get("filter", "")
        if body["order_by"] == ["attributes.end_time DESC"]:  # the sample
            assert int(body["max_results"]) == 20, body
        else:
            assert body["order_by"] == [f"metrics.`{METRIC}` DESC"], body
            assert f"metrics.`{METRIC}` >=" in filter_string, body
            assert int(body["max_results"]) == 21, body
    for body in searches:
        filter_string = body.get("filter", "")
        # Holder and orphan-tag searches, threshold searches, the watermark search.
        cheap = any(k in filter_string for k in ("tags.", f"metrics.`{METRIC}` >=", "attributes.end_time >"))
        assert cheap or int(body.get("max_results", 0)) == 20, filter_string
    assert podium_tags(client, exp_id) == true_board(client, exp_id)
    state = json.loads(client.get_experiment(exp_id).tags[STATE_TAG])
    assert state["counting"] is True

    for _ in range(3):
        assert watcher.run_pass().ok
    state = json.loads(client.get_experiment(exp_id).tags[STATE_TAG])
    assert (state["counting"], state["ranked_runs"], state["unranked_runs"]) == (False, 90, 2)
    proxy.reset()
    assert watcher.run_pass().tracking_calls == 3
    assert writes(proxy) == []


def test_two_replicas_racing_while_runs_finish_converge_in_one_more_pass(
    mlflow_server: ServerHandle, tmp_path: Path
) -> None:
    """Two `python -m watcher --once` processes on the same experiment while runs keep
    finishing; after both exit, one more pass leaves one run per rank and the true board."""
    client = MlflowClient(mlflow_server.url)
    exp_id, name = new_experiment(client)
    make_runs(client, exp_id, [0.01 * i for i in range(20)])
    config = tmp_path / "watcher.yaml"
    config.write_text(yaml.safe_dump({"http": {"enabled": False}, "rules": [rule(name)]}))
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url}
    stop = threading.Event()

    def keep_finishing() -> None:
        i = 0
        while not stop.is_set():
            make_runs(client, exp_id, [0.3 + 0.07 * (i % 11)], prefix=f"live{i}")
            i += 1

    feeder = threading.Thread(target=keep_finishing)
    feeder.start()
    try:
        command = [sys.executable, "-m", "watcher", "--once", "--config", str(config), "--log-format", "json"]
        procs = [
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=180) for p in procs]
        failed = [err[-3000:] for p, (_, err) in zip(procs, outputs, strict=True) if p.returncode != 0]
        assert failed == []
    finally:
        stop.set()
        feeder.join()
    watcher = watcher_for(mlflow_server.url, rule(name))
    assert watcher.run_pass().ok
    board = podium_tags(client, exp_id)
    assert board == true_board(client, exp_id)
    ranks = [t["model_rank"] for t in board.values()]
    assert sorted(ranks, key=int) == [str(r) for r in range(1, 11)]
    assert watcher.run_pass().tag_writes == 0


class AlertRecorder(Handler):
    """A handler that keeps what the pass hands it (a real object, no mock)."""

    def __init__(self) -> None:
        self.alerts: list[tuple[str, str]] = []

    def on_leaderboard_changed(self, event: object, rule: object) -> None:
        pass

    def on_pass_end(self, experiments: object) -> None:
        pass

    def on_run_alert(self, alert: RunAlert, rule: object) -> None:
        self.alerts.append((alert.kind, alert.run_id))


def test_stalled_runs_stop_holding_a_ranking_back_and_alerts_come_once(
    mlflow_server: ServerHandle, client: MlflowClient
) -> None:
    """A RUNNING run silent for longer than stalled_after_minutes: experiment_finished ranks the
    rest, logs run_stalled; it stalled before the rule saw the experiment, so it is counted, not
    announced. A run that fails later is announced once, and never again."""
    exp_id, name = new_experiment(client)
    made = make_runs(client, exp_id, [0.1 * i for i in range(5)])
    old = next_ms() - 3 * 3_600_000
    stuck = client.create_run(exp_id, run_name="stuck", start_time=old).info.run_id
    settings = WatcherSettings(
        tracking_uri=mlflow_server.url,
        http={"enabled": False},
        rules=[
            rule(name, trigger="experiment_finished", alerts=["failed", "stalled"], stalled_after_minutes=60)
        ],
    )
    recorder = AlertRecorder()
    watcher = Watcher(settings, MlflowTracking(mlflow_server.url), [recorder])
    with capture_logs() as logs:
        first = watcher.run_pass()
    assert first.outcomes[0].action == "full"
    assert podium_tags(client, exp_id) == true_board(client, exp_id)
    stalled = [e for e in logs if e["event"] == "run_stalled"]
    assert [(e["run_id"], e["log_level"]) for e in stalled] == [(stuck, "warning")]
    assert recorder.alerts == []
    assert any(e["event"] == "alerts_not_announced" for e in logs)

    failing = make_run(client, exp_id, "failing", {METRIC: 9.0}, status="FAILED")
    assert watcher.run_pass().ok
    assert recorder.alerts == [("failed", failing)]
    assert watcher.run_pass().ok
    other = watcher_for(mlflow_server.url, settings.rules[0].model_dump())
    other.handlers = (recorder,)
    assert other.run_pass().ok  # a second watcher (a restart, a replica) does not repeat it
    assert recorder.alerts == [("failed", failing)]
    assert made


def test_a_glob_whose_set_holds_a_closing_bracket_watches_the_experiment(
    mlflow_server: ServerHandle, client: MlflowClient
) -> None:
    """`wf_xgboost_[]]z*` matches `wf_xgboost_]z…` (the set holds "]"), on both backends' LIKE."""
    tag = uuid4().hex[:8]
    exp_id = client.create_experiment(f"wf_xgboost_]z_{tag}")
    client.create_experiment(f"wf_xgboost_[]]z_{tag}")  # the pattern's own text: not matched
    make_runs(client, exp_id, [0.5])
    result = watcher_for(mlflow_server.url, rule(f"wf_xgboost_[]]z_{tag}")).run_pass()
    assert [o.experiment_id for o in result.outcomes] == [exp_id]
    assert podium_tags(client, exp_id) == true_board(client, exp_id)


@pytest.mark.parametrize(
    ("metric", "top_n", "ascending"),
    [(METRIC, 5, False), ("avg_test_rmse", 10, True)],
    ids=["same-metric-other-top-n", "another-metric"],
)
def test_a_run_that_failed_before_an_api_ranking_is_announced_by_the_rules_next_pass(
    mlflow_server: ServerHandle, client: MlflowClient, metric: str, top_n: int, ascending: bool
) -> None:
    """A run fails after the rule's pass; POST /models/rank (which announces nothing) ranks the
    experiment before the rule's next pass and moves the watermark past the failure; a run
    that finishes after the failure moves it too. The rule's next pass still announces the
    failed run, once, and the pass after it is idle."""
    exp_id, name = new_experiment(client)
    make_runs(client, exp_id, [0.1 * i for i in range(12)], extra={"num_folds": 3.0, "avg_test_rmse": 1.0})
    recorder = AlertRecorder()
    settings = WatcherSettings(
        tracking_uri=mlflow_server.url, http={"enabled": False}, rules=[rule(name, alerts=["failed"])]
    )
    watcher = Watcher(settings, MlflowTracking(mlflow_server.url), [recorder])
    assert watcher.run_pass().ok
    failed = make_run(client, exp_id, "boom", {METRIC: 0.2}, status="FAILED")
    make_runs(client, exp_id, [0.05], extra={"num_folds": 3.0, "avg_test_rmse": 2.0}, prefix="after")
    watcher.rank_now(name, metric, top_n=top_n, ascending=ascending)
    assert recorder.alerts == []

    assert watcher.run_pass().ok
    assert recorder.alerts == [("failed", failed)]
    assert podium_tags(client, exp_id) == true_board(client, exp_id)
    again = watcher.run_pass()
    assert (again.ok, [o.action for o in again.outcomes], again.tag_writes) == (True, ["idle"], 0)
    assert recorder.alerts == [("failed", failed)]


def test_a_finished_run_outside_the_filter_moves_the_watermark_when_failed_runs_are_announced(
    mlflow_server: ServerHandle, counting_proxy: Callable[[str], Proxy]
) -> None:
    """With a filter and failed alerts the batch search drops the filter; a FINISHED run the
    filter leaves out is searched again only until the watermark covers it: the pass that sees
    it moves the watermark, the next one is idle at 3 calls (it stayed at 4 every pass)."""
    client = MlflowClient(mlflow_server.url)
    exp_id, name = new_experiment(client)
    made = make_runs(client, exp_id, [0.1 * i for i in range(12)])
    proxy = counting_proxy(mlflow_server.url)
    watcher = watcher_for(proxy.url, rule(name, filter="metrics.num_folds >= 3", alerts=["failed"]))
    assert watcher.run_pass().ok
    make_runs(client, exp_id, [0.9], extra={"num_folds": 1.0}, prefix="outside")
    seen = watcher.run_pass()
    assert [o.action for o in seen.outcomes] == ["advance"]
    proxy.reset()
    idle = watcher.run_pass()
    assert (idle.tracking_calls, len(proxy.tracking_calls()), writes(proxy)) == (3, 3, [])
    assert [o.action for o in idle.outcomes] == ["idle"]
    outside = next(r.info.run_id for r in client.search_runs([exp_id], "metrics.num_folds < 3"))
    tags = podium_tags(client, exp_id)
    assert (outside in tags, tags[made[-1].run_id]["model_rank"]) == (False, "1")
