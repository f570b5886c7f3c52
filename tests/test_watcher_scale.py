"""Many experiments, one rule: idle passes stay cheap and the schedules live in MLflow (real
server behind the counting proxy; the watcher's clock is passed in, never patched)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from uuid import uuid4

import pytest
import yaml
from mlflow.tracking import MlflowClient
from pytest_httpserver import HTTPServer
from structlog.testing import capture_logs

from tests.support.mlflow_server import ServerHandle
from tests.support.proxy import Proxy
from tests.support.watcher_runs import make_run, make_runs, podium_tags
from tests.support.webhooks import SECRET, requests_to
from watcher import cli
from watcher.cli import build_handlers
from watcher.mlflow_io import MlflowTracking
from watcher.model import SWEEP_SECONDS, WatchedExperiment
from watcher.ranking import Candidate
from watcher.schedule import FLOOR_MARGIN_SECONDS, holder_checks_due
from watcher.searches import SCAN_PAGE
from watcher.service import PassResult, Watcher
from watcher.settings import WatcherSettings
from watcher.state import STATE_TAG, ExperimentState

pytestmark = pytest.mark.server

METRIC = "avg_test_r2"


def rule(pattern: str) -> dict[str, object]:
    return {"name": "r", "experiments": [pattern], "metric": METRIC, "top_n": 3, "trigger": "run_finished"}


def watcher_at(url: str, pattern: str, now: list[float], **settings: object) -> Watcher:
    config = WatcherSettings(tracking_uri=url, rules=[rule(pattern)], http={"enabled": False}, **settings)
    return Watcher(config, MlflowTracking(url), clock=lambda: now[0])


def searched(proxy: Proxy) -> list[str]:
    """The filter of each search the proxy passed, in order ("" for other calls)."""
    return [json.loads(b).get("filter", "") if b else "" for b in proxy.bodies]


def test_once_twice_within_15_minutes_the_second_is_three_calls_over_40_experiments(
    sqlite_server: ServerHandle, counting_proxy: Callable[[str], Proxy], tmp_path: Path
) -> None:
    """The first `--once` ranks 40 experiments (each first ranking counts as a sweep, kept in
    its podium.state); a second `--once` minutes later sweeps nothing: one listing, one search
    after the watermark, one holder check, no write."""
    client = MlflowClient(sqlite_server.url)
    prefix = f"once40_{uuid4().hex[:6]}"
    for i in range(40):
        make_runs(client, client.create_experiment(f"{prefix}_{i:02d}"), [0.1 + 0.01 * i])
    proxy = counting_proxy(sqlite_server.url)
    config = tmp_path / "watcher.yaml"
    config.write_text(
        yaml.safe_dump(
            {"tracking_uri": proxy.url, "http": {"enabled": False}, "rules": [rule(f"{prefix}_*")]}
        )
    )
    assert cli.main(["--once", "--config", str(config), "--log-format", "json"]) == 0
    proxy.reset()
    assert cli.main(["--once", "--config", str(config), "--log-format", "json"]) == 0
    calls = proxy.tracking_calls()
    assert len(calls) == 3 <= 5
    assert [p.rsplit("/", 1)[-1] for _, p in calls] == ["search"] * 3
    assert searched(proxy)[2] == "tags.model_rank LIKE '%'"  # --once always checks the holders


def test_once_sweep_sweeps_every_experiment_the_longest_unswept_first(
    sqlite_server: ServerHandle, counting_proxy: Callable[[str], Proxy], tmp_path: Path
) -> None:
    """One ranking per pass over three experiments: three `--once` rank them, the latest runs
    first; `--once --sweep` then sweeps all three (the passes after its first sweep what it
    left waiting), the one swept longest ago first, and a stale `top_3` on each goes."""
    client = MlflowClient(sqlite_server.url)
    prefix = f"sweepall_{uuid4().hex[:6]}"
    ids = [client.create_experiment(f"{prefix}_{i}") for i in range(3)]
    for exp_id in ids:
        make_runs(client, exp_id, [0.1, 0.2, 0.3, 0.4])
    proxy = counting_proxy(sqlite_server.url)
    config = tmp_path / "watcher.yaml"
    settings = {"tracking_uri": proxy.url, "http": {"enabled": False}, "rules": [rule(f"{prefix}_*")]}
    config.write_text(yaml.safe_dump(settings | {"max_rankings_per_pass": 1}))
    args = ["--once", "--config", str(config), "--log-format", "json"]
    for _ in ids:
        assert cli.main(args) == 0
    swept_at = {i: swept(client, i) for i in ids}
    order = sorted(ids, key=swept_at.__getitem__)
    assert order == ids[::-1]  # the latest runs (the last experiment's) were ranked first
    stale = {}
    for exp_id in ids:  # a hand-set top_3 on a run off the board: only a sweep finds it
        board = podium_tags(client, exp_id)
        run_id = next(r.info.run_id for r in client.search_runs([exp_id]) if r.info.run_id not in board)
        client.set_tag(run_id, "top_3", "true")
        stale[exp_id] = run_id

    assert cli.main([*args, "--sweep"]) == 0
    swept_again = {i: swept(client, i) for i in ids}
    assert all(swept_again[i] > swept_at[i] for i in ids)
    assert sorted(ids, key=swept_again.__getitem__) == order  # one per pass, swept longest ago first
    assert all(stale[i] not in podium_tags(client, i) for i in ids)


def swept(client: MlflowClient, exp_id: str) -> int:
    state = ExperimentState.from_tag(client.get_experiment(exp_id).tags[STATE_TAG])
    assert state is not None
    assert state.swept is not None
    return state.swept


def test_a_hand_set_model_rank_is_put_right_within_holder_check_seconds(
    mlflow_server: ServerHandle, counting_proxy: Callable[[str], Proxy]
) -> None:
    """With the holder check every 60 seconds, a pass 30 seconds after a hand-set
    ``model_rank=1`` on a poor run makes two calls and leaves it; the pass 60 seconds after
    the last check reads the holders and puts the true board back."""
    client = MlflowClient(mlflow_server.url)
    name = f"hand_{uuid4().hex[:6]}"
    exp_id = client.create_experiment(name)
    made = make_runs(client, exp_id, [0.1 * i for i in range(8)])
    proxy = counting_proxy(mlflow_server.url)
    now = [time.time()]
    watcher = watcher_at(proxy.url, name, now, holder_check_seconds=60)
    assert watcher.run_pass().ok
    board = podium_tags(client, exp_id)
    poor = made[0].run_id
    client.set_tag(poor, "model_rank", "1")

    now[0] += 30
    proxy.reset()
    early = watcher.run_pass()
    assert (early.ok, early.tracking_calls, early.tag_writes) == (True, 2, 0)
    assert podium_tags(client, exp_id)[poor] == {"model_rank": "1"}

    now[0] += 30
    proxy.reset()
    checked = watcher.run_pass()
    assert (checked.outcomes[0].action, checked.outcomes[0].reason) == ("rerank", "holders")
    assert "tags.model_rank LIKE '%'" in searched(proxy)
    assert podium_tags(client, exp_id) == board


def test_a_restarted_daemon_keeps_the_sweep_schedule_kept_in_mlflow(
    sqlite_server: ServerHandle, counting_proxy: Callable[[str], Proxy]
) -> None:
    """A new watcher process (a restarted pod) a minute after the first ranking does not sweep
    at once: the experiment's podium.state says when it was swept. Fifteen minutes after that
    sweep its pass sweeps (the orphan-tag searches) and keeps the new time."""
    client = MlflowClient(sqlite_server.url)
    name = f"restart_{uuid4().hex[:6]}"
    exp_id = client.create_experiment(name)
    make_runs(client, exp_id, [0.1 * i for i in range(6)])
    proxy = counting_proxy(sqlite_server.url)
    now = [time.time()]
    assert watcher_at(proxy.url, name, now).run_pass().ok
    state = ExperimentState.from_tag(client.get_experiment(exp_id).tags[STATE_TAG])
    assert state is not None
    assert state.swept == int(now[0] * 1000)

    now[0] += 60
    proxy.reset()
    restarted = watcher_at(proxy.url, name, now)
    idle = restarted.run_pass()
    assert [o.action for o in idle.outcomes] == ["idle"]
    assert not any(f.startswith("tags.`") for f in searched(proxy))  # no orphan-tag search

    now[0] += SWEEP_SECONDS
    proxy.reset()
    swept = watcher_at(proxy.url, name, now).run_pass()
    assert [(o.action, o.reason) for o in swept.outcomes] == [("rerank", "sweep")]
    assert sum(f.startswith("tags.`") for f in searched(proxy)) == 2  # top_3, production_candidate
    state = ExperimentState.from_tag(client.get_experiment(exp_id).tags[STATE_TAG])
    assert state is not None
    assert state.swept == int(now[0] * 1000)


def test_a_first_pass_ranks_at_most_max_rankings_per_pass_latest_runs_first(
    sqlite_server: ServerHandle, counting_proxy: Callable[[str], Proxy]
) -> None:
    """Five unranked experiments, two rankings per pass: the two whose runs ended last go
    first, the others are left unwritten and say so; the passes after finish the work, and
    ``/healthz``'s health holds from the first written plan on."""
    client = MlflowClient(sqlite_server.url)
    prefix = f"spread_{uuid4().hex[:6]}"
    ids = [client.create_experiment(f"{prefix}_{i}") for i in range(5)]
    for exp_id in reversed(ids):  # the first experiment's run ends last
        make_runs(client, exp_id, [0.5, 0.6])
    proxy = counting_proxy(sqlite_server.url)
    now = [time.time()]
    watcher = watcher_at(proxy.url, f"{prefix}_*", now, max_rankings_per_pass=2)
    with capture_logs() as logs:
        first = watcher.run_pass()
    assert first.rankings_deferred == 3
    # The deferred rankings are one figure of the pass, not a line each (none is waiting on a run).
    assert [e for e in logs if e["event"] == "experiment_pending"] == []
    assert [e["rankings_deferred"] for e in logs if e["event"] == "pass_finished"] == [3]
    ranked = {o.experiment_id for o in first.outcomes if o.action == "full"}
    assert ranked == set(ids[:2])
    assert [(o.action, o.reason) for o in first.outcomes if o.experiment_id not in ranked] == [
        ("pending", "deferred")
    ] * 3
    assert all(STATE_TAG not in client.get_experiment(i).tags for i in ids[2:])
    assert watcher.health.status(now[0]) == "ok"  # not merely "starting"

    second, third = watcher.run_pass(), watcher.run_pass()
    assert (second.rankings_deferred, third.rankings_deferred) == (1, 0)
    assert all(podium_tags(client, i) for i in ids)
    assert [o.action for o in watcher.run_pass().outcomes] == ["idle"] * 5


