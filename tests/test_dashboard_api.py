"""The training dashboard's JSON routes against real MLflow servers (sqlite and PostgreSQL): the
kept board, importance from each run's feature_importance.csv, retrain validation and jobs, the
page's own files, and the tracking calls the experiments and leaderboard routes make."""

from __future__ import annotations

import csv
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.entities import Param

from tests.support.mlflow_server import ServerHandle
from tests.support.watcher_runs import make_run
from watcher.api import bind_socket, create_app, run_in_thread
from watcher.dashboard.models import TABLE_HEADERS
from watcher.jobs import JobRunner
from watcher.mlflow_io import MlflowTracking
from watcher.service import Watcher
from watcher.settings import HttpConfig, RuleConfig, WatcherSettings

pytestmark = pytest.mark.server

TOKEN = "dash-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FEATURES = ("alpha", "beta", "gamma", "delta", "eps")
UI = "http://mlflow.example:5000"
# What GET /api/experiments answers for each experiment, at the least.
CONTRACT_FIELDS = (
    "experiment_id",
    "experiment_name",
    "rule",
    "metric",
    "ascending",
    "top_n",
    "ranked_runs",
    "unranked_runs",
    "leader",
    "ranked_at",
)


def importance_rows(i: int) -> list[dict[str, object]]:
    """Run i's importance: alpha always first, the rest rotate; std and SHAP derived."""
    values = {"alpha": 0.5 + i / 100, "beta": 0.01 * ((i % 3) + 1), "gamma": 0.02 * ((i + 1) % 3)}
    values.update({"delta": 0.0005, "eps": -0.0001})
    ordered = sorted(values.items(), key=lambda kv: -kv[1])
    return [
        {
            "rank": r,
            "feature": f,
            "importance_mean": v,
            "importance_std": abs(v) / 10,
            "shap_importance": abs(v) * 2,
        }
        for r, (f, v) in enumerate(ordered, start=1)
    ]


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@dataclass
class Setup:
    http: httpx.Client
    client: MlflowClient
    experiment_id: str
    name: str
    runs: list[str]  # run ids, best first
    rows: dict[str, list[dict[str, object]]]
    bare_run: str  # no feature_importance.csv
    idle_experiment_id: str  # watched, no runs, never ranked
    watcher: Watcher
    prefix: str  # the rule watches f"{prefix}_*"


