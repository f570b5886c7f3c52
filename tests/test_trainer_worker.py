"""A trial's logging (trainer.worker): the model, the batch and the tables go from a thread of the
worker while the trial draws its charts; an error there still fails the trial, on a real store."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import mlflow

from tests.support.trainer_data import write_linear_csv
from trainer.config import TrainerConfig, sample_trial
from trainer.prepare import prepare, static_params
from trainer.tracking import Tracking
from trainer.worker import FAILED, FINISHED, TrialTask, WorkerContext, execute, init_worker


def _trial(tmp_path: Path, tracking_uri: str) -> tuple[TrainerConfig, Tracking, str]:
    """One quick trial's set-up on 240 daily rows of four features (importance on 30-row windows)."""
    config = TrainerConfig.model_validate(
        {
            "trials": 1,
            "jobs": 1,
            "data": {
                "path": str(write_linear_csv(tmp_path / "daily.csv", periods=240, freq="D")),
                "target": "y",
            },
            "walk_forward": {"train_months": 3, "test_months": 1},
            "importance": {"n_repeats": 1},
            "search_space": {"n_estimators": 20, "max_depth": 2, "learning_rate": 0.3},
            "experiment": f"exp_{uuid4().hex[:8]}",
        }
    )
    inputs = prepare(config)
    tracking = Tracking(tracking_uri)
    experiment_id = tracking.ensure_experiment(config.experiment or "")
    # quiet=False: the trial runs in this process, as a one-job sweep runs it (a quiet worker
    # sets the process's logging to warnings for good)
    context = WorkerContext(
        inputs.dataset, config, tracking_uri, experiment_id, static_params(config, inputs), quiet=False
    )
    init_worker(context)
    return config, tracking, experiment_id


def test_a_trial_logs_its_model_batch_tables_and_charts_and_finishes(sqlite_uri: str, tmp_path: Path) -> None:
    config, tracking, experiment_id = _trial(tmp_path, sqlite_uri)
    run_id, artifact_uri = tracking.create_run(experiment_id, "trial_0", {})
    outcome = execute(
        TrialTask(0, run_id, artifact_uri, sample_trial(config.search_space, config.seed, 0), 1)
    )
    assert outcome.status == FINISHED, outcome.error
    client = mlflow.MlflowClient(sqlite_uri)
    run = client.get_run(run_id)
    assert run.info.status == FINISHED
    assert run.data.params["total_features"] == "4"
    assert "avg_test_r2" in run.data.metrics
    files = {f.path for f in client.list_artifacts(run_id)}
    assert files == {
        "permutation_importance.json",
        "feature_importance.csv",
        "feature_importance.png",
        "shap_importance.csv",
        "shap_importance.png",
    }
    assert run.outputs is not None
    assert len(run.outputs.model_outputs) == 1


def test_an_upload_failing_on_the_logging_thread_fails_the_trial(sqlite_uri: str, tmp_path: Path) -> None:
    """The importance tables cannot be written (a file stands where the run's artifact directory
    would be): the trial is FAILED with that error, after the model and the batch went in."""
    config, tracking, experiment_id = _trial(tmp_path, sqlite_uri)
    run_id, _ = tracking.create_run(experiment_id, "trial_0", {})
    blocked = tmp_path / "artifacts"
    blocked.write_text("a file, not a directory")
    task = TrialTask(
        0, run_id, (blocked / "run").as_uri(), sample_trial(config.search_space, config.seed, 0), 1
    )
    outcome = execute(task)
    assert outcome.status == FAILED
    assert outcome.error is not None
    assert "uploading artifacts" in outcome.error
    run = mlflow.MlflowClient(sqlite_uri).get_run(run_id)
    assert run.info.status == FAILED  # never left RUNNING
    assert "avg_test_r2" in run.data.metrics  # the batch went in before the tables failed