def test_first_rankings_go_to_the_experiments_whose_runs_ended_last_whatever_their_names(
    sqlite_server: ServerHandle,
) -> None:
    """Three runs per experiment, two first rankings per pass: the experiments whose runs ended
    last and second to last go first, not the one whose name sorts first (a single page of
    max_rankings_per_pass runs holds only the last experiment's runs)."""
    client = MlflowClient(sqlite_server.url)
    prefix = f"latest_{uuid4().hex[:6]}"
    oldest, middle, newest = (client.create_experiment(f"{prefix}_{c}") for c in "azb")
    for exp_id in (oldest, middle, newest):
        make_runs(client, exp_id, [0.5, 0.6, 0.7])
    now = [time.time()]
    watcher = watcher_at(sqlite_server.url, f"{prefix}_*", now, max_rankings_per_pass=2)
    first = watcher.run_pass()
    assert first.rankings_deferred == 1
    assert {o.experiment_id for o in first.outcomes if o.action == "full"} == {newest, middle}


def watched(name: str, holders: int, top_n: int = 10) -> WatchedExperiment:
    """A watched experiment whose kept board has ``holders`` runs (0: not ranked yet)."""
    board = tuple(Candidate(f"{name}_{i}", f"r{i}", 1.0 - i / 100, i) for i in range(holders))
    state = ExperimentState(rule="r", fingerprint="f" * 16, top_n=top_n, production_candidates=1, board=board)
    return WatchedExperiment(name, name, {STATE_TAG: state.to_tag()} if holders else {})


