"""The watcher's HTTP API against real MLflow servers: the guide's `POST /models/rank`, health,
metrics, the bearer token and the bind check of the daemon's uvicorn thread."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator, Sequence
from uuid import uuid4

import httpx
import pytest
from fastapi import FastAPI
from mlflow import MlflowClient
from mlflow.entities import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.support.mlflow_server import ServerHandle, free_port
from tests.support.proxy import Proxy
from watcher.api import bind_socket, create_app, run_in_thread, serve_in_thread
from watcher.errors import ConfigError
from watcher.mlflow_io import MlflowTracking
from watcher.service import Watcher
from watcher.settings import HttpConfig, RuleConfig, WatcherSettings

pytestmark = pytest.mark.server

GUIDE_KEYS = {"experiment_name", "metric", "top_n", "total_ranked", "models", "summary"}
GUIDE_MODEL_KEYS = {"rank", "run_id", "metric", "value", "run_name"}
GUIDE_SUMMARY_KEYS = {"best_value", "worst_value", "best_run_id"}


def make_runs(
    client: MlflowClient, experiment: str, values: Sequence[float | None], metric: str = "avg_test_r2"
) -> list[str]:
    """FINISHED runs `trial_0..` with `metric` = value (None: the run lacks the metric)."""
    exp_id = client.create_experiment(experiment)
    run_ids = []
    for i, value in enumerate(values):
        run = client.create_run(exp_id, run_name=f"trial_{i}")
        run_id = run.info.run_id
        metrics = [Metric("num_folds", 3.0, 0, 0)]
        if value is not None:
            metrics.append(Metric(metric, value, 0, 0))
        client.log_batch(run_id, metrics=metrics)
        client.set_terminated(run_id, end_time=1_700_000_000_000 + i)
        run_ids.append(run_id)
    return run_ids


def new_name() -> str:
    return f"exp_api_{uuid4().hex[:8]}"


class Clock:
    """A clock the test moves by hand (passes and the API read the same one)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def settings_for(pattern: str = "exp_api_*", poll: float = 60.0, **http: object) -> WatcherSettings:
    rule = RuleConfig(name="api", experiments=[pattern], metric="avg_test_r2", top_n=3)
    return WatcherSettings(poll_interval_seconds=poll, http=HttpConfig(**http), rules=[rule])  # type: ignore[arg-type]


