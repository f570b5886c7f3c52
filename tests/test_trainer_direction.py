"""Direction and classification sweeps end to end on a real MLflow store: the built-in sample,
a two-valued column of the user's, and the S&P 500 daily bars the `arch` package ships, ranked
by the shipped watcher config (run as a separate process: it is another package)."""

from __future__ import annotations

import importlib.resources
import io
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest

from tests.support.mlflow_server import sqlite_uri
from tests.support.trainer_data import SMALL_SWEEP as SMALL
from trainer.config import TrainerConfig
from trainer.retrain import retrain
from trainer.sweep import SweepSummary, print_summary, run_sweep
from watcher.api import bind_socket, create_app, run_in_thread
from watcher.mlflow_io import MlflowTracking
from watcher.service import Watcher
from watcher.settings import load_settings

REPO = Path(__file__).parents[1]
CLASS_METRICS = {
    f"avg_{part}_{score}" for part in ("train", "test") for score in ("auc", "logloss", "accuracy", "brier")
}


@dataclass(frozen=True)
class Swept:
    uri: str
    summary: SweepSummary


@pytest.fixture(scope="module")
def sample_direction(tmp_path_factory: pytest.TempPathFactory) -> Swept:
    uri = sqlite_uri(tmp_path_factory.mktemp("direction") / "mlflow.db")
    config = TrainerConfig.model_validate({**SMALL, "task": "direction"})
    return Swept(uri, run_sweep(config, tracking_uri=uri, progress=False))


def test_direction_on_the_sample_learns_the_planted_signal_and_logs_classification_metrics(
    sample_direction: Swept,
) -> None:
    """Experiment wf_xgboost_SAMPLE_dir_..., binary:logistic, AUC above chance, every metric with
    its per-fold curve, importance scored by ROC AUC, a model that answers probabilities."""
    summary = sample_direction.summary
    assert summary.experiment_name == "wf_xgboost_SAMPLE_dir_f150_tr6m_te6m"
    assert len(summary.finished) == 2
    client = mlflow.MlflowClient(sample_direction.uri)
    for outcome in summary.finished:
        run = client.get_run(outcome.run_id)
        params, metrics = run.data.params, run.data.metrics
        assert (params["task"], params["objective"], params["positive_class"]) == (
            "direction",
            "binary:logistic",
            "up",
        )
        assert set(metrics) >= CLASS_METRICS
        assert not {"avg_test_r2", "avg_test_rmse"} & set(metrics)
        assert 0.55 < metrics["avg_test_auc"] < 1.0  # the sample's planted signal
        assert 0.0 < metrics["avg_test_brier"] < 0.25
        assert 0.5 < metrics["avg_test_accuracy"] < 1.0
        folds = int(metrics["num_folds"])
        history = client.get_metric_history(outcome.run_id, "test_auc")
        assert sorted(m.step for m in history) == list(range(folds))
        assert metrics["avg_test_auc"] == pytest.approx(np.mean([m.value for m in history]))
        local = client.download_artifacts(outcome.run_id, "permutation_importance.json")
        document = json.loads(Path(local).read_text(encoding="utf-8"))
        assert document["scoring"] == "roc_auc"
        assert document["features"][0]["feature"] in ("ret_lag_1", "volume_z_24", "hour_sin")
    best = summary.best(1)[0]
    mlflow.set_tracking_uri(sample_direction.uri)  # conftest restores it after the test
    model = mlflow.pyfunc.load_model(f"runs:/{best.run_id}/model")
    assert model.input_example is not None
    probabilities = np.asarray(model.predict(model.input_example))
    assert ((probabilities > 0) & (probabilities < 1)).all()