@pytest.mark.parametrize(
    ("checked_at", "interval", "budget", "expected"),
    [
        # Never checked: the whole budget, in id order; the first always goes.
        ({}, 60.0, 25, (["a", "b", "c"], 1)),
        ({}, 60.0, 5, (["a"], 3)),
        # The longest unchecked first; those checked within the interval are not due.
        ({"a": 101.0, "b": 10.0, "c": 50.0, "d": 150.0}, 60.0, 12, (["b", "c"], 0)),
        ({"a": 100.0, "b": 10.0, "c": 50.0, "d": 150.0}, 60.0, 12, (["b", "c"], 1)),
        ({"a": 100.0, "b": 10.0, "c": 50.0, "d": 150.0}, 60.0, 11, (["b"], 2)),
        # 0: every ranked experiment, every pass, whatever the budget.
        ({"a": 159.0, "b": 159.0, "c": 159.0, "d": 159.0}, 0.0, 5, (["a", "b", "c", "d"], 0)),
    ],
)
def test_a_due_holder_check_takes_the_longest_unchecked_experiments_within_its_run_budget(
    checked_at: dict[str, float], interval: float, budget: int, expected: tuple[list[str], int]
) -> None:
    """Experiments a, b, c, d hold 10, 10, 2 and 10 ranked runs (top 10), at time 160; e is
    not ranked yet (its first ranking reads its holders)."""
    exps = [watched("a", 12), watched("b", 10), watched("c", 2), watched("d", 10), watched("e", 0)]
    assert holder_checks_due(exps, checked_at, 160.0, interval, budget) == expected


