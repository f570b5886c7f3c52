"""The watcher against a real `mlflow server`, on sqlite and PostgreSQL backends alike.

Runs are made with plain MlflowClient calls; calls are counted by a real forwarding proxy.
"""

from __future__ import annotations

import json
import math
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
    assert_board,
    expected_order,
    make_run,
    make_runs,
    new_experiment,
    podium_tags,
    rule,
    search_ids,
    watcher_for,
    writes,
)
from watcher import cli
from watcher.errors import ExperimentNotFound, NoRankedRuns
from watcher.mlflow_io import MlflowTracking
from watcher.model import Handler, LeaderboardChanged
from watcher.service import Watcher
from watcher.settings import WatcherSettings

pytestmark = pytest.mark.server


@pytest.fixture
def client(mlflow_server: ServerHandle) -> MlflowClient:
    return MlflowClient(mlflow_server.url)


def test_once_tags_exactly_what_the_guides_searches_expect(
    mlflow_server: ServerHandle,
    client: MlflowClient,
    counting_proxy: Callable[[str], Proxy],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--once`: top_10 -> 10 runs, model_rank 1 -> 1, production_candidate -> 3; NaN, missing,
    infinite, RUNNING, FAILED and filtered-out runs never tagged; a second `--once` writes nothing
    and costs three calls (list the experiments, one search after the watermark, the holder
    check): the first ranking swept the experiment, and the sweep's time is kept in MLflow.
    `--once --sweep` sweeps all the same and writes only that time."""
    exp_id, name = new_experiment(client)
    made = make_runs(client, exp_id, [0.1 + 0.03 * i for i in range(12)])
    bad = [
        make_run(client, exp_id, "nan", {"avg_test_r2": math.nan, "num_folds": 3}),
        make_run(client, exp_id, "missing", {"num_folds": 3}),
        make_run(client, exp_id, "inf", {"avg_test_r2": math.inf, "num_folds": 3}),
        make_run(client, exp_id, "running", {"avg_test_r2": 5.0, "num_folds": 3}, status="RUNNING"),
        make_run(client, exp_id, "failed", {"avg_test_r2": 5.0, "num_folds": 3}, status="FAILED"),
        make_run(client, exp_id, "filtered", {"avg_test_r2": 5.0, "num_folds": 1}),
    ]
    config = tmp_path / "watcher.yaml"
    config.write_text(
        yaml.safe_dump({"http": {"enabled": False}, "rules": [rule(name, filter="metrics.num_folds >= 3")]})
    )
    proxy = counting_proxy(mlflow_server.url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)

    assert cli.main(["--once", "--config", str(config), "--log-format", "json"]) == 0

    ranked = expected_order(made)
    assert search_ids(client, exp_id, "tags.top_10 = 'true'") == set(ranked[:10])
    assert search_ids(client, exp_id, "tags.model_rank = '1'") == {ranked[0]}
    assert search_ids(client, exp_id, "tags.production_candidate = 'true'") == set(ranked[:3])
    assert_board(client, exp_id, ranked)
    assert not set(bad) & set(podium_tags(client, exp_id))

    proxy.reset()
    assert cli.main(["--once", "--config", str(config), "--log-format", "json"]) == 0
    assert writes(proxy) == []
    assert [p.rsplit("/", 1)[-1] for _, p in proxy.tracking_calls()] == ["search"] * 3

    proxy.reset()
    assert cli.main(["--once", "--sweep", "--config", str(config), "--log-format", "json"]) == 0
    # The three calls of an idle pass, then the sweep: the two orphan-tag searches and the
    # experiment's board search (its sample page, which holds every run); then the state
    # with the sweep's time.
    assert [p.rsplit("/", 1)[-1] for _, p in proxy.tracking_calls()] == ["search"] * 6 + [
        "set-experiment-tag"
    ]
    assert_board(client, exp_id, ranked)


def test_a_new_best_run_takes_rank_1_with_few_reads_and_no_stale_tags(
    mlflow_server: ServerHandle, client: MlflowClient, counting_proxy: Callable[[str], Proxy]
) -> None:
    """Re-rank after one new run: O(1) reads (the search for changed experiments, watermark
    search, the experiment read afresh, holder check, the two orphan-tag searches, threshold
    search), writes only for runs whose tags change, and the board equals a full ranking."""
    exp_id, name = new_experiment(client)
    made = make_runs(client, exp_id, [0.5 + 0.01 * i for i in range(18)])
    proxy = counting_proxy(mlflow_server.url)
    watcher = watcher_for(proxy.url, rule(name, top_n=5))  # keeps 15: a threshold search
    assert watcher.run_pass().ok

    best = make_runs(client, exp_id, [0.99], prefix="best")
    proxy.reset()
    result = watcher.run_pass()

    assert result.ok
    ranked = expected_order(made + best)
    assert ranked[0] == best[0].run_id
    assert_board(client, exp_id, ranked, top_n=5)
    reads = [c for c in proxy.tracking_calls() if c not in writes(proxy)]
    assert len(reads) == 7
    assert sum("/experiments/get" in path for _, path in reads) == 1
    # 5 runs change rank (one log_batch each), the old #5 loses model_rank and top_5, the
    # old #3 loses production_candidate; plus one write of the experiment's state.
    assert len(writes(proxy)) == 5 + 2 + 1 + 1
    assert result.outcomes[0].action == "rerank"


def test_experiment_finished_waits_for_the_running_run(
    mlflow_server: ServerHandle, client: MlflowClient
) -> None:
    """`experiment_finished`: no ranking while a run is RUNNING; once it ends, the new runs count."""
    exp_id, name = new_experiment(client)
    made = make_runs(client, exp_id, [0.1, 0.2, 0.3])
    running = make_run(client, exp_id, "sweep_still_going", {"num_folds": 3}, status="RUNNING")
    watcher = watcher_for(mlflow_server.url, rule(name, trigger="experiment_finished"))

    with capture_logs() as logs:
        assert watcher.run_pass().ok
    assert podium_tags(client, exp_id) == {}
    assert "experiment_pending" in [e["event"] for e in logs]

    client.set_terminated(running, "FINISHED")
    assert watcher.run_pass().ok
    assert_board(client, exp_id, expected_order(made))

    later = make_runs(client, exp_id, [0.9], prefix="later")
    running = make_run(client, exp_id, "second_sweep", {"num_folds": 3}, status="RUNNING")
    result = watcher.run_pass()
    assert result.outcomes[0].action == "pending"
    assert_board(client, exp_id, expected_order(made))

    client.set_terminated(running, "KILLED")
    result = watcher.run_pass()
    assert result.outcomes[0].action == "rerank"
    assert_board(client, exp_id, expected_order(made + later))


def test_changing_top_n_removes_the_old_top_tags_without_new_runs(
    mlflow_server: ServerHandle, client: MlflowClient
) -> None:
    exp_id, name = new_experiment(client)
    made = make_runs(client, exp_id, [0.01 * i for i in range(7)])
    assert watcher_for(mlflow_server.url, rule(name)).run_pass().ok
    assert watcher_for(mlflow_server.url, rule(name, top_n=5, production_candidates=2)).run_pass().ok
    assert_board(client, exp_id, expected_order(made), top_n=5, k=2)
    assert search_ids(client, exp_id, "tags.top_5 = 'true'") == set(expected_order(made)[:5])
    assert search_ids(client, exp_id, "tags.top_10 = 'true'") == set()


def test_when_the_kept_board_runs_out_the_watcher_refills_it_without_a_scan(
    mlflow_server: ServerHandle, client: MlflowClient
) -> None:
    """Twelve of the thirteen kept runs deleted: the threshold search from the kept cutoff
    finds too few, so the board is found again from a sample's cutoffs (no full ranking)."""
    exp_id, name = new_experiment(client)
    made = make_runs(client, exp_id, [0.01 * i for i in range(16)])
    watcher = watcher_for(mlflow_server.url, rule(name, top_n=3, production_candidates=1))
    assert watcher.run_pass().ok  # keeps the top 3 and 10 runners-up
    ranked = expected_order(made)
    for run_id in ranked[:12]:
        client.delete_run(run_id)
    make_runs(client, exp_id, [-1.0], prefix="new")
    with capture_logs() as logs:
        result = watcher.run_pass()
    assert result.ok
    assert result.outcomes[0].action == "rerank"
    assert "board_refill_needed" in [e["event"] for e in logs]
    assert_board(client, exp_id, ranked[12:], top_n=3, k=1)


def test_patterns_match_names_case_sensitively_on_every_backend(
    mlflow_server: ServerHandle, client: MlflowClient
) -> None:
    """sqlite's LIKE ignores case and PostgreSQL's does not; the watcher matches exactly."""
    tag = uuid4().hex[:8]
    lower = client.create_experiment(f"case_{tag}_a")
    upper = client.create_experiment(f"CASE_{tag}_a")
    other = client.create_experiment(f"case_{tag}x")
    for exp_id in (lower, upper, other):
        make_runs(client, exp_id, [0.5])
    watcher = watcher_for(mlflow_server.url, rule(f"case_{tag}_*"))
    result = watcher.run_pass()
    assert [o.experiment_id for o in result.outcomes] == [lower]
    assert podium_tags(client, upper) == {}
    assert podium_tags(client, other) == {}


def test_the_first_matching_rule_owns_an_experiment(
    mlflow_server: ServerHandle, client: MlflowClient
) -> None:
    exp_id, name = new_experiment(client)
    made = make_runs(client, exp_id, [0.3, 0.2, 0.1])
    watcher = watcher_for(
        mlflow_server.url,
        rule(name, name="first", ascending=True, top_n=2, production_candidates=1),
        rule(name, name="second"),
    )
    result = watcher.run_pass()
    assert [o.rule for o in result.outcomes] == ["first"]
    assert_board(client, exp_id, expected_order(made, ascending=True), top_n=2, k=1)


def test_dry_run_prints_the_plan_and_writes_nothing(
    mlflow_server: ServerHandle,
    client: MlflowClient,
    counting_proxy: Callable[[str], Proxy],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    exp_id, name = new_experiment(client)
    made = make_runs(client, exp_id, [0.4, 0.6])
    config = tmp_path / "watcher.yaml"
    config.write_text(yaml.safe_dump({"rules": [rule(name)]}))
    proxy = counting_proxy(mlflow_server.url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
    assert cli.main(["--dry-run", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert writes(proxy) == []
    assert podium_tags(client, exp_id) == {}
    leader = expected_order(made)[0]
    assert f"{name} [{exp_id}]  run {leader}  model_rank: (none) -> 1" in out
    assert "dry run: 6 tag change(s) planned" in out


def test_rank_now_ranks_any_experiment_by_name_with_the_same_code(
    mlflow_server: ServerHandle, client: MlflowClient
) -> None:
    exp_id, name = new_experiment(client, prefix="adhoc")
    made = make_runs(client, exp_id, [0.3, 0.1, 0.2], metric="avg_test_rmse")
    watcher = watcher_for(mlflow_server.url)
    board = watcher.rank_now(name, "avg_test_rmse", top_n=2, ascending=True)
    ranked = expected_order(made, ascending=True)
    assert [e.run_id for e in board.entries] == ranked[:2]
    assert (board.ranked_runs, board.unranked_runs) == (3, 0)
    assert_board(client, exp_id, ranked, top_n=2, k=2)

    with pytest.raises(ExperimentNotFound):
        watcher.rank_now(f"no_such_{uuid4().hex}", "avg_test_r2", 10, False)
    empty_id, empty = new_experiment(client, prefix="adhoc")
    make_run(client, empty_id, "nan", {"avg_test_r2": math.nan})
    with pytest.raises(NoRankedRuns):
        watcher.rank_now(empty, "avg_test_r2", 10, False)


def test_a_run_deleted_before_its_write_does_not_break_the_adapter(
    mlflow_server: ServerHandle, client: MlflowClient
) -> None:
    """Writing to a deleted run or deleting a missing tag reports False instead of failing."""
    exp_id, _ = new_experiment(client)
    run_id = make_run(client, exp_id, "gone", {"avg_test_r2": 1.0})
    tracking = MlflowTracking(mlflow_server.url)
    assert tracking.delete_run_tag(run_id, "model_rank") is False
    client.delete_run(run_id)
    assert tracking.set_run_tags(run_id, {"model_rank": "1"}) is False
    assert tracking.delete_run_tag(run_id, "model_rank") is False


def test_an_unreachable_server_fails_the_pass_fast_and_is_logged() -> None:
    from tests.support.mlflow_server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    watcher = watcher_for(url, rule("wf_*"))
    with capture_logs() as logs:
        result = watcher.run_pass()
    assert not result.ok
    assert result.error
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["pass_failed"]
    assert watcher.health.last_ok is False
    # Just started: "starting" for three poll intervals, then unhealthy without a success.
    assert watcher.health.status(result.started_at) == "starting"
    limit = watcher.health.started_at + 3 * watcher.settings.poll_interval_seconds
    assert watcher.health.status(limit + 1) == "unhealthy"


def test_idle_from_the_first_pass_on_across_interleaved_experiments(
    mlflow_server: ServerHandle, client: MlflowClient, counting_proxy: Callable[[str], Proxy]
) -> None:
    """Experiments whose runs' end times interleave across experiments (each experiment's
    watermark lags the others'), one rule: the pass right after the first ranking is idle in two
    calls (one listing, one watermark search, no write); once ``holder_check_seconds`` have
    passed, three (the holder check). The pass after a re-rank of one experiment is idle too: the
    others' watermarks need no catching up. Sixteen experiments of four runs show it as well as
    forty of six did, at a fifth of the runs."""
    experiments, rounds = 16, 4
    prefix = f"inter_{uuid4().hex[:6]}"
    ids = [client.create_experiment(f"{prefix}_{i:02d}") for i in range(experiments)]
    for round_ in range(rounds):
        for exp_id in ids:
            make_run(client, exp_id, f"t{round_}", {METRIC: 0.1 * round_})
    proxy = counting_proxy(mlflow_server.url)
    now = [time.time()]
    watcher = watcher_for(
        proxy.url,
        rule(f"{prefix}_*", trigger="experiment_finished"),
        holder_check_seconds=60,
        clock=lambda: now[0],
    )
    first = watcher.run_pass()
    assert first.ok
    assert first.experiments_changed == experiments

    proxy.reset()
    idle = watcher.run_pass()
    assert [o.action for o in idle.outcomes] == ["idle"] * experiments
    assert (idle.tracking_calls, len(proxy.tracking_calls()), idle.tag_writes) == (2, 2, 0)
    assert writes(proxy) == []

    now[0] += 60
    proxy.reset()
    checked = watcher.run_pass()
    assert [o.action for o in checked.outcomes] == ["idle"] * experiments
    assert (checked.tracking_calls, len(proxy.tracking_calls()), writes(proxy)) == (3, 3, [])
    assert sum("model_rank" in body.decode() for body in proxy.bodies) == 1

    new = make_runs(client, ids[1], [0.9], prefix="new")
    proxy.reset()
    moved = watcher.run_pass()
    assert [o.action for o in moved.outcomes] == ["idle", "rerank"] + ["idle"] * (experiments - 2)
    assert podium_tags(client, ids[1])[new[0].run_id]["model_rank"] == "1"
    # No holder check is due, yet the re-ranked experiment's holders are read first (its only).
    holder_searches = [
        json.loads(b) for b in proxy.bodies if b and "model_rank" in json.loads(b).get("filter", "")
    ]
    assert [h["experiment_ids"] for h in holder_searches] == [[ids[1]]]

    proxy.reset()
    again = watcher.run_pass()
    assert [o.action for o in again.outcomes] == ["idle"] * experiments
    assert again.tracking_calls == 2
    assert writes(proxy) == []


def test_once_exits_1_when_the_pass_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.mlflow_server import free_port

    config = tmp_path / "watcher.yaml"
    config.write_text(yaml.safe_dump({"rules": [rule("wf_*")]}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    assert cli.main(["--once", "--config", str(config), "--log-format", "json"]) == 1
    err = capsys.readouterr().err
    assert '"event": "pass_failed"' in err
    assert "Traceback" not in err


def test_handlers_run_after_tags_are_written_and_their_failures_are_contained(
    mlflow_server: ServerHandle, client: MlflowClient
) -> None:
    """A handler sees the event once the tags are in MLflow; its exception is logged, the pass
    stays ok, nothing is rolled back, and on_pass_end still gets the watched experiments."""
    exp_id, name = new_experiment(client)
    made = make_runs(client, exp_id, [0.2, 0.4])
    seen: dict[str, object] = {}

    class Boom(Handler):
        def on_leaderboard_changed(self, event: object, rule: object) -> None:
            seen["tags"] = podium_tags(client, exp_id)
            seen["event"] = event
            raise RuntimeError("handler bug")

        def on_pass_end(self, experiments: list) -> None:
            seen["experiments"] = [e.name for e in experiments]

    settings = WatcherSettings(rules=[rule(name)], http={"enabled": False})
    watcher = Watcher(settings, MlflowTracking(mlflow_server.url), [Boom()])
    with capture_logs() as logs:
        result = watcher.run_pass()
    assert result.ok
    ranked = expected_order(made)
    assert seen["tags"] == podium_tags(client, exp_id)
    assert_board(client, exp_id, ranked)
    event = seen["event"]
    assert isinstance(event, LeaderboardChanged)
    assert (event.new_leader, event.entered, event.left) == (True, tuple(ranked), ())
    assert event.board.entries[0].run_id == ranked[0]
    assert seen["experiments"] == [name]
    failures = [e for e in logs if e["event"] == "handler_failed"]
    assert [(f["handler"], f["hook"]) for f in failures] == [("Boom", "on_leaderboard_changed")]


def test_rank_now_on_a_watched_experiment_keeps_the_rules_filter_and_board(
    mlflow_server: ServerHandle, client: MlflowClient
) -> None:
    """POST /models/rank on an experiment a rule watches (same metric and direction): the rule's
    filter applies, the ranking is incremental, and the next pass restores the rule's top_n
    incrementally too (no scan either way)."""
    exp_id, name = new_experiment(client)
    made = make_runs(client, exp_id, [0.1, 0.2, 0.3, 0.4])
    filtered = make_run(client, exp_id, "one_fold", {"avg_test_r2": 0.9, "num_folds": 1})
    watcher = watcher_for(mlflow_server.url, rule(name, filter="metrics.num_folds >= 3"))
    assert watcher.run_pass().ok
    ranked = expected_order(made)

    with capture_logs() as logs:
        board = watcher.rank_now(name, "avg_test_r2", top_n=2, ascending=False)
    assert [e.run_id for e in board.entries] == ranked[:2]
    assert filtered not in podium_tags(client, exp_id)
    assert [e["action"] for e in logs if e["event"] == "experiment_ranked"] == ["rerank"]
    assert_board(client, exp_id, ranked, top_n=2, k=2)

    result = watcher.run_pass()
    assert [o.action for o in result.outcomes] == ["rerank"]
    assert_board(client, exp_id, ranked)


def test_the_leaderboard_script_prints_rank_run_metric_and_tags(
    sqlite_server: ServerHandle, tmp_path: Path
) -> None:
    """README's main job ends with scripts/leaderboard.py after `--once`: one line per ranked run."""
    import subprocess
    import sys

    client = MlflowClient(sqlite_server.url)
    exp_id, name = new_experiment(client)
    made = make_runs(client, exp_id, [0.3, 0.1, 0.2])
    config = tmp_path / "watcher.yaml"
    config.write_text(
        yaml.safe_dump(
            {"tracking_uri": sqlite_server.url, "rules": [rule(name, top_n=2, production_candidates=1)]}
        )
    )
    assert watcher_for(sqlite_server.url, rule(name, top_n=2, production_candidates=1)).run_pass().ok
    script = Path(__file__).parents[1] / "scripts" / "leaderboard.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line.split() for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    ranked = expected_order(made)
    assert [(cols[0], cols[2]) for cols in lines] == [("1", ranked[0]), ("2", ranked[1])]
    assert "production_candidate=true," in proc.stdout
    assert (
        f"{name} (experiment {exp_id}; rule r: avg_test_r2, higher is better, 3 ranked, 0 unranked)"
        in proc.stdout
    )