def test_the_end_of_sweep_table_shows_the_classification_metrics(sample_direction: Swept) -> None:
    out = io.StringIO()
    print_summary(sample_direction.summary, 5, out)
    text = out.getvalue()
    assert "Best 2 by avg_test_auc:" in text
    header = next(line for line in text.splitlines() if line.startswith("rank"))
    assert header.split()[3:8] == [
        "avg_test_auc",
        "avg_test_logloss",
        "avg_test_accuracy",
        "avg_test_brier",
        "avg_train_auc",
    ]
    best = sample_direction.summary.best(2)
    assert best[0].metrics["avg_test_auc"] >= best[1].metrics["avg_test_auc"]


def test_retrain_keeps_the_direction_task(sample_direction: Swept) -> None:
    """A retrained direction run is a direction run: same experiment, binary:logistic, AUC."""
    source = sample_direction.summary.best(1)[0]
    result = retrain(source.run_id, drop_below=None, exclude=["hour_sin"], tracking_uri=sample_direction.uri)
    assert result.status == "FINISHED"
    run = mlflow.MlflowClient(sample_direction.uri).get_run(result.run_id)
    assert run.info.experiment_id == sample_direction.summary.experiment_id
    assert (run.data.params["task"], run.data.params["objective"]) == ("direction", "binary:logistic")
    assert run.data.params["total_features"] == "149"
    assert set(run.data.metrics) >= CLASS_METRICS