def test_holder_checks_of_many_experiments_are_spread_over_passes_that_follow_at_once(
    sqlite_server: ServerHandle, counting_proxy: Callable[[str], Proxy]
) -> None:
    """Six ranked experiments of three holders each, a budget of seven holder runs: a due
    check reads two experiments' holders per pass (one search naming only those two) and
    says how many wait; three passes check all six, and a hand-set ``model_rank`` in the last
    one checked is put right by the third. Then no check is due until 60 seconds after."""
    client = MlflowClient(sqlite_server.url)
    prefix = f"slice_{uuid4().hex[:6]}"
    ids = [client.create_experiment(f"{prefix}_{i}") for i in range(6)]
    made = {i: make_runs(client, i, [0.1, 0.2, 0.3, 0.4]) for i in ids}
    proxy = counting_proxy(sqlite_server.url)
    now = [time.time()]
    watcher = watcher_at(proxy.url, f"{prefix}_*", now, holder_check_seconds=60)
    watcher.holder_check_runs = 7
    assert watcher.run_pass().ok  # first rankings: each reads its own holders
    boards = {i: podium_tags(client, i) for i in ids}
    last = sorted(ids)[-1]
    client.set_tag(made[last][0].run_id, "model_rank", "1")

    now[0] += 60
    deferred, holder_searches = [], []
    for _ in range(3):
        proxy.reset()
        result = watcher.run_pass()
        assert result.ok
        deferred.append(result.holder_checks_deferred)
        holder_searches += [
            sorted(json.loads(b)["experiment_ids"])
            for b in proxy.bodies
            if b and json.loads(b).get("filter") == "tags.model_rank LIKE '%'"
        ]
    assert deferred == [4, 2, 0]
    assert holder_searches == [sorted(ids)[0:2], sorted(ids)[2:4], sorted(ids)[4:6]]
    assert {i: podium_tags(client, i) for i in ids} == boards

    now[0] += 30
    proxy.reset()
    idle = watcher.run_pass()
    assert (idle.tracking_calls, idle.holder_checks_deferred) == (2, 0)


