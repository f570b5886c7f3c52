"""The trainer's own runs, promoted by real watcher passes: the alias follows the leader."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from uuid import uuid4

import mlflow
import pytest
from mlflow import MlflowClient

from tests.support.mlflow_server import ServerHandle
from tests.support.run_contract import SMALL_YAML
from watcher.cli import build_handlers
from watcher.mlflow_io import MlflowTracking
from watcher.service import Watcher
from watcher.settings import WatcherSettings

pytestmark = [pytest.mark.server, pytest.mark.slow]


def train(server: ServerHandle, config: Path, experiment: str, *, trials: int, seed: int) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.url}
    cmd = [sys.executable, "-m", "trainer", "train", "--config", str(config), "--experiment", experiment]
    cmd += ["--trials", str(trials)]
    cmd += ["--seed", str(seed), "--jobs", "1", "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def assert_alias_serves_the_leader(client: MlflowClient, experiment_id: str, model_name: str) -> str:
    [leader] = client.search_runs([experiment_id], "tags.model_rank = '1'")
    best = max(client.search_runs([experiment_id]), key=lambda r: r.data.metrics["avg_test_r2"])
    assert leader.info.run_id == best.info.run_id
    version = client.get_model_version_by_alias(model_name, "champion")
    assert version.run_id == leader.info.run_id
    assert version.tags == {"model_rank": "1", "source_run_id": leader.info.run_id}

    logged = mlflow.pyfunc.load_model(f"models:/{leader.outputs.model_outputs[0].model_id}")
    served = mlflow.pyfunc.load_model(f"models:/{model_name}@champion")
    example = logged.input_example
    assert example is not None
    assert list(served.predict(example)) == pytest.approx(list(logged.predict(example)))
    return leader.info.run_id


def test_alias_follows_the_trainers_best_run_and_serves_its_model(
    sqlite_server: ServerHandle, tmp_path: Path
) -> None:
    config = tmp_path / "small.yaml"  # the sample's three 6-month folds, short trees
    config.write_text(SMALL_YAML)
    name, model_name = f"exp_{uuid4().hex[:8]}", f"wf-{uuid4().hex[:8]}"
    settings = WatcherSettings(
        tracking_uri=sqlite_server.url,
        http={"enabled": False},
        rules=[
            {
                "name": "wf",
                "experiments": [name],
                "metric": "avg_test_r2",
                "registry": {"model_name": model_name, "alias": "champion"},
            }
        ],
    )
    tracking = MlflowTracking(sqlite_server.url)
    delivery = build_handlers(settings, tracking)
    watcher = Watcher(settings, tracking, delivery.handlers)
    client = MlflowClient(sqlite_server.url)
    mlflow.set_tracking_uri(sqlite_server.url)  # conftest restores it after the test
    train(sqlite_server, config, name, trials=1, seed=1)
    experiment_id = client.get_experiment_by_name(name).experiment_id
    assert watcher.run_pass().handler_report == {"registry_queued": 1, "outbox_pending": 1}
    assert delivery.worker.drain() == {"registry_promoted": 1}  # as --once does after its pass
    first = assert_alias_serves_the_leader(client, experiment_id, model_name)

    train(sqlite_server, config, name, trials=2, seed=2)
    assert watcher.run_pass().ok
    delivery.worker.drain()
    leader = assert_alias_serves_the_leader(client, experiment_id, model_name)
    versions = client.search_model_versions(f"name = '{model_name}'")
    # Earlier leaders keep their versions; a new leader got one of its own.
    assert len(versions) == (1 if leader == first else 2)
