"""The training dashboard's JSON routes against real MLflow servers (sqlite and PostgreSQL): the
kept board, importance from each run's feature_importance.csv, retrain validation and jobs, the
page's own files, and the tracking calls the experiments and leaderboard routes make."""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.entities import Param

from tests.support.mlflow_server import ServerHandle
from tests.support.watcher_runs import make_run
from watcher.api import bind_socket, create_app, run_in_thread
from watcher.jobs import JobRunner
from watcher.mlflow_io import MlflowTracking
from watcher.service import Watcher
from watcher.settings import HttpConfig, RuleConfig, WatcherSettings

pytestmark = pytest.mark.server

TOKEN = "dash-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FEATURES = ("alpha", "beta", "gamma", "delta", "eps")
UI = "http://mlflow.example:5000"


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
    yield Setup(http, client, exp_id, name, ordered, rows, bare, idle_id, watcher)
    http.close()
    api.stop()


def test_experiments_lists_each_watched_experiment_with_rule_metric_leader_and_counts(setup: Setup) -> None:
    r = setup.http.get("/api/experiments")
    assert r.status_code == 200, r.text
    by_id = {e["experiment_id"]: e for e in r.json()}
    main = by_id[setup.experiment_id]
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
    assert main["metric_keys"][:2] == ["avg_test_r2", "avg_test_rmse"]
    idle = by_id[setup.idle_experiment_id]
    assert idle["leader"] is None
    assert idle["ranked_runs"] == 0
    assert idle["metric"] == "avg_test_r2"


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
    listed = {e["experiment_id"]: e for e in setup.http.get("/api/experiments").json()}
    assert listed[exp_id]["metric"] == "avg_test_rmse"
    assert listed[exp_id]["ascending"] is True


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
            listed = http.get("/api/experiments")
            assert listed.status_code == 200
            calls_list = len(proxy.tracking_calls())
            proxy.reset()
            board = http.get(f"/api/experiments/{exp_id}/leaderboard")
            assert board.status_code == 200
            calls_board = len(proxy.tracking_calls())
    finally:
        api.stop()
    assert [m["value"] for m in board.json()["models"]] == sorted(
        ((i * 37 % 150) / 150 for i in range(150)), reverse=True
    )[:10]
    assert calls_list <= 3, proxy.requests
    assert calls_board <= 3, proxy.requests