def run_searches(proxy: Proxy) -> list[dict[str, object]]:
    """The bodies of the run searches the proxy passed, in order."""
    return [
        json.loads(body)
        for (_, path), body in zip(proxy.requests, proxy.bodies, strict=True)
        if path.endswith("/runs/search")
    ]


def test_the_batch_searches_go_in_pages_so_no_answer_outlasts_the_client_timeout(
    mlflow_server: ServerHandle, counting_proxy: Callable[[str], Proxy]
) -> None:
    """1,000 experiments hold 10,000 holder runs, and a night of sweeps ends as many: one answer
    of that many trainer runs outlasts the client's 30 s timeout, so a `--once` (which checks
    every holder) or a pass after the night fails, every time. The batch searches ask for at
    most SCAN_PAGE runs per request; with pages of four runs, a one-off pass over three
    experiments of three holders and two new runs each reads each search in pages, sees every
    new run and puts a hand-set rank right."""
    client = MlflowClient(mlflow_server.url)
    prefix = f"paged_{uuid4().hex[:6]}"
    ids = [client.create_experiment(f"{prefix}_{i}") for i in range(3)]
    made = {i: make_runs(client, i, [0.1, 0.2, 0.3, 0.4]) for i in ids}
    proxy = counting_proxy(mlflow_server.url)
    now = [time.time()]
    watcher = watcher_at(proxy.url, f"{prefix}_*", now)
    assert watcher.run_pass().ok
    boards = {i: podium_tags(client, i) for i in ids}

    proxy.reset()
    assert watcher.run_pass(holder_check=True).ok  # idle: the ended-after search, the holders
    searches = run_searches(proxy)
    assert len(searches) == 2
    assert all(0 < int(str(s["max_results"])) <= SCAN_PAGE for s in searches)

    for i in ids:
        make_runs(client, i, [0.05, 0.06])  # below every board
    client.set_tag(made[ids[-1]][0].run_id, "model_rank", "1")
    watcher.reader.batch_page = 4
    now[0] += 60
    proxy.reset()
    result = watcher.run_pass(holder_check=True)
    assert result.ok
    searches = run_searches(proxy)
    holder_pages = [s for s in searches if s["filter"] == "tags.model_rank LIKE '%'"]
    ended_pages = [s for s in searches if str(s["filter"]).startswith("attributes.end_time >")]
    # Ten holder runs (the hand-set one too) and six new runs, four per page.
    assert (len(holder_pages), len(ended_pages)) == (3, 2)
    assert all(int(str(s["max_results"])) <= 4 for s in searches if s in holder_pages + ended_pages)
    assert {i: podium_tags(client, i) for i in ids} == boards
    for i in ids:
        state = ExperimentState.from_tag(client.get_experiment(i).tags[STATE_TAG])
        assert state is not None
        assert state.ranked_runs == 6