Serve = Callable[[FastAPI], httpx.Client]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Factory: serve an app with real uvicorn on a free loopback port; an httpx client on it."""
    started: list[tuple[object, httpx.Client]] = []

    def start(app: FastAPI) -> httpx.Client:
        api = run_in_thread(app, bind_socket("127.0.0.1", 0))
        client = httpx.Client(base_url=api.url, timeout=60)
        started.append((api, client))
        return client

    yield start
    for api, client in started:
        client.close()
        api.stop()  # type: ignore[attr-defined]


@pytest.fixture
def api(mlflow_server: ServerHandle, serve: Serve) -> tuple[httpx.Client, MlflowClient]:
    watcher = Watcher(settings_for(pattern="nothing_matches_*"), MlflowTracking(mlflow_server.url))
    return serve(create_app(watcher)), MlflowClient(mlflow_server.url)


def test_rank_answers_the_guides_json_and_tags_the_runs_in_mlflow(api):
    """POST /models/rank ranks by the metric, answers exactly the guide's JSON, and the runs carry
    model_rank, top_10 and (first three) production_candidate in MLflow afterwards."""
    http, client = api
    name = new_name()
    values = [0.5 + i / 100 for i in range(12)]  # trial_11 is best
    run_ids = make_runs(client, name, values)

    r = http.post(
        "/models/rank",
        params={"experiment_name": name, "metric": "avg_test_r2", "top_n": 10, "ascending": "false"},
    )

    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == GUIDE_KEYS
    assert (body["experiment_name"], body["metric"], body["top_n"], body["total_ranked"]) == (
        name,
        "avg_test_r2",
        10,
        10,
    )
    expected = list(reversed(run_ids))[:10]
    assert [m["run_id"] for m in body["models"]] == expected
    for rank, model in enumerate(body["models"], start=1):
        assert set(model) == GUIDE_MODEL_KEYS
        assert model["rank"] == rank
        assert model["metric"] == "avg_test_r2"
        assert model["run_name"] == f"trial_{12 - rank}"
        assert model["value"] == pytest.approx(values[12 - rank])
    assert set(body["summary"]) == GUIDE_SUMMARY_KEYS
    assert body["summary"] == {
        "best_value": pytest.approx(values[11]),
        "worst_value": pytest.approx(values[2]),
        "best_run_id": run_ids[11],
    }

    for rank, run_id in enumerate(expected, start=1):
        tags = client.get_run(run_id).data.tags
        assert tags["model_rank"] == str(rank)
        assert tags["top_10"] == "true"
        assert (tags.get("production_candidate") == "true") == (rank <= 3)
    for run_id in run_ids[:2]:
        tags = client.get_run(run_id).data.tags
        assert not {"model_rank", "top_10", "production_candidate"} & set(tags)


def test_rank_ascending_puts_the_lowest_value_first(api):
    """ascending=true: lower is better (e.g. RMSE), as in the guide's metric table."""
    http, client = api
    name = new_name()
    run_ids = make_runs(client, name, [0.3, 0.1, 0.2], metric="avg_test_rmse")

    r = http.post(
        "/models/rank",
        params={"experiment_name": name, "metric": "avg_test_rmse", "top_n": 2, "ascending": True},
    )

    assert r.status_code == 200, r.text
    body = r.json()
    assert [m["run_id"] for m in body["models"]] == [run_ids[1], run_ids[2]]
    assert body["summary"]["best_value"] == pytest.approx(0.1)
    assert body["summary"]["worst_value"] == pytest.approx(0.2)
    assert client.get_run(run_ids[1]).data.tags["top_2"] == "true"


def test_rank_unknown_experiment_or_no_run_with_the_metric_is_404(api):
    """404 for an experiment that does not exist and for one where no run has the metric."""
    http, client = api
    r = http.post("/models/rank", params={"experiment_name": new_name()})
    assert r.status_code == 404
    assert r.json()["detail"]

    name = new_name()
    make_runs(client, name, [None, None])
    r = http.post("/models/rank", params={"experiment_name": name, "metric": "avg_test_r2"})
    assert r.status_code == 404
    assert r.json()["detail"]


def test_a_rule_watching_the_experiment_restores_its_ranking_at_the_next_pass(sqlite_server, serve):
    """Ranking on request by another metric and direction retags the experiment; the next pass
    of the rule that watches it puts the rule's ranking back, stale top_2 tags included."""
    client = MlflowClient(sqlite_server.url)
    name = new_name()
    exp_id = client.create_experiment(name)
    run_ids = []
    for i, (r2, rmse) in enumerate([(0.9, 0.5), (0.5, 0.1), (0.7, 0.3), (0.1, 0.2)]):
        run = client.create_run(exp_id, run_name=f"trial_{i}")
        client.log_batch(
            run.info.run_id,
            metrics=[
                Metric("avg_test_r2", r2, 0, 0),
                Metric("avg_test_rmse", rmse, 0, 0),
                Metric("num_folds", 3, 0, 0),
            ],
        )
        client.set_terminated(run.info.run_id)
        run_ids.append(run.info.run_id)
    watcher = Watcher(settings_for(pattern=name), MlflowTracking(sqlite_server.url))  # avg_test_r2, top 3
    http = serve(create_app(watcher))

    r = http.post(
        "/models/rank",
        params={"experiment_name": name, "metric": "avg_test_rmse", "top_n": 2, "ascending": True},
    )
    assert r.status_code == 200, r.text
    assert client.get_run(run_ids[1]).data.tags["model_rank"] == "1"

    assert watcher.run_pass().ok
    by_rule = [run_ids[0], run_ids[2], run_ids[1]]
    for rank, run_id in enumerate(by_rule, start=1):
        tags = client.get_run(run_id).data.tags
        assert (tags["model_rank"], tags["top_3"]) == (str(rank), "true")
    for run_id in run_ids:
        assert "top_2" not in client.get_run(run_id).data.tags
    assert "model_rank" not in client.get_run(run_ids[3]).data.tags


