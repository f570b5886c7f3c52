"""Sweeps end to end on a real sqlite MLflow store: the score is earned, failures are FAILED."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import uuid4

import mlflow
import numpy as np
import pandas as pd
import pytest
from structlog.testing import capture_logs

from tests.support.mlflow_server import ServerHandle
from trainer import data
from trainer.config import TrainerConfig, sample_trial
from trainer.sweep import run_sweep

# Small and fast: three 6-month folds, shallow short trees, one permutation repeat.
SMALL: dict[str, Any] = {
    "trials": 2,
    "jobs": 1,
    "walk_forward": {"train_months": 6, "test_months": 6},
    "importance": {"n_repeats": 1},
    "search_space": {
        "n_estimators": {"type": "int", "low": 40, "high": 60},
        "max_depth": {"type": "int", "low": 3, "high": 4},
        "learning_rate": {"type": "float", "low": 0.08, "high": 0.15},
    },
}


def small_config(**changes: Any) -> TrainerConfig:
    raw = {**SMALL, **changes}
    return TrainerConfig.model_validate(raw)


def fresh_experiment() -> str:
    return f"exp_{uuid4().hex[:8]}"


def test_sample_sweep_finds_the_planted_signal(sqlite_uri: str) -> None:
    """On the built-in sample the best trial's avg_test_r2 is clearly above zero; runs are FINISHED."""
    with capture_logs() as logs:
        summary = run_sweep(small_config(), progress=False)
    assert summary.experiment_name == "wf_xgboost_SAMPLE_f150_tr6m_te6m"
    assert len(summary.finished) == 2
    assert not summary.failed
    best = summary.best(1)[0]
    assert best.metrics["avg_test_r2"] > 0.03
    assert best.metrics["num_folds"] == 3
    events = [entry["event"] for entry in logs]
    assert events[0] == "data_loaded"
    assert events.count("trial_finished") == 2
    assert events[-1] == "sweep_finished"
    runs = mlflow.MlflowClient(sqlite_uri).search_runs([summary.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["trial_0", "trial_1"]
    assert {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.parametrize("shuffled", [False, True], ids=["target", "shuffled_target"])
def test_shuffled_target_scores_at_or_below_zero(
    sqlite_server: ServerHandle, tmp_path: Path, shuffled: bool
) -> None:
    """The same trainer in --target mode finds the signal, and scores <= ~0 once y is shuffled."""
    sample = data.load(None)
    frame = pd.DataFrame(sample.X, columns=sample.feature_names)
    y = sample.y.copy()
    if shuffled:
        y = np.random.default_rng(0).permutation(y)
    frame.insert(0, "timestamp", sample.times)
    frame["y"] = y
    path = tmp_path / "features.parquet"
    frame.to_parquet(path)
    config = small_config(
        data={"path": str(path), "target": "y"}, importance={"enabled": False}, experiment=fresh_experiment()
    )
    summary = run_sweep(config, tracking_uri=sqlite_server.url, progress=False)
    best = summary.best(1)[0].metrics["avg_test_r2"]
    if shuffled:
        assert best <= 0.005
    else:
        assert best > 0.03


def test_trial_failing_midway_is_marked_failed(sqlite_server: ServerHandle) -> None:
    """A trial that raises inside XGBoost ends as a FAILED run, never RUNNING."""
    space = {**SMALL["search_space"], "grow_policy": {"type": "choice", "values": ["no-such-policy"]}}
    config = small_config(trials=1, search_space=space, experiment=fresh_experiment())
    summary = run_sweep(config, tracking_uri=sqlite_server.url, progress=False)
    assert len(summary.failed) == 1
    assert "XGBoostError" in (summary.failed[0].error or "")
    run = mlflow.MlflowClient(sqlite_server.url).get_run(summary.failed[0].run_id)
    assert run.info.status == "FAILED"


def test_trial_hyperparameters_depend_only_on_seed_and_index() -> None:
    """Trial i draws the same values whatever the trial count; another seed draws others."""
    space = TrainerConfig().search_space
    first = [sample_trial(space, 7, i) for i in range(5)]
    assert first == [sample_trial(space, 7, i) for i in range(5)]
    assert first[3] != sample_trial(space, 8, 3)
    for values in first:
        assert set(values) == set(space)
        assert isinstance(values["n_estimators"], int)
        assert 0.02 <= values["learning_rate"] <= 0.2