def test_a_pass_re_ranks_at_most_max_rankings_per_pass_the_latest_news_first(
    mlflow_server: ServerHandle, counting_proxy: Callable[[str], Proxy]
) -> None:
    """A night of sweeps touched every experiment of a universe: a pass that re-ranked them
    all read every board, holder and tag before its first write (over 1,000 experiments, ten
    minutes of 503 from /healthz and a process of 850 MB). Five experiments with a new leader
    each, two rankings per pass: the two whose new runs ended last go first, the others wait
    with nothing written and say so. A hand-set rank in an experiment ranked already waits
    behind the news (its runs that ended last are no news), and the passes that follow finish
    the work."""
    client = MlflowClient(mlflow_server.url)
    prefix = f"night_{uuid4().hex[:6]}"
    ids = [client.create_experiment(f"{prefix}_{i}") for i in range(5)]
    poor = {i: make_runs(client, i, [0.1, 0.2, 0.3, 0.4])[0].run_id for i in ids}
    proxy = counting_proxy(mlflow_server.url)
    now = [time.time()]
    watcher = watcher_at(proxy.url, f"{prefix}_*", now, max_rankings_per_pass=5, holder_check_seconds=0)
    assert watcher.run_pass().ok
    watcher.settings = watcher.settings.model_copy(update={"max_rankings_per_pass": 2})
    before = {i: (podium_tags(client, i), client.get_experiment(i).tags[STATE_TAG]) for i in ids}
    leaders = {i: make_runs(client, i, [0.9])[0].run_id for i in ids}  # the last experiment's ends last

    first = watcher.run_pass()
    assert (first.ok, first.rankings_deferred) == (True, 3)
    assert {o.experiment_id for o in first.outcomes if o.action == "rerank"} == set(ids[3:])
    assert [(o.action, o.reason) for o in first.outcomes if o.experiment_id in ids[:3]] == [
        ("pending", "deferred")
    ] * 3
    for i in ids[:3]:
        assert (podium_tags(client, i), client.get_experiment(i).tags[STATE_TAG]) == before[i]
    assert all(podium_tags(client, i)[leaders[i]]["model_rank"] == "1" for i in ids[3:])

    client.set_tag(poor[ids[4]], "model_rank", "1")
    second = watcher.run_pass()
    assert second.rankings_deferred == 2
    assert {o.experiment_id for o in second.outcomes if o.action == "rerank"} == set(ids[1:3])
    third = watcher.run_pass()
    assert third.rankings_deferred == 0
    assert {(o.experiment_id, o.reason) for o in third.outcomes if o.action == "rerank"} == {
        (ids[0], "news"),
        (ids[4], "holders"),
    }
    assert all(podium_tags(client, i)[leaders[i]]["model_rank"] == "1" for i in ids)
    assert "model_rank" not in podium_tags(client, ids[4]).get(poor[ids[4]], {})
    assert [o.action for o in watcher.run_pass().outcomes] == ["idle"] * 5


def test_holder_checks_that_cannot_keep_up_with_holder_check_seconds_say_so_once(
    sqlite_server: ServerHandle,
) -> None:
    """Six ranked experiments of three holders, two checked per pass. Passes a second apart
    finish the round well inside the 60 s: nothing to say. Passes 70 s apart (a round of
    three takes 140 s) leave an experiment waiting a whole interval past due: the daemon
    would run passes back to back for good, and one warning names the key to raise."""
    client = MlflowClient(sqlite_server.url)
    prefix = f"behind_{uuid4().hex[:6]}"
    for i in range(6):
        make_runs(client, client.create_experiment(f"{prefix}_{i}"), [0.1, 0.2, 0.3, 0.4])
    now = [time.time()]
    watcher = watcher_at(sqlite_server.url, f"{prefix}_*", now, holder_check_seconds=60)
    watcher.holder_check_runs = 7
    assert watcher.run_pass().ok

    def passes(gaps: list[float]) -> tuple[list[int], list[dict[str, object]]]:
        deferred = []
        with capture_logs() as logs:
            for gap in gaps:
                now[0] += gap
                result = watcher.run_pass()
                assert result.ok
                deferred.append(result.holder_checks_deferred)
        return deferred, [e for e in logs if e["event"] == "holder_checks_behind"]

    assert passes([60, 1, 1]) == ([4, 2, 0], [])
    deferred, said = passes([60, 70, 70, 70])
    assert deferred[1:] == [4, 4, 4]
    assert len(said) == 1
    assert (said[0]["log_level"], said[0]["holder_check_seconds"]) == ("warning", 60)
    assert int(str(said[0]["longest_unchecked_seconds"])) > 120