@pytest.fixture(scope="module")
def setup(mlflow_server: ServerHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    client = MlflowClient(mlflow_server.url)
    prefix = f"dash_{uuid4().hex[:6]}"
    name = f"{prefix}_main"
    exp_id = client.create_experiment(name)
    tmp = tmp_path_factory.mktemp("dash-api")
    made: list[tuple[float, str]] = []
    rows: dict[str, list[dict[str, object]]] = {}
    for i in range(12):
        value = 0.3 + i / 50
        params_run = make_run(
            client, exp_id, f"trial_{i}", {"avg_test_r2": value, "avg_test_rmse": 1 - value}
        )
        params = {"max_depth": str(3 + i % 3), "n_estimators": "50", "total_features": "5"}
        client.log_batch(params_run, params=[Param(k, v) for k, v in params.items()])
        rows[params_run] = importance_rows(i)
        folder = tmp / params_run
        folder.mkdir()
        client.log_artifact(params_run, str(write_csv(folder / "feature_importance.csv", rows[params_run])))
        made.append((value, params_run))
    bare = make_run(client, exp_id, "no_importance", {"avg_test_r2": 0.01})
    idle_id = client.create_experiment(f"{prefix}_idle")
    rule = RuleConfig(
        name="dash", experiments=[f"{prefix}_*"], metric="avg_test_r2", top_n=5, trigger="run_finished"
    )
    settings = WatcherSettings(ui_base_url=UI, http=HttpConfig(token_env="X"), rules=[rule])
    watcher = Watcher(settings, MlflowTracking(mlflow_server.url))
    assert watcher.run_pass().ok
    app = create_app(watcher, token=TOKEN)
    api = run_in_thread(app, bind_socket("127.0.0.1", 0))
    http = httpx.Client(base_url=api.url, timeout=60)
    ordered = [run_id for _, run_id in sorted(made, reverse=True)]
    yield Setup(http, client, exp_id, name, ordered, rows, bare, idle_id, watcher, prefix)
    http.close()
    api.stop()


def listed(http: httpx.Client) -> dict[str, dict]:
    """Every experiment the table lists (no paging: the whole list, one page), by id."""
    r = http.get("/api/experiments")
    assert r.status_code == 200, r.text
    assert isinstance(r.json(), list)
    assert (r.headers["x-page"], r.headers["x-pages"]) == ("1", "1")
    assert int(r.headers["x-total-count"]) == int(r.headers["x-page-size"]) == len(r.json())
    return {e["experiment_id"]: e for e in r.json()}


def table_page(http: httpx.Client, **params: object) -> tuple[list[dict], dict[str, Any]]:
    """The experiments table's answer: the list, and its headers (JSON ones parsed)."""
    r = http.get("/api/experiments", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body, list)
    h = r.headers
    meta: dict[str, Any] = {
        "total": int(h["x-total-count"]),
        "page": int(h["x-page"]),
        "page_size": int(h["x-page-size"]),
        "pages": int(h["x-pages"]),
        "sort": h["x-podium-sort"],
        "order": h["x-podium-order"],
        "counts": json.loads(h["x-podium-counts"]),
        "rules": json.loads(h["x-podium-rules"]),
        "source": h["x-podium-source"],
    }
    exposed = {name.strip().casefold() for name in h["access-control-expose-headers"].split(",")}
    assert exposed == {name.casefold() for name in TABLE_HEADERS}
    return body, meta


def test_experiments_lists_each_watched_experiment_with_rule_metric_leader_and_counts(setup: Setup) -> None:
    by_id = listed(setup.http)
    main = by_id[setup.experiment_id]
    # The contract's fields (the view adds its own beside them).
    assert set(CONTRACT_FIELDS) <= set(main)
    assert set(main["leader"]) >= {"run_id", "run_name", "value"}
    assert main["experiment_name"] == setup.name
    assert (main["rule"], main["metric"], main["ascending"], main["top_n"]) == (
        "dash",
        "avg_test_r2",
        False,
        5,
    )
    assert main["ranked_runs"] == 13
    assert main["unranked_runs"] == 0
    assert main["leader"]["run_id"] == setup.runs[0]
    assert main["leader"]["run_name"] == "trial_11"
    assert main["leader"]["value"] == pytest.approx(0.3 + 11 / 50)
    assert main["leader"]["url"] == f"{UI}/#/experiments/{setup.experiment_id}/runs/{setup.runs[0]}"
    assert main["ranked_at"].endswith("Z")
    assert "metric_keys" not in main  # the Rank dialog asks GET .../metric-keys for them
    keys = setup.http.get(f"/api/experiments/{setup.experiment_id}/metric-keys").json()["metric_keys"]
    assert keys[:2] == ["avg_test_r2", "avg_test_rmse"]
    idle = by_id[setup.idle_experiment_id]
    assert idle["leader"] is None
    assert idle["ranked_runs"] == 0
    assert idle["metric"] == "avg_test_r2"


def test_the_experiments_table_searches_filters_pages_and_names_a_bad_parameter(setup: Setup) -> None:
    """Served from the daemon's kept listing: a name search narrows to one experiment, the
    state filter leaves the unranked one, counts follow the name and rule filters."""
    items, meta = table_page(setup.http, q=setup.name.upper(), rule="dash")
    assert [e["experiment_id"] for e in items] == [setup.experiment_id]
    assert (meta["total"], meta["pages"], meta["source"]) == (1, 1, "kept")
    assert meta["counts"] == {"all": 1, "ranked": 1, "not_ranked": 0, "gated": 0, "needs_attention": 0}
    assert "dash" in meta["rules"]
    waiting, _ = table_page(setup.http, q=setup.prefix, state="not_ranked")
    assert setup.idle_experiment_id in [e["experiment_id"] for e in waiting]
    assert all(e["leader"] is None and "not ranked yet" in e["attention"] for e in waiting)
    # Without page or page_size, every experiment that passes the filters, by name unless told.
    everything, meta = table_page(setup.http, q=setup.prefix)
    assert [e["experiment_id"] for e in everything] == [
        setup.idle_experiment_id,
        setup.experiment_id,
    ]  # _idle, _main
    assert (meta["total"], meta["page"], meta["pages"], meta["sort"], meta["order"]) == (
        2,
        1,
        1,
        "name",
        "asc",
    )
    backwards, meta = table_page(setup.http, q=setup.prefix, sort="name", order="desc")
    assert backwards == everything[::-1]
    assert meta["order"] == "desc"
    paged, meta = table_page(setup.http, q=setup.prefix, page_size=1, page=2)
    assert (len(paged), meta["page"], meta["page_size"], meta["pages"]) == (1, 2, 1, meta["total"])
    assert paged == everything[1:]
    first, meta = table_page(setup.http, q=setup.prefix, page=1)  # page alone: pages of 50
    assert (first, meta["page_size"], meta["pages"]) == (everything, 50, 1)
    for params, name in (
        ({"sort": "volume"}, "sort"),
        ({"order": "up"}, "order"),
        ({"state": "sleepy"}, "state"),
        ({"rule": "nope"}, "rule"),
        ({"page_size": -1}, "page_size"),
        ({"page_size": 501}, "page_size"),
        ({"q": setup.name, "page": 2}, "page"),  # past the end
    ):
        bad = setup.http.get("/api/experiments", params=params)
        assert bad.status_code == 400, (params, bad.text)
        assert bad.json()["detail"].startswith(f"{name}: "), bad.text
    assert setup.http.get("/api/experiments", params={"page": "two"}).status_code == 422


def test_a_rules_leaders_come_as_json_and_as_csv(setup: Setup) -> None:
    r = setup.http.get("/api/rules/dash/leaders")
    assert r.status_code == 200, r.text
    rows = {row["experiment_id"]: row for row in r.json()["rows"]}
    main = rows[setup.experiment_id]
    assert (main["leader_run_id"], main["leader_run_name"]) == (setup.runs[0], "trial_11")
    assert main["value"] == pytest.approx(0.3 + 11 / 50)
    assert (main["gate"], main["pbo"], main["oos_sharpe"]) == ("none", None, None)
    assert rows[setup.idle_experiment_id]["leader_run_id"] is None
    ranked = [row for row in r.json()["rows"] if row["value"] is not None]
    assert [row["value"] for row in ranked] == sorted((row["value"] for row in ranked), reverse=True)
    exported = setup.http.get("/api/rules/dash/leaders", params={"format": "csv"})
    assert exported.status_code == 200, exported.text
    assert exported.headers["content-type"].startswith("text/csv")
    assert "attachment" in exported.headers["content-disposition"]
    lines = list(csv.DictReader(exported.text.splitlines()))
    assert [line["experiment_id"] for line in lines] == [row["experiment_id"] for row in r.json()["rows"]]
    assert float(lines[0]["value"]) == r.json()["rows"][0]["value"]
    assert setup.http.get("/api/rules/nope/leaders").status_code == 404
    bad = setup.http.get("/api/rules/dash/leaders", params={"sort": "volume"})
    assert (bad.status_code, bad.json()["detail"][:6]) == (400, "sort: ")
    assert setup.http.get("/api/rules/dash/leaders", params={"format": "xml"}).status_code == 422


def test_leaderboard_is_the_kept_board_in_rank_order_with_candidates_links_and_params(setup: Setup) -> None:
    r = setup.http.get(f"/api/experiments/{setup.experiment_id}/leaderboard")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["experiment_name"], body["metric"], body["ascending"]) == (setup.name, "avg_test_r2", False)
    assert [m["run_id"] for m in body["models"]] == setup.runs[:5]
    assert [m["rank"] for m in body["models"]] == [1, 2, 3, 4, 5]
    assert [m["production_candidate"] for m in body["models"]] == [True, True, True, False, False]
    first = body["models"][0]
    assert first["run_name"] == "trial_11"
    assert first["url"] == f"{UI}/#/experiments/{setup.experiment_id}/runs/{setup.runs[0]}"
    assert first["params"] == {"n_estimators": "50", "max_depth": str(3 + 11 % 3)}
    tags = setup.client.get_run(setup.runs[0]).data.tags
    assert tags["model_rank"] == "1"  # the board is what MLflow's tags say


