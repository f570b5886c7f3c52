"""Importance as a trial logs it: what the MLflow UI shows, on a real sqlite store."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import mlflow
from structlog.testing import capture_logs

from tests.support.trainer_data import write_linear_csv
from trainer import data
from trainer.config import TrainerConfig
from trainer.sample import PLANTED_FEATURES
from trainer.sweep import run_sweep

# Three 6-month folds of the built-in sample (150 features), short shallow trees.
SMALL: dict[str, Any] = {
    "trials": 1,
    "jobs": 1,
    "walk_forward": {"train_months": 6, "test_months": 6},
    "importance": {"n_repeats": 1},
    "search_space": {
        "n_estimators": {"type": "int", "low": 50, "high": 50},
        "max_depth": {"type": "int", "low": 4, "high": 4},
        "learning_rate": {"type": "float", "low": 0.1, "high": 0.1},
    },
}
ARTIFACTS = {
    "permutation_importance.json",
    "feature_importance.csv",
    "feature_importance.png",
    "shap_importance.csv",
    "shap_importance.png",
}
SUMMARY = {"importance_max", "importance_mean", "importance_median", "importance_min"}


def _csv(run_id: str, name: str, dst: Path) -> list[dict[str, str]]:
    local = mlflow.MlflowClient().download_artifacts(run_id, name, str(dst))
    with open(local, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_sample_trial_shows_its_importance_in_params_metrics_and_artifacts(
    sqlite_uri: str, tmp_path: Path
) -> None:
    """Planted features lead both rankings; the guide's params, metrics and files are all there."""
    summary = run_sweep(TrainerConfig.model_validate(SMALL), progress=False)
    (outcome,) = summary.finished
    client = mlflow.MlflowClient()
    run = client.get_run(outcome.run_id)
    names = data.load(None).feature_names

    assert run.data.params["total_features"] == "150"
    assert run.data.params["feature_names"] == ",".join(names[:50])

    importance_metrics = {k for k in run.data.metrics if k.startswith("importance_")}
    assert importance_metrics >= SUMMARY
    assert len(importance_metrics - SUMMARY) == 20

    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= ARTIFACTS
    ranked = _csv(run.info.run_id, "feature_importance.csv", tmp_path)
    assert len(ranked) == 150
    assert {r["feature"] for r in ranked[:3]} == set(PLANTED_FEATURES)
    top20 = {f"importance_{r['feature']}" for r in ranked[:20]}  # sample names are already clean
    assert top20 == importance_metrics - SUMMARY
    assert float(ranked[0]["importance_mean"]) == run.data.metrics["importance_max"]

    shap_ranked = [r["feature"] for r in _csv(run.info.run_id, "shap_importance.csv", tmp_path)]
    assert set(PLANTED_FEATURES) <= set(shap_ranked[:5])
    assert shap_ranked[0] in PLANTED_FEATURES

    document = json.loads(
        Path(
            client.download_artifacts(run.info.run_id, "permutation_importance.json", str(tmp_path))
        ).read_text()
    )
    assert document["holdout"] == "latest"
    assert document["n_rows"] > 4000  # the latest 6-month test window of hourly bars


def test_too_few_held_out_rows_skip_importance_and_the_trial_still_finishes(
    sqlite_uri: str, tmp_path: Path
) -> None:
    """Weekly rows give ~4 held-out rows a month (folds allowed by min_test_rows 1): a warning,
    tag importance_skipped, no importance."""
    path = write_linear_csv(tmp_path / "weekly.csv", periods=40, freq="W")
    config = TrainerConfig.model_validate(
        {
            **SMALL,
            "data": {"path": str(path), "target": "y"},
            "walk_forward": {"train_months": 3, "test_months": 1, "min_test_rows": 1},
        }
    )

    with capture_logs() as logs:
        summary = run_sweep(config, progress=False)

    (outcome,) = summary.finished
    run = mlflow.MlflowClient().get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert re.fullmatch(r"only [1-5] held-out rows, at least 10 needed", run.data.tags["importance_skipped"])
    assert not [k for k in run.data.metrics if k.startswith("importance_")]
    assert run.data.params["total_features"] == "4"
    assert not {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)} & ARTIFACTS
    skipped = [e for e in logs if e["event"] == "importance_skipped"]
    assert skipped
    assert skipped[0]["log_level"] == "warning"
