"""Real intraday bars and models that learn nothing, on real sqlite MLflow stores.

``tests/data/EURUSD_1h.csv`` is eight months of hourly EUR/USD bars shipped by a PyPI package
(see tests/data/README.md): returns with a spread of about 1e-3, which XGBoost's split-gain
floor ignores unless the target is standardised.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from structlog.testing import capture_logs

from tests.support.mlflow_server import sqlite_uri
from tests.support.trainer_data import write_linear_csv
from trainer.config import TrainerConfig
from trainer.sweep import SweepSummary, print_summary, run_sweep

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EURUSD = ROOT / "tests" / "data" / "EURUSD_1h.csv"
TRIALS = 8


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[SweepSummary, list[Any]]:
    """Eight trials with every default (search space, walk-forward, importance) on the real bars."""
    workdir = tmp_path_factory.mktemp("real-data")
    uri = sqlite_uri(workdir / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        config = TrainerConfig.model_validate({"trials": TRIALS, "data": {"path": str(EURUSD)}})
        summary = run_sweep(config, tracking_uri=uri, progress=False)
    runs = mlflow.MlflowClient(uri).search_runs([summary.experiment_id])
    return summary, runs


def test_on_real_hourly_bars_at_most_one_trial_in_eight_learns_nothing(
    real_sweep: tuple[SweepSummary, list[Any]],
) -> None:
    """Default settings on real hourly EUR/USD: at most one of eight trials is degenerate, and
    every other one has non-zero importance; the metrics are in returns (RMSE ~1e-3)."""
    summary, runs = real_sweep
    assert len(summary.finished) == TRIALS
    degenerate = [r for r in runs if r.data.tags.get("degenerate") == "true"]
    assert len(degenerate) <= TRIALS // 8
    for run in runs:
        metrics = run.data.metrics
        assert 3e-4 < metrics["avg_test_rmse"] < 3e-3  # returns, not standard deviations
        assert math.isfinite(metrics["avg_test_r2_os"])
        if run in degenerate:
            continue
        assert metrics["importance_max"] > 0, run.info.run_name
        assert metrics["avg_train_r2"] > 1e-6, run.info.run_name
        assert "importance_skipped" not in run.data.tags


def test_the_end_of_sweep_table_shows_r2_against_the_zero_forecast(
    real_sweep: tuple[SweepSummary, list[Any]],
) -> None:
    summary, _ = real_sweep
    out = io.StringIO()
    print_summary(summary, 3, out)
    header = next(line for line in out.getvalue().splitlines() if line.startswith("rank"))
    assert header.split()[3:5] == ["avg_test_r2", "avg_test_r2_os"]
    best = summary.best(1)[0]
    assert f"{best.metrics['avg_test_r2_os']:.5f}" in out.getvalue()


def _linear_sweep(tmp_path: Path, uri: str, trials: int, space: dict[str, Any]) -> SweepSummary:
    """Daily rows whose target is x0 plus a little noise, five monthly folds."""
    path = write_linear_csv(tmp_path / "linear.csv", periods=240, freq="D")
    config = TrainerConfig.model_validate(
        {
            "trials": trials,
            "jobs": 1,
            "data": {"path": str(path), "target": "y"},
            "walk_forward": {"train_months": 3, "test_months": 1},
            "importance": {"n_repeats": 1},
            "search_space": space,
        }
    )
    return run_sweep(config, tracking_uri=uri, progress=False)


def test_a_trial_that_learned_nothing_is_tagged_warned_marked_and_filtered_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No tree splits in any fold: tag degenerate = "true", a warning per trial, a mark in the
    table, importance skipped with the reason (no importance metric of zeros), and the shipped
    watcher rule's filter leaves the runs out."""
    monkeypatch.chdir(tmp_path)
    uri = sqlite_uri(tmp_path / "mlflow.db")
    with capture_logs() as logs:  # two trials whose trees never split (a split must gain 1e9)
        summary = _linear_sweep(tmp_path, uri, 2, {"n_estimators": 5, "gamma": 1e9})
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([summary.experiment_id])
    assert len(runs) == 2
    for run in runs:
        assert run.data.tags["degenerate"] == "true"
        assert "learned nothing" in run.data.tags["importance_skipped"]
        assert not [k for k in run.data.metrics if k.startswith("importance_")]
        assert abs(run.data.metrics["avg_train_r2"]) < 1e-9  # the training mean, on every row
    warnings = [e for e in logs if e["event"] == "trial_degenerate"]
    assert [w["log_level"] for w in warnings] == ["warning", "warning"]
    out = io.StringIO()
    print_summary(summary, 5, out)
    text = out.getvalue()
    assert "trial_0*" in text
    assert "trial_1*" in text
    assert "* learned nothing (2 of 2 trials, tagged degenerate=true)" in text

    shipped = yaml.safe_load((ROOT / "config" / "watcher.yaml").read_text())["rules"][0]["filter"]
    assert "tags.degenerate IS NULL" in shipped
    assert client.search_runs([summary.experiment_id], shipped) == []
    assert len(client.search_runs([summary.experiment_id], "metrics.num_folds >= 3")) == 2


def test_a_model_that_learned_is_not_degenerate_on_the_same_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same data and trials with splits allowed: no tag, importance computed."""
    monkeypatch.chdir(tmp_path)
    uri = sqlite_uri(tmp_path / "mlflow.db")
    summary = _linear_sweep(tmp_path, uri, 1, {"n_estimators": 5})
    (run,) = mlflow.MlflowClient(uri).search_runs([summary.experiment_id])
    assert "degenerate" not in run.data.tags
    assert run.data.metrics["importance_max"] > 0
    # target mode: r2_os is measured against the training mean, so it tracks R²
    assert run.data.metrics["avg_test_r2_os"] > 0.5