def test_a_pass_that_reads_long_before_its_first_write_keeps_healthz_ok_until_it_fails(
    sqlite_server: ServerHandle, counting_proxy: Callable[[str], Proxy]
) -> None:
    """A catch-up pass over a universe reads for minutes before its first write (the batch
    searches, then each board): /healthz turned 503 in the middle of such passes, every few
    minutes. Its answered reads are progress; a pass that then fails is none."""
    client = MlflowClient(sqlite_server.url)
    prefix = f"reads_{uuid4().hex[:6]}"
    ids = [client.create_experiment(f"{prefix}_{i}") for i in range(3)]
    for i in ids:
        make_runs(client, i, [0.1, 0.2, 0.3])
    proxy = counting_proxy(sqlite_server.url)
    now = [time.time()]
    watcher = watcher_at(proxy.url, f"{prefix}_*", now, poll_interval_seconds=60)
    assert watcher.run_pass().ok
    for i in ids:
        make_runs(client, i, [0.9])  # a new leader everywhere: each board is read again
    now[0] += 170
    proxy.writes_open.clear()  # the pass stops at its first write, its reads done
    results: list[PassResult] = []
    passing = threading.Thread(target=lambda: results.append(watcher.run_pass()))
    passing.start()
    deadline = time.monotonic() + 60
    while proxy.held == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    now[0] += 20  # 190 s after the last success, 20 s after the reads
    try:
        assert watcher.health.status(now[0]) == "ok"
        proxy.down = True  # the write fails: so does the pass
    finally:
        proxy.writes_open.set()
        passing.join(timeout=60)
        proxy.down = False
    assert results[0].ok is False
    assert watcher.health.status(now[0]) == "unhealthy"


def test_idle_passes_do_not_read_again_the_runs_of_experiments_ranked_at_other_times(
    mlflow_server: ServerHandle, counting_proxy: Callable[[str], Proxy]
) -> None:
    """Experiments re-ranked one after another carry different watermarks, and the batch
    search starts after the lowest: every idle pass read again each run that ended since the
    oldest one (over a universe of trainer runs, megabytes per pass). The daemon keeps how far
    it searched and decided: the idle pass after the re-ranks returns no run; without what it
    kept, the same pass returns the re-ranks' runs. News behind the oldest watermark still
    comes through."""
    client = MlflowClient(mlflow_server.url)
    prefix = f"floor_{uuid4().hex[:6]}"
    ids = [client.create_experiment(f"{prefix}_{i}") for i in range(3)]
    for i in ids:
        make_runs(client, i, [0.1, 0.2])
    proxy = counting_proxy(mlflow_server.url)
    now = [time.time()]
    watcher = watcher_at(proxy.url, f"{prefix}_*", now, holder_check_seconds=3600)
    assert watcher.run_pass().ok
    for i in ids[1:]:  # each re-ranked in a pass of its own: its watermark moves, the first's not
        make_runs(client, i, [0.5, 0.6])
        now[0] = time.time() + FLOOR_MARGIN_SECONDS  # the runs ended longer than the margin before
        assert {o.experiment_id for o in watcher.run_pass().outcomes if o.action == "rerank"} == {i}

    def ended_after_search() -> int:
        """The bytes of the idle pass's one run search (the ended-after search)."""
        proxy.reset()
        assert [o.action for o in watcher.run_pass().outcomes] == ["idle"] * 3
        runs = [n for path, n in proxy.answers if path.endswith("/runs/search")]
        assert len(runs) == 1
        assert [f for f in searched(proxy) if f.startswith("attributes.end_time >")]
        return runs[0]

    assert ended_after_search() < 100  # an empty answer
    kept = dict(watcher.memory.floors)
    watcher.memory = replace(watcher.memory, floors={})
    assert ended_after_search() > 1_000  # the re-ranks' four runs, all at or before their watermarks
    assert watcher.memory.floors == kept

    leader = make_runs(client, ids[0], [0.9])[0].run_id
    now[0] = time.time() + FLOOR_MARGIN_SECONDS
    proxy.reset()
    news = watcher.run_pass()
    assert [(o.experiment_id, o.action) for o in news.outcomes if o.action != "idle"] == [(ids[0], "rerank")]
    # The experiment read afresh starts from its floor too: one ended-after search, not a second
    # one from its older watermark.
    assert sum(f.startswith("attributes.end_time >") for f in searched(proxy)) == 1
    assert podium_tags(client, ids[0])[leader]["model_rank"] == "1"
    assert ended_after_search() < 100