def test_leaderboard_after_ranking_by_another_metric_names_that_metric(setup: Setup, mlflow_server) -> None:
    """POST /models/rank by avg_test_rmse ascending: the board and its metric follow."""
    client = setup.client
    name = f"adhoc_{uuid4().hex[:8]}"
    exp_id = client.create_experiment(name)
    ids = [
        make_run(client, exp_id, f"t{i}", {"avg_test_rmse": v, "avg_test_r2": -v})
        for i, v in enumerate([0.3, 0.1, 0.2])
    ]
    r = setup.http.post(
        "/models/rank",
        params={"experiment_name": name, "metric": "avg_test_rmse", "top_n": 2, "ascending": True},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    body = setup.http.get(f"/api/experiments/{exp_id}/leaderboard").json()
    assert (body["metric"], body["ascending"], body["rule"]) == ("avg_test_rmse", True, "api")
    assert [m["run_id"] for m in body["models"]] == [ids[1], ids[2]]
    shown = listed(setup.http)
    assert shown[exp_id]["metric"] == "avg_test_rmse"
    assert shown[exp_id]["ascending"] is True


def wait_job(http: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = http.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("finished", "failed") or time.monotonic() > deadline:
            return job
        time.sleep(0.3)


def test_an_experiment_renamed_out_of_every_rule_is_no_longer_listed(setup: Setup) -> None:
    """Its old board (tags of a rule that no longer matches it) does not keep it on the page,
    from the daemon's next pass on (the table shows the daemon's kept listing)."""
    client = setup.client
    exp_id = client.create_experiment(f"{setup.prefix}_renamed")
    make_run(client, exp_id, "only", {"avg_test_r2": 0.5})
    assert setup.watcher.run_pass().ok
    assert listed(setup.http)[exp_id]["rule"] == "dash"
    client.rename_experiment(exp_id, f"elsewhere_{uuid4().hex[:6]}")
    assert setup.watcher.run_pass().ok
    shown = listed(setup.http)
    assert exp_id not in shown
    assert setup.experiment_id in shown


def test_metric_keys_are_the_union_over_the_board_and_the_newest_finished_runs(setup: Setup) -> None:
    """Keys only a board runner-up or only an unranked run has are offered, not just the leader's."""
    client = setup.client
    name = f"keys_{uuid4().hex[:8]}"
    exp_id = client.create_experiment(name)
    make_run(client, exp_id, "leader", {"avg_test_r2": 0.9})
    make_run(client, exp_id, "second", {"avg_test_r2": 0.5, "avg_test_mae": 0.2})
    make_run(client, exp_id, "unranked", {"val_loss": 0.7})
    r = setup.http.post("/models/rank", params={"experiment_name": name, "top_n": 2}, headers=AUTH)
    assert r.status_code == 200, r.text
    r = setup.http.get(f"/api/experiments/{exp_id}/metric-keys")
    assert r.status_code == 200, r.text
    assert r.json()["metric_keys"] == ["avg_test_mae", "avg_test_r2", "val_loss"]
    idle = setup.http.get(f"/api/experiments/{setup.idle_experiment_id}/metric-keys")
    assert idle.status_code == 200, idle.text
    assert idle.json()["metric_keys"] == []
    assert setup.http.get("/api/experiments/987654321/metric-keys").status_code == 404


@pytest.mark.parametrize(
    "bad_id",
    ["\u00b2", "99999999999999999999999", "\u0661\u0662", "\u0661", "a" * 5000, "1 ", "-1"],
    ids=["superscript", "over_int64", "arabic_digits", "arabic_one", "5000_chars", "space", "minus"],
)
def test_ids_mlflow_would_reject_answer_404_naming_the_id_before_any_tracking_call(
    setup: Setup, bad_id: str
) -> None:
    paths = [
        f"/api/experiments/{bad_id}/leaderboard",
        f"/api/experiments/{bad_id}/importance",
        f"/api/experiments/{bad_id}/metric-keys",
    ]
    if not bad_id.isdigit() or not bad_id.isascii():
        paths.append(f"/api/runs/{bad_id}/importance")
    for path in paths:
        r = setup.http.get(path)
        assert r.status_code == 404, (path[:80], r.status_code, r.text[:300])
        detail = r.json()["detail"]
        assert bad_id[:50] in detail
        assert len(detail) < 200
    r = setup.http.post("/api/retrain", json={"run_id": bad_id[:64], "exclude": ["alpha"]}, headers=AUTH)
    assert r.status_code == 404, r.text[:300]


def test_retrain_refuses_a_body_over_a_megabyte_and_never_echoes_a_long_name(setup: Setup) -> None:
    big = {"run_id": setup.runs[0], "exclude": ["x" * 2_000_000]}
    r = setup.http.post("/api/retrain", json=big, headers=AUTH)
    assert r.status_code == 413, r.text[:300]
    assert len(r.text) < 300
    long_name = "y" * 50_000
    r = setup.http.post("/api/retrain", json={"run_id": setup.runs[0], "exclude": [long_name]}, headers=AUTH)
    assert r.status_code == 400
    assert "y" * 90 in r.json()["detail"]
    assert len(r.text) < 400


def test_retrain_refuses_a_boolean_threshold(setup: Setup) -> None:
    r = setup.http.post("/api/retrain", json={"run_id": setup.runs[0], "drop_below": True}, headers=AUTH)
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith("drop_below: Input should be a valid number"), r.text


def test_a_negative_threshold_reaches_the_trainer_as_one_argument(setup: Setup) -> None:
    """-5e-05 is a value of --drop-below, not an option: the trainer reads the run (and says it
    is not a trainer trial) instead of dying on its command line."""
    r = setup.http.post("/api/retrain", json={"run_id": setup.runs[2], "drop_below": -5e-05}, headers=AUTH)
    assert r.status_code == 202, r.text
    job = wait_job(setup.http, r.json()["job_id"])
    assert job["status"] == "failed", job
    assert "not a trainer trial" in job["log_tail"], job["log_tail"]
    assert "expected one argument" not in job["log_tail"]


def test_posts_from_a_page_of_another_origin_are_refused_403(setup: Setup) -> None:
    """What a foreign page's fetch(..., {mode: "no-cors"}) sends is refused before the token or
    the body is looked at; the page's own origin and header-less clients (curl) still work."""
    name = f"csrf_{uuid4().hex[:8]}"
    make_run(setup.client, setup.client.create_experiment(name), "one", {"avg_test_r2": 0.5})
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
        for url in (f"/models/rank?experiment_name={name}", "/api/retrain"):
            r = setup.http.post(
                url, json={"run_id": setup.runs[0], "exclude": ["eps"]}, headers={**AUTH, **headers}
            )
            assert r.status_code == 403, (url, headers, r.text)
            assert "cross-origin" in r.json()["detail"]
    own = setup.http.base_url
    same = {"Origin": f"{own.scheme}://{own.host}:{own.port}", "Sec-Fetch-Site": "same-origin"}
    ranked = setup.http.post(
        "/models/rank", params={"experiment_name": name, "top_n": 5}, headers={**AUTH, **same}
    )
    assert ranked.status_code == 200, ranked.text
    bad = setup.http.post(
        "/api/retrain", json={"run_id": setup.runs[0], "exclude": []}, headers={**AUTH, **same}
    )
    assert bad.status_code == 400, bad.text  # reached the route
    plain = setup.http.post("/models/rank", params={"experiment_name": name, "top_n": 5}, headers=AUTH)
    assert plain.status_code == 200, plain.text


@pytest.mark.parametrize("which", ["unknown", "not_a_number", "never_ranked"])
def test_leaderboard_and_experiment_importance_404(setup: Setup, which: str) -> None:
    exp_id = {"unknown": "987654321", "not_a_number": "abc", "never_ranked": setup.idle_experiment_id}[which]
    for path in (f"/api/experiments/{exp_id}/leaderboard", f"/api/experiments/{exp_id}/importance"):
        r = setup.http.get(path)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["detail"]


def test_run_importance_is_the_runs_feature_importance_csv(setup: Setup) -> None:
    run_id = setup.runs[0]
    r = setup.http.get(f"/api/runs/{run_id}/importance")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["run_id"], body["run_name"], body["experiment_id"], body["total_features"]) == (
        run_id,
        "trial_11",
        setup.experiment_id,
        5,
    )
    expected = setup.rows[run_id]
    assert [f["feature"] for f in body["features"]] == [row["feature"] for row in expected]
    for got, want in zip(body["features"], expected, strict=True):
        assert got["rank"] == want["rank"]
        assert got["importance_mean"] == pytest.approx(want["importance_mean"])
        assert got["importance_std"] == pytest.approx(want["importance_std"])
        assert got["shap_importance"] == pytest.approx(want["shap_importance"])


def test_run_importance_404_for_an_unknown_run_or_one_without_the_csv(setup: Setup) -> None:
    for run_id in ("0" * 32, "not-hex!", setup.bare_run):
        r = setup.http.get(f"/api/runs/{run_id}/importance")
        assert r.status_code == 404, (run_id, r.text)
        assert r.json()["detail"]


def test_experiment_importance_is_mean_importance_and_mean_rank_over_the_top_n(setup: Setup) -> None:
    r = setup.http.get(f"/api/experiments/{setup.experiment_id}/importance", params={"top_n": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["top_n"] == 3
    assert body["runs"] == setup.runs[:3]
    want: dict[str, tuple[float, float]] = {}
    for feature in FEATURES:
        found = [row for run_id in setup.runs[:3] for row in setup.rows[run_id] if row["feature"] == feature]
        want[feature] = (
            sum(float(row["importance_mean"]) for row in found) / 3,  # type: ignore[arg-type]
            sum(int(row["rank"]) for row in found) / 3,  # type: ignore[call-overload]
        )
    assert [f["feature"] for f in body["features"]] == sorted(
        FEATURES, key=lambda f: (-want[f][0], want[f][1])
    )
    for f in body["features"]:
        assert f["mean_importance"] == pytest.approx(want[f["feature"]][0])
        assert f["mean_rank"] == pytest.approx(want[f["feature"]][1])
        assert f["runs"] == 3
    for bad in (0, 201, "x"):
        assert (
            setup.http.get(
                f"/api/experiments/{setup.experiment_id}/importance", params={"top_n": bad}
            ).status_code
            == 422
        )


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"run_id": "0" * 32, "exclude": ["alpha"]}, 404, "no run"),
        ({"run_id": "RUN", "exclude": ["nope"]}, 400, "'nope'"),
        ({"run_id": "RUN", "exclude": list(FEATURES)}, 400, "nothing to train on"),
        ({"run_id": "RUN", "exclude": []}, 400, "at least one"),
        ({"run_id": "RUN", "exclude": ["alpha"], "drop_below": 0.1}, 400, "exactly one"),
        ({"run_id": "RUN"}, 400, "exactly one"),
        ({"run_id": "RUN", "drop_below": -1.0}, 400, "no feature"),
        ({"run_id": "RUN", "drop_below": 10.0}, 400, "nothing left"),
        ({"run_id": "RUN", "exclude": "alpha"}, 400, "exclude"),
        ({"run_id": "RUN", "exclude": ["alpha"], "extra": 1}, 400, "extra"),
        ({"run_id": "BARE", "exclude": ["alpha"]}, 400, "feature_importance.csv"),
    ],
)
def test_retrain_refuses_bad_requests_before_any_job(
    setup: Setup, body: dict, status: int, needle: str
) -> None:
    body = {
        **body,
        "run_id": {"RUN": setup.runs[0], "BARE": setup.bare_run}.get(body["run_id"], body["run_id"]),
    }
    before = len(setup.http.get("/api/jobs").json())
    r = setup.http.post("/api/retrain", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]
    assert len(setup.http.get("/api/jobs").json()) == before


