"""What the watcher serves of experiment tag ``podium.hyperparameters``: the trainer's JSON with
its experiment, or a reason (no tag yet, a tag that is not the trainer's, the trainer's own);
and the dashboard's route serving it from a real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import httpx
import pytest
from mlflow import MlflowClient

from tests.support.mlflow_server import ServerHandle
from trainer import hyperimportance
from trainer.config import TrainerConfig
from trainer.search import Covered
from watcher.api import bind_socket, create_app, run_in_thread
from watcher.hyperparameters import ABSENT, TAG, view
from watcher.mlflow_io import MlflowTracking
from watcher.service import Watcher
from watcher.settings import HttpConfig, RuleConfig, WatcherSettings

WRITTEN = {
    "metric": "avg_test_r2",
    "evaluator": "fanova",
    "runs": 24,
    "importance": {"learning_rate": 0.7, "subsample": 0.3},
    "best_ranges": {"learning_rate": [0.02, 0.09], "subsample": [0.95, 0.99]},
    "computed_at": "2026-12-07T09:10:56Z",
}


def test_the_tag_is_served_with_its_experiment() -> None:
    got = view("7", "wf_x", {TAG: json.dumps(WRITTEN, separators=(",", ":")), "other": "x"})
    assert got == {"experiment_id": "7", "experiment_name": "wf_x", **WRITTEN}
    assert list(got["importance"]) == ["learning_rate", "subsample"]  # the trainer's order kept


def test_no_tag_says_how_one_gets_written() -> None:
    got = view("7", "wf_x", {})
    assert got["reason"] == ABSENT
    assert "importance" not in got


def test_the_trainers_reason_is_passed_on() -> None:
    reason = "5 finished runs the search space covers; importance needs at least 8"
    assert view("7", "wf_x", {TAG: json.dumps({"reason": reason})})["reason"] == reason


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]", '{"importance": 3}', '{"runs": 4}'])
def test_a_tag_that_is_not_the_trainers_json_is_named(raw: str) -> None:
    got = view("7", "wf_x", {TAG: raw})
    assert got["reason"] == f"tag {TAG} is not the trainer's JSON"


# --------------------------------------------------------------------------------------------
# GET /api/experiments/{id}/hyperparameters on a real server
# --------------------------------------------------------------------------------------------


@dataclass
class Served:
    http: httpx.Client
    tagged: str
    untagged: str
    written: dict[str, Any]


@pytest.fixture(scope="module")
def served(sqlite_server: ServerHandle) -> Iterator[Served]:
    """A watched experiment holding the tag as the trainer writes it, and one without."""
    client = MlflowClient(sqlite_server.url)
    prefix = f"hyper_{uuid4().hex[:6]}"
    tagged = client.create_experiment(f"{prefix}_tagged")
    untagged = client.create_experiment(f"{prefix}_untagged")
    space = TrainerConfig.model_validate(
        {
            "search_space": {
                "n_estimators": 20,
                "learning_rate": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
                "max_depth": {"type": "int", "low": 2, "high": 6},
            }
        }
    ).search_space
    covered = [
        Covered({"learning_rate": 0.01 * (i + 1), "max_depth": 2 + i % 5}, 0.1 + 0.01 * i) for i in range(12)
    ]
    written = hyperimportance.report(covered, space, "avg_test_r2")
    client.set_experiment_tag(tagged, TAG, hyperimportance.tag_value(written))
    rule = RuleConfig(name="hyper", experiments=[f"{prefix}_*"], metric="avg_test_r2", top_n=3)
    settings = WatcherSettings(http=HttpConfig(token_env="X"), rules=[rule])
    watcher = Watcher(settings, MlflowTracking(sqlite_server.url))
    api = run_in_thread(create_app(watcher, token="t"), bind_socket("127.0.0.1", 0))
    http = httpx.Client(base_url=api.url, timeout=60)
    yield Served(http, tagged, untagged, written)
    http.close()
    api.stop()


def test_the_route_serves_the_trainers_tag(served: Served) -> None:
    r = served.http.get(f"/api/experiments/{served.tagged}/hyperparameters")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["experiment_id"] == served.tagged
    assert body["experiment_name"].endswith("_tagged")
    assert body["importance"] == served.written["importance"]
    assert list(body["importance"]) == list(served.written["importance"])
    assert body["best_ranges"] == served.written["best_ranges"]
    assert body["runs"] == 12


def test_an_experiment_without_the_tag_answers_why(served: Served) -> None:
    r = served.http.get(f"/api/experiments/{served.untagged}/hyperparameters")
    assert r.status_code == 200, r.text
    assert r.json()["reason"] == ABSENT


@pytest.mark.parametrize("experiment_id", ["987654321", "abc"])
def test_an_unknown_experiment_is_404_naming_it(served: Served, experiment_id: str) -> None:
    r = served.http.get(f"/api/experiments/{experiment_id}/hyperparameters")
    assert r.status_code == 404
    assert experiment_id in r.json()["detail"]