@pytest.mark.parametrize(
    "params",
    [
        {"experiment_name": "x", "top_n": 0},
        {"experiment_name": "x", "top_n": -3},
        {"experiment_name": "x", "top_n": "ten"},
        {"experiment_name": "x", "top_n": 100_000},
        {"experiment_name": "x", "top_n": 201},  # above the kept board's 200 runs
        {"experiment_name": "x", "ascending": "sideways"},
        {"experiment_name": ""},
        {"metric": "avg_test_r2"},
    ],
    ids=[
        "top_n_zero",
        "top_n_negative",
        "top_n_text",
        "top_n_huge",
        "top_n_above_board",
        "ascending_text",
        "empty_name",
        "no_name",
    ],
)
def test_rank_bad_parameters_are_422(sqlite_server, serve, params):
    """Bad query parameters are refused with 422 before anything touches MLflow."""
    tracking = MlflowTracking(sqlite_server.url)
    http = serve(create_app(Watcher(settings_for(), tracking)))
    r = http.post("/models/rank", params=params)
    assert r.status_code == 422
    assert tracking.calls == 0


def test_bearer_token_is_required_on_post_only(sqlite_server, serve):
    """With a token, POST needs `Authorization: Bearer <token>` (401 otherwise); GETs stay open
    for probes and scrapers."""
    client = MlflowClient(sqlite_server.url)
    name = new_name()
    run_ids = make_runs(client, name, [0.1, 0.2])
    watcher = Watcher(settings_for(), MlflowTracking(sqlite_server.url))
    http = serve(create_app(watcher, token="s3cret-token"))
    params = {"experiment_name": name, "top_n": 2}
    missing = http.post("/models/rank", params=params)
    wrong = http.post("/models/rank", params=params, headers={"Authorization": "Bearer nope"})
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert missing.headers["www-authenticate"] == "Bearer"
    assert "model_rank" not in client.get_run(run_ids[1]).data.tags  # refused: nothing tagged

    ok = http.post("/models/rank", params=params, headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200, ok.text
    assert http.get("/metrics").status_code == 200
    health = http.get("/healthz")  # open; the watcher just started, no pass has run yet
    assert (health.status_code, health.json()["status"]) == (200, "starting")


def test_docs_serve_the_openapi_page_with_all_routes(sqlite_server, serve):
    """/docs is the OpenAPI page; the schema lists the three routes with the guide's parameters,
    and the dashboard's experiments route as a typed list with its headers."""
    watcher = Watcher(settings_for(), MlflowTracking(sqlite_server.url))
    http = serve(create_app(watcher))
    assert http.get("/docs").status_code == 200
    schema = http.get("/openapi.json").json()
    assert {"/healthz", "/metrics", "/models/rank"} <= set(schema["paths"])
    params = {p["name"]: p for p in schema["paths"]["/models/rank"]["post"]["parameters"]}
    assert set(params) == {"experiment_name", "metric", "top_n", "ascending"}
    assert params["experiment_name"]["required"] is True
    assert params["metric"]["schema"]["default"] == "avg_test_r2"
    assert params["top_n"]["schema"]["default"] == 10
    assert params["ascending"]["schema"]["default"] is False
    # The dashboard's experiments route answers a typed list; its paging and counts are headers.
    listing = schema["paths"]["/api/experiments"]["get"]
    ok = listing["responses"]["200"]
    assert ok["content"]["application/json"]["schema"]["type"] == "array"
    item = ok["content"]["application/json"]["schema"]["items"]["$ref"].rsplit("/", 1)[-1]
    fields = schema["components"]["schemas"][item]["properties"]
    assert {"experiment_id", "experiment_name", "rule", "metric", "leader", "ranked_at"} <= set(fields)
    assert {"X-Total-Count", "X-Page", "X-Pages", "X-Podium-Counts"} <= set(ok["headers"])
    paging = {p["name"]: p for p in listing["parameters"] if p["name"] in ("page", "page_size")}
    assert [p["required"] for p in paging.values()] == [False, False]
    assert "default" not in paging["page_size"]["schema"]  # no paging unless asked


# ---- health and metrics across passes, with a tracking server that goes away ---------------------


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_healthz_says_starting_then_turns_503_while_the_server_is_down_and_200_when_it_is_back(
    sqlite_server: ServerHandle, serve: Serve, counting_proxy: Callable[[str], Proxy]
):
    """A watcher just started answers 200 "starting" before any pass, and 503 once three poll
    intervals went by without a successful pass. A pass succeeds (200 "ok"); the tracking
    server goes down (its proxy answers 503) and three intervals pass with failing passes (503,
    last pass not ok; POST /models/rank answers 503 too); it comes back and the next pass brings
    /healthz back to 200. /metrics counts the ok and failed passes, tracking calls and tag
    writes."""
    proxy = counting_proxy(sqlite_server.url)
    name = new_name()
    make_runs(MlflowClient(sqlite_server.url), name, [0.1, 0.2, 0.3])
    clock = Clock()
    watcher = Watcher(settings_for(pattern=name, poll=10.0), MlflowTracking(proxy.url), clock=clock)
    http = serve(create_app(watcher, clock=clock))
    starting = http.get("/healthz")
    assert starting.status_code == 200, starting.text
    assert starting.json()["status"] == "starting"
    assert starting.json()["last_pass_at"] is None
    # One time format everywhere the watcher shows one: ISO-8601 UTC to the second.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", starting.json()["started_at"])
    clock.now += 30.0
    assert http.get("/healthz").json()["status"] == "starting"  # three intervals are allowed
    clock.now += 1.0
    stuck = http.get("/healthz")
    assert (stuck.status_code, stuck.json()["status"]) == (503, "unhealthy")
    assert stuck.json()["started_at"] == starting.json()["started_at"]
    before = _samples(http.get("/metrics").text)

    assert watcher.run_pass().ok
    up = http.get("/healthz")
    assert up.status_code == 200, up.text
    assert up.json()["status"] == "ok"
    assert up.json()["last_pass_ok"] is True

    proxy.down = True
    for _ in range(4):
        clock.now += 10.0
        assert not watcher.run_pass().ok
    down = http.get("/healthz")
    assert down.status_code == 503
    refused = http.post("/models/rank", params={"experiment_name": "anything"})
    assert refused.status_code == 503  # the tracking server is down: retry later
    assert proxy.url.rsplit(":", 1)[-1] not in refused.json()["detail"]  # details stay in the log
    assert down.json()["status"] == "unhealthy"
    assert down.json()["last_pass_ok"] is False
    assert down.json()["last_success_at"] == up.json()["last_success_at"]

    proxy.down = False
    clock.now += 10.0
    assert watcher.run_pass().ok
    assert http.get("/healthz").status_code == 200

    after = _samples(http.get("/metrics").text)
    ok = ("podium_watcher_passes_total", (("outcome", "ok"),))
    failed = ("podium_watcher_passes_total", (("outcome", "failed"),))
    assert after[ok] - before.get(ok, 0.0) == 2
    assert after[failed] - before.get(failed, 0.0) == 4
    assert (
        after[("podium_watcher_pass_duration_seconds_count", ())]
        - before.get(("podium_watcher_pass_duration_seconds_count", ()), 0.0)
        == 6
    )
    assert after[("podium_watcher_last_success_timestamp_seconds", ())] == watcher.health.last_success_at
    calls = sum(v for (n, _), v in after.items() if n == "podium_watcher_tracking_calls_total")
    calls_before = sum(v for (n, _), v in before.items() if n == "podium_watcher_tracking_calls_total")
    assert calls > calls_before
    writes = ("podium_watcher_tag_writes_total", ())
    assert after[writes] - before.get(writes, 0.0) >= 3


# ---- the daemon's uvicorn thread ---------------------------------------------------------------


def test_served_in_a_thread_answers_over_real_http_and_stops(sqlite_server):
    """serve_in_thread binds the configured host/port, answers real HTTP requests, and stop()
    ends the thread and frees the port."""
    http_cfg = HttpConfig(host="127.0.0.1", port=free_port())
    watcher = Watcher(settings_for(), MlflowTracking(sqlite_server.url))
    api = serve_in_thread(watcher, http_cfg)
    try:
        assert api.url == f"http://127.0.0.1:{http_cfg.port}"
        assert httpx.get(f"{api.url}/metrics").status_code == 200
        r = httpx.post(f"{api.url}/models/rank", params={"experiment_name": new_name()})
        assert r.status_code == 404
    finally:
        api.stop()
    assert not api.thread.is_alive()
    with socket.socket() as s:
        s.bind(("127.0.0.1", http_cfg.port))  # the port is free again


def test_token_env_makes_the_served_api_require_the_token(sqlite_server, monkeypatch):
    """http.token_env names the variable holding the token; the served POST route needs it."""
    monkeypatch.setenv("PODIUM_TEST_API_TOKEN", "tok-123")
    http_cfg = HttpConfig(port=free_port(), token_env="PODIUM_TEST_API_TOKEN")
    api = serve_in_thread(Watcher(settings_for(), MlflowTracking(sqlite_server.url)), http_cfg)
    try:
        params = {"experiment_name": new_name()}
        assert httpx.post(f"{api.url}/models/rank", params=params).status_code == 401
        authed = httpx.post(
            f"{api.url}/models/rank", params=params, headers={"Authorization": "Bearer tok-123"}
        )
        assert authed.status_code == 404
    finally:
        api.stop()


def test_token_env_naming_an_unset_variable_is_a_config_error(sqlite_server, monkeypatch):
    """A token_env whose variable is unset stops the daemon with a message naming it."""
    monkeypatch.delenv("PODIUM_TEST_UNSET_TOKEN", raising=False)
    http_cfg = HttpConfig(port=free_port(), token_env="PODIUM_TEST_UNSET_TOKEN")
    with pytest.raises(ConfigError, match="PODIUM_TEST_UNSET_TOKEN"):
        serve_in_thread(Watcher(settings_for(), MlflowTracking(sqlite_server.url)), http_cfg)


def test_non_loopback_bind_without_token_is_refused_unless_allowed(sqlite_server):
    """0.0.0.0 without a token is refused (ConfigError naming http.allow_insecure_bind); with
    allow_insecure_bind: true it is served."""
    watcher = Watcher(settings_for(), MlflowTracking(sqlite_server.url))
    port = free_port()
    with pytest.raises(ConfigError, match="allow_insecure_bind"):
        serve_in_thread(watcher, HttpConfig(host="0.0.0.0", port=port))

    api = serve_in_thread(watcher, HttpConfig(host="0.0.0.0", port=port, allow_insecure_bind=True))
    try:
        assert httpx.get(f"http://127.0.0.1:{api.port}/metrics").status_code == 200
    finally:
        api.stop()


def test_port_in_use_is_a_config_error(sqlite_server):
    """An address that cannot be bound fails at start with a message naming host and port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            serve_in_thread(Watcher(settings_for(), MlflowTracking(sqlite_server.url)), HttpConfig(port=port))