def test_classification_of_a_two_valued_column_with_a_one_class_test_window(tmp_path: Path) -> None:
    """--task classification --target COL: labels -1/1, class 1 the larger; a test window whose
    rows hold one class logs test_auc NaN at its step, and the average is over the other folds."""
    rng = np.random.default_rng(5)
    times = pd.date_range("2024-01-01", periods=240, freq="D")
    x = rng.normal(size=(len(times), 3))
    label = np.where(x[:, 0] + 0.3 * rng.normal(size=len(times)) > 0, 1, -1)
    may = (times >= "2024-05-01") & (times < "2024-06-01")
    label[may] = 1
    path = tmp_path / "signals.csv"
    pd.DataFrame({"when": times, "a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "label": label}).to_csv(
        path, index=False
    )
    uri = sqlite_uri(tmp_path / "mlflow.db")
    config = TrainerConfig.model_validate(
        {
            **SMALL,
            "trials": 1,
            "task": "classification",
            "data": {"path": str(path), "target": "label", "time_column": "when"},
            "walk_forward": {"train_months": 3, "test_months": 1},
        }
    )
    summary = run_sweep(config, tracking_uri=uri, progress=False)
    assert summary.experiment_name == "wf_xgboost_signals_cls_f3_tr3m_te1m"
    (outcome,) = summary.finished
    client = mlflow.MlflowClient(uri)
    run = client.get_run(outcome.run_id)
    assert (run.data.params["task"], run.data.params["positive_class"]) == ("classification", "1")
    history = {m.step: m.value for m in client.get_metric_history(outcome.run_id, "test_auc")}
    may_fold = 1  # folds test April, May, June, July, August
    assert math.isnan(history[may_fold])
    finite = [v for step, v in history.items() if step != may_fold]
    assert all(math.isfinite(v) for v in finite)
    assert run.data.metrics["avg_test_auc"] == pytest.approx(np.mean(finite))
    assert run.data.metrics["avg_test_auc"] > 0.8
    may_accuracy = {m.step: m.value for m in client.get_metric_history(outcome.run_id, "test_accuracy")}[
        may_fold
    ]
    assert math.isfinite(may_accuracy)  # only AUC needs both classes


# ---------------------------------------------------------------------------------------------
# A real file: the S&P 500 daily bars shipped by `arch` (1999-2018), ranked by the shipped config
# ---------------------------------------------------------------------------------------------


def _sp500() -> Path:
    """arch's sp500.csv.gz as installed (Date, Open, High, Low, Close, Adj Close, Volume; gzip)."""
    path = Path(str(importlib.resources.files("arch") / "data" / "sp500" / "sp500.csv.gz"))
    assert path.is_file()
    return path


def _train(uri: str, argv: list[str]) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    cmd = [sys.executable, "-m", "trainer", "train", "--jobs", "1", "--no-progress", *argv]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def test_sp500_direction_is_ranked_by_auc_through_the_shipped_watcher_config(tmp_path: Path) -> None:
    """Direction and regression sweeps of one real file land in two experiments; one
    `python -m watcher --once` with config/watcher.yaml ranks the first by avg_test_auc (the
    direction rule) and the second by avg_test_r2."""
    data = _sp500()
    uri = sqlite_uri(tmp_path / "mlflow.db")
    windows = ["--train-months", "36", "--test-months", "24"]
    _train(uri, ["--data", str(data), "--task", "direction", "--trials", "3", *windows])
    _train(uri, ["--data", str(data), "--trials", "1", *windows])
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "WATCHER_HTTP__ENABLED": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "watcher", "--config", str(REPO / "config" / "watcher.yaml"), "--once"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(uri)
    experiments = {e.name: e for e in client.search_experiments() if e.name.startswith("wf_xgboost_sp500_")}
    (direction,) = [name for name in experiments if "_dir_f" in name]
    (regression,) = [name for name in experiments if "_dir_" not in name]
    assert direction.endswith("_tr36m_te24m")
    assert regression == direction.replace("_dir_", "_")
    for name, rule, metric in (
        (direction, "wf-xgboost-direction", "avg_test_auc"),
        (regression, "wf-xgboost", "avg_test_r2"),
    ):
        experiment = experiments[name]
        assert json.loads(experiment.tags["podium.state"])["rule"] == rule
        runs = client.search_runs([experiment.experiment_id])
        ranked = sorted(runs, key=lambda r: int(r.data.tags["model_rank"]))
        assert len(ranked) == len(runs)
        values = [r.data.metrics[metric] for r in ranked]
        assert values == sorted(values, reverse=True)
        assert all(math.isfinite(v) for v in values)
    selection = json.loads(experiments[direction].tags["podium.selection"])  # the rule's selection key
    assert (selection["metric"], selection["fold_metric"], selection["runs"]) == (
        "avg_test_auc",
        "test_auc",
        3,
    )
    dir_runs = client.search_runs([experiments[direction].experiment_id])
    assert {r.data.params["bar_interval"] for r in dir_runs} == {"1d"}
    assert all(r.data.metrics["num_folds"] >= 3 for r in dir_runs)
    _dashboard_shows_the_direction_board(uri, experiments[direction].experiment_id, dir_runs)


def _dashboard_shows_the_direction_board(
    uri: str, experiment_id: str, runs: list[mlflow.entities.Run]
) -> None:
    """The dashboard's routes, on the shipped config, serve the direction experiment's board by
    avg_test_auc and its leader's importance."""
    settings = load_settings(REPO / "config" / "watcher.yaml").model_copy(update={"tracking_uri": uri})
    watcher = Watcher(settings, MlflowTracking(uri))
    assert watcher.run_pass().ok
    api = run_in_thread(create_app(watcher), bind_socket("127.0.0.1", 0))
    try:
        with httpx.Client(base_url=api.url, timeout=60) as http:
            (listed,) = [
                e for e in http.get("/api/experiments").json() if e["experiment_id"] == experiment_id
            ]
            leader = max(runs, key=lambda r: r.data.metrics["avg_test_auc"])
            assert (listed["rule"], listed["metric"], listed["ascending"]) == (
                "wf-xgboost-direction",
                "avg_test_auc",
                False,
            )
            assert listed["leader"]["run_id"] == leader.info.run_id
            board = http.get(f"/api/experiments/{experiment_id}/leaderboard").json()
            assert board["models"][0]["run_id"] == leader.info.run_id
            importance = http.get(f"/api/runs/{leader.info.run_id}/importance").json()
            assert len(importance["features"]) == int(leader.data.params["total_features"])
    finally:
        api.stop()
