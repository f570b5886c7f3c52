"""Trainer runs made through a real `mlflow server`: the contract's names and the call budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from uuid import uuid4

import mlflow
import numpy as np
import pytest
from mlflow.models.utils import load_serving_example
from mlflow.pyfunc.scoring_server import _parse_json_data

from tests.support.mlflow_server import ServerHandle
from tests.support.proxy import Proxy
from tests.support.run_contract import (
    ARTIFACTS,
    AVERAGES,
    DATA_PARAMS,
    HYPERPARAMETERS,
    IMPORTANCE_STATS,
    PER_FOLD,
    SMALL_YAML,
)
from trainer.config import load_config, sample_trial
from trainer.prepare import load_checked
from trainer.train import Prepared, run_trial

pytestmark = pytest.mark.server

TRIALS = 2
CALL_BUDGET_PER_TRIAL = 12


@pytest.fixture(scope="module")
def sweep(
    sqlite_server: ServerHandle, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, list[tuple[str, str]], subprocess.CompletedProcess[str]]:
    """One small sweep, two trials in two processes, run by the CLI through a counting proxy."""
    proxy = Proxy(sqlite_server.url)
    workdir = tmp_path_factory.mktemp("trainer-sweep")
    config = workdir / "small.yaml"
    config.write_text(SMALL_YAML)
    experiment = f"exp_{uuid4().hex[:8]}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": proxy.url}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "trainer", "train", "--config", str(config), "--experiment", experiment],
            capture_output=True,
            text=True,
            env=env,
            cwd=workdir,
            timeout=300,
            check=False,
        )
        calls = proxy.tracking_calls()
    finally:
        proxy.close()
    return experiment, calls, proc


def _runs(server: ServerHandle, experiment: str) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(server.url)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    return client.search_runs([exp.experiment_id])


def test_sweep_through_server_succeeds_and_prints_best_trials(
    sweep: tuple[str, list[tuple[str, str]], subprocess.CompletedProcess[str]], sqlite_server: ServerHandle
) -> None:
    """The CLI exits 0, prints the best trials by avg_test_r2 and how to open the experiment."""
    experiment, _, proc = sweep
    assert proc.returncode == 0, proc.stderr
    assert "Best 2 by avg_test_r2:" in proc.stdout
    assert "#/experiments/" in proc.stdout
    assert "View run" not in proc.stdout  # MLflow's own per-run links are suppressed
    assert {r.info.run_name for r in _runs(sqlite_server, experiment)} == {"trial_0", "trial_1"}


def test_trial_stays_within_tracking_call_budget(
    sweep: tuple[str, list[tuple[str, str]], subprocess.CompletedProcess[str]],
) -> None:
    """Each trial costs at most 12 tracking calls, model logging included, uploads apart; the
    sweep itself finds or creates the experiment, reads its runs before the first trial and
    after the last (one page each here) and writes the podium.hyperparameters tag."""
    _, calls, proc = sweep
    assert proc.returncode == 0, proc.stderr
    setup = [c for c in calls if "/experiments/" in c[1] or c[1].endswith("/runs/search")]
    per_trial = (len(calls) - len(setup)) / TRIALS
    assert len(setup) <= 5, setup
    assert per_trial <= CALL_BUDGET_PER_TRIAL, calls
    assert sum(1 for _, path in calls if path.endswith("/runs/log-batch")) == TRIALS


def test_every_contract_name_is_on_the_runs(
    sweep: tuple[str, list[tuple[str, str]], subprocess.CompletedProcess[str]], sqlite_server: ServerHandle
) -> None:
    """Params, averages, per-fold curves (step = fold), importance, artifacts and the model."""
    experiment, _, proc = sweep
    assert proc.returncode == 0, proc.stderr
    client = mlflow.MlflowClient(sqlite_server.url)
    for run in _runs(sqlite_server, experiment):
        assert run.info.status == "FINISHED"
        params, metrics = run.data.params, run.data.metrics
        for name in HYPERPARAMETERS + DATA_PARAMS:
            assert name in params, name
        assert params["total_features"] == "150"
        assert len(params["feature_names"].split(",")) == 50
        assert params["symbol"] == "SAMPLE"
        assert (params["train_months"], params["test_months"]) == ("6", "6")
        for name in AVERAGES + IMPORTANCE_STATS:
            assert name in metrics, name
        assert metrics["num_folds"] == 3
        assert len([k for k in metrics if k.startswith("importance_")]) == 20 + len(IMPORTANCE_STATS)
        for name in PER_FOLD:
            history = client.get_metric_history(run.info.run_id, name)
            assert sorted(m.step for m in history) == [0, 1, 2], name
        artifacts = {f.path for f in client.list_artifacts(run.info.run_id)}
        assert set(ARTIFACTS) <= artifacts
        outputs = run.outputs.model_outputs if run.outputs else []
        assert len(outputs) == 1
        model = client.get_logged_model(outputs[0].model_id)
        assert model.name == "model"
        assert model.source_run_id == run.info.run_id
        assert model.experiment_id == run.info.experiment_id  # not MLflow's default experiment
        # the per-fold test values in the tag, in fold order, as the metric history has them
        folds = json.loads(run.data.tags["podium.folds"])
        for score in ("r2", "rmse", "mae", "ic", "sharpe"):  # the task's scores, then the trading ones
            history = sorted(
                client.get_metric_history(run.info.run_id, f"test_{score}"), key=lambda m: m.step
            )
            assert folds[f"test_{score}"] == [float(f"{m.value:.6g}") for m in history], score
        values = [
            m.value
            for m in sorted(client.get_metric_history(run.info.run_id, "test_mae"), key=lambda m: m.step)
        ]
        assert metrics["min_test_mae"] == min(values)
        assert metrics["median_test_mae"] == pytest.approx(float(np.median(values)))
        assert metrics["std_test_mae"] == pytest.approx(float(np.std(values)))
        assert "degenerate" not in run.data.tags


def test_logged_model_loads_and_predicts_with_its_signature(
    sweep: tuple[str, list[tuple[str, str]], subprocess.CompletedProcess[str]], sqlite_server: ServerHandle
) -> None:
    """The deployable model loads through pyfunc and predicts its own input example."""
    experiment, _, _ = sweep
    run = _runs(sqlite_server, experiment)[0]
    mlflow.set_tracking_uri(sqlite_server.url)  # conftest restores it after the test
    model_id = run.outputs.model_outputs[0].model_id
    info = mlflow.models.get_model_info(f"models:/{model_id}")
    assert info.signature is not None
    assert len(info.signature.inputs.input_names()) == 150
    loaded = mlflow.pyfunc.load_model(f"models:/{model_id}")
    example = loaded.input_example
    assert example is not None
    assert len(loaded.predict(example)) == len(example)
    # The serving payload MLflow writes beside the example answers like the example itself.
    payload = load_serving_example(f"models:/{model_id}")
    served = _parse_json_data(payload, loaded.metadata, loaded.metadata.get_input_schema())
    assert list(loaded.predict(served.data)) == list(loaded.predict(example))


def test_the_served_model_answers_like_the_trainers_own_predictions(
    sweep: tuple[str, list[tuple[str, str]], subprocess.CompletedProcess[str]],
    sqlite_server: ServerHandle,
    tmp_path: Path,
) -> None:
    """The trial fits a standardised target, yet the logged model predicts in the data's units:
    through ``mlflow.pyfunc.load_model`` and through ``mlflow.models.predict`` on its serving
    example it answers what the trainer's own deployable model answers on those rows."""
    experiment, _, _ = sweep
    run = _runs(sqlite_server, experiment)[0]
    config_file = tmp_path / "small.yaml"
    config_file.write_text(SMALL_YAML)
    config = load_config(config_file)
    prepared = Prepared(load_checked(config), config)
    index = int(run.data.tags["trial_index"])
    result = run_trial(
        prepared,
        index,
        sample_trial(config.search_space, config.seed, index),
        int(run.data.params["trial_seed"]),
    )
    own = np.asarray(result.model.inplace_predict(result.example), dtype="float64")
    assert 1e-4 < np.abs(own).max() < 0.1  # returns, not standard deviations

    mlflow.set_tracking_uri(sqlite_server.url)  # conftest restores it after the test
    model_uri = f"models:/{run.outputs.model_outputs[0].model_id}"
    loaded = mlflow.pyfunc.load_model(model_uri)
    assert np.allclose(np.asarray(loaded.predict(loaded.input_example), dtype="float64"), own, rtol=1e-6)
    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "model")))
    out = tmp_path / "predictions.json"
    mlflow.models.predict(
        model_uri=str(local),
        input_path=str(local / "serving_input_example.json"),
        content_type="json",
        output_path=str(out),
        env_manager="local",
    )
    served = json.loads(out.read_text())["predictions"]
    assert np.allclose(np.asarray(served, dtype="float64"), own, rtol=1e-6)