def test_retrain_needs_the_token_and_a_json_body(setup: Setup) -> None:
    """401 without the token; 400 for a body that is not JSON; 415 unless declared as JSON."""
    r = setup.http.post("/api/retrain", json={"run_id": setup.runs[0], "exclude": ["eps"]})
    assert r.status_code == 401
    r = setup.http.post(
        "/api/retrain", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["detail"]
    # what a page of another site could send without a CORS preflight is refused
    body = b'{"run_id": "%s", "exclude": ["eps"]}' % setup.runs[0].encode()
    r = setup.http.post("/api/retrain", content=body, headers={**AUTH, "Content-Type": "text/plain"})
    assert r.status_code == 415


def test_a_job_whose_trainer_fails_ends_failed_with_its_log_tail(setup: Setup) -> None:
    """These runs are not trainer trials: the child exits 2 and the job keeps what it said."""
    r = setup.http.post(
        "/api/retrain", json={"run_id": setup.runs[1], "exclude": ["eps", "delta"]}, headers=AUTH
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    deadline = time.monotonic() + 120
    while True:
        job = setup.http.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("finished", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert job["status"] == "failed", job
    assert job["exit_code"] == 2
    assert "not a trainer trial" in job["log_tail"]
    assert job["run_id"] == setup.runs[1]
    assert job["new_run_id"] is None
    assert job["started_at"]
    assert job["ended_at"]
    assert job_id in [j["job_id"] for j in setup.http.get("/api/jobs").json()]
    assert setup.http.get("/api/jobs/nosuchjob").status_code == 404


def test_a_full_queue_answers_429(setup: Setup) -> None:
    jobs = JobRunner(setup.watcher.tracking.tracking_uri, max_queued=1)  # not started: jobs stay queued
    app = create_app(setup.watcher, token=TOKEN, jobs=jobs)
    api = run_in_thread(app, bind_socket("127.0.0.1", 0))
    try:
        with httpx.Client(base_url=api.url, timeout=60) as http:
            body = {"run_id": setup.runs[0], "exclude": ["eps"]}
            first = http.post("/api/retrain", json=body, headers=AUTH)
            assert first.status_code == 202, first.text
            assert first.json()["status"] == "queued"
            second = http.post("/api/retrain", json=body, headers=AUTH)
            assert second.status_code == 429, second.text
            assert "waiting" in second.json()["detail"]
    finally:
        api.stop()
    assert jobs.get(first.json()["job_id"]).status == "failed"  # stopping fails what never started


def test_the_page_and_its_files_come_from_the_package_with_a_strict_csp(setup: Setup) -> None:
    page = setup.http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "🏆 Rank Top Models" in page.text
    assert "🔄 Retrain Existing Model" in page.text
    assert "http" not in page.text.split("<body>")[0].replace("http-equiv", "")  # no outside asset in <head>
    for name, kind in (("app.js", "javascript"), ("app.css", "css")):
        r = setup.http.get(f"/static/{name}")
        assert r.status_code == 200
        assert kind in r.headers["content-type"]
    assert setup.http.get("/static/index.html").status_code == 404
    assert setup.http.get("/static/..%2Fapi.py").status_code == 404
    # every link and asset of the page is its own (the API docs page loads a CDN's swagger)
    refs = re.findall(r'(?:href|src)="([^"]*)"', page.text)
    assert refs, page.text[:300]
    assert [ref for ref in refs if not ref.startswith(("/static/", "#", "data:"))] == []


def test_experiments_and_leaderboard_stay_within_3_tracking_calls_on_a_large_experiment(
    sqlite_server: ServerHandle, counting_proxy
) -> None:
    """150 runs (a board keeps 20): both routes read the kept board, never the runs."""
    client = MlflowClient(sqlite_server.url)
    name = f"dashbig_{uuid4().hex[:6]}"
    exp_id = client.create_experiment(name)
    for i in range(150):
        make_run(client, exp_id, f"trial_{i}", {"avg_test_r2": (i * 37 % 150) / 150})
    proxy = counting_proxy(sqlite_server.url)
    rule = RuleConfig(name="big", experiments=[name], metric="avg_test_r2", top_n=10, trigger="run_finished")
    watcher = Watcher(WatcherSettings(rules=[rule]), MlflowTracking(proxy.url))
    assert watcher.run_pass().ok
    api = run_in_thread(create_app(watcher), bind_socket("127.0.0.1", 0))
    try:
        with httpx.Client(base_url=api.url, timeout=60) as http:
            proxy.reset()
            first = http.get("/api/experiments")
            assert first.status_code == 200
            calls_list = len(proxy.tracking_calls())
            # From the kept listing, the on-demand boards and the leader's name read once: none.
            proxy.reset()
            again = http.get("/api/experiments")
            calls_again = len(proxy.tracking_calls())
            proxy.reset()
            board = http.get(f"/api/experiments/{exp_id}/leaderboard")
            assert board.status_code == 200
            calls_board = len(proxy.tracking_calls())
            proxy.reset()
            keys = http.get(f"/api/experiments/{exp_id}/metric-keys")
            assert keys.status_code == 200
            calls_keys = len(proxy.tracking_calls())
    finally:
        api.stop()
    assert [m["value"] for m in board.json()["models"]] == sorted(
        ((i * 37 % 150) / 150 for i in range(150)), reverse=True
    )[:10]
    assert calls_list <= 2, proxy.requests
    assert calls_again == 0, proxy.requests
    assert again.headers["x-podium-source"] == "kept"
    assert again.json() == first.json()
    assert exp_id in [e["experiment_id"] for e in again.json()]
    assert calls_board <= 3, proxy.requests
    assert calls_keys <= 3, proxy.requests
    assert keys.json()["metric_keys"] == ["avg_test_r2"]