def test_a_run_committed_after_a_later_run_of_another_experiment_is_still_triaged(
    mlflow_server: ServerHandle, receiver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's run fails and A's new leader finishes, their end times taken by a trainer whose
    clock is 30 s behind, and committed after the pass that read B's run: B's end time, and
    that pass's start, are no floor for A. The next passes announce the failure once and rank
    the leader (the daemon's own clock, a real one)."""
    monkeypatch.setenv("PODIUM_TEST_SECRET", SECRET)
    receiver.expect_request("/hook").respond_with_data("ok")
    receiver.start()
    client = MlflowClient(mlflow_server.url)
    prefix = f"late_{uuid4().hex[:6]}"
    a, b = (client.create_experiment(f"{prefix}_{i}") for i in "ab")
    for i, value in ((a, 0.1), (a, 0.2), (b, 0.1), (b, 0.2)):  # ended minutes ago: old watermarks
        run_id = make_run(client, i, f"old_{value}", {METRIC: value, "num_folds": 3.0}, status="RUNNING")
        client.set_terminated(run_id, "FINISHED", end_time=int(time.time() * 1000) - 300_000)
    config = rule(f"{prefix}_*") | {"notify": ["team"], "alerts": ["failed"]}
    hook = {
        "name": "team",
        "url": receiver.url_for("/hook"),
        "format": "json",
        "secret_env": "PODIUM_TEST_SECRET",
    }
    settings = WatcherSettings(
        tracking_uri=mlflow_server.url, rules=[config], http={"enabled": False}, webhooks=[hook]
    )
    delivery = build_handlers(settings, MlflowTracking(mlflow_server.url))
    offset = [-120.0]  # the first pass saw the experiments two minutes ago: a failure since is news
    watcher = Watcher(
        settings, MlflowTracking(mlflow_server.url), delivery.handlers, clock=lambda: time.time() + offset[0]
    )
    assert watcher.run_pass().ok
    offset[0] = 0.0
    failed, leader = (client.create_run(a).info.run_id for _ in range(2))
    client.log_metric(leader, METRIC, 0.95)
    ended = int(time.time() * 1000) - 30_000  # the trainer's clock, 30 s behind
    make_runs(client, b, [0.5])
    assert [o.action for o in watcher.run_pass().outcomes] == ["idle", "rerank"]
    client.set_terminated(failed, "FAILED", end_time=ended)
    client.set_terminated(leader, "FINISHED", end_time=ended)
    for _ in range(2):
        assert watcher.run_pass().ok
        delivery.worker.drain()
    alerts = [json.loads(r.get_data()) for r in requests_to(receiver, "/hook")]
    assert [e["run_id"] for e in alerts if str(e["event"]).startswith("run.")] == [failed]
    assert podium_tags(client, a)[leader]["model_rank"] == "1"