def test_ui_search_for_positive_r2_finds_the_runs(
    sweep: tuple[str, list[tuple[str, str]], subprocess.CompletedProcess[str]], sqlite_server: ServerHandle
) -> None:
    """The MLflow UI's search `metrics.avg_test_r2 > 0` finds exactly the runs that earned it."""
    experiment, _, _ = sweep
    runs = _runs(sqlite_server, experiment)
    client = mlflow.MlflowClient(sqlite_server.url)
    found = client.search_runs([runs[0].info.experiment_id], "metrics.avg_test_r2 > 0")
    expected = {r.info.run_id for r in runs if r.data.metrics["avg_test_r2"] > 0}
    assert expected  # the planted signal is there to be found
    assert {r.info.run_id for r in found} == expected


def test_unreachable_server_exits_1_with_one_message(tmp_path: Path) -> None:
    """With no tracking server answering, the CLI exits 1 naming the server, no traceback."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    config = tmp_path / "small.yaml"
    config.write_text(SMALL_YAML)
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "train", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: finding experiment")
    assert "http://127.0.0.1:9" in last


def test_logging_a_model_leaves_the_callers_tracking_uri_variable_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller that relies on MLFLOW_TRACKING_URI (a notebook, --jobs 1 in-process) still has
    it after a model was logged to another store."""
    import xgboost as xgb

    from trainer.tracking import Tracking, example_frame

    theirs = f"sqlite:///{tmp_path / 'theirs.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", theirs)
    tracking = Tracking(f"sqlite:///{tmp_path / 'ours.db'}")
    experiment = tracking.ensure_experiment("env_kept")
    run_id, _ = tracking.create_run(experiment, "r", {})
    X = np.arange(40, dtype="float32").reshape(20, 2)
    booster = xgb.train({"nthread": 1}, xgb.DMatrix(X, label=X[:, 0]), num_boost_round=2)
    tracking.log_model(experiment, run_id, booster, example_frame(X[:3], ["a", "b"]))
    assert os.environ["MLFLOW_TRACKING_URI"] == theirs
