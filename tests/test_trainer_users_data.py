"""Files as people have them train with no option but `--data`, each into its own experiment,
and the watcher ranks those experiments apart (run as a separate process: it is another package)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tests.support.market_data import bars
from tests.support.mlflow_server import sqlite_uri
from tests.support.trainer_cli import experiment_runs, train

ARTIFACTS = {
    "permutation_importance.json",
    "feature_importance.csv",
    "feature_importance.png",
    "shap_importance.csv",
    "shap_importance.png",
}
WATCHER_YAML = """
http: {enabled: false}
rules:
  - name: users-data
    experiments: ["wf_xgboost_*"]
    metric: avg_test_r2
    top_n: 10
    filter: "metrics.num_folds >= 3"
    trigger: experiment_finished
"""


def _pandas_csv(path: Path) -> None:
    """`df.to_csv()`: the time in an unnamed index column, capitalised OHLC, no volume."""
    frame = bars(pd.date_range("2024-01-01", "2024-06-25", freq="h"), seed=1, volume=False)
    frame.rename(columns=str.capitalize).to_csv(path)


def _daily_csv(path: Path) -> None:
    """Business days over three years, Yahoo's layout (`Date`, `Adj Close`)."""
    frame = bars(pd.bdate_range("2021-01-01", "2023-12-31"), seed=2)
    frame = frame.rename(columns=str.capitalize).assign(**{"Adj Close": frame["close"]})
    frame.rename_axis("Date").reset_index().assign(Date=lambda f: f["Date"].dt.strftime("%Y-%m-%d")).to_csv(
        path, index=False
    )


def _hourly_into_a_month(path: Path) -> None:
    """Hourly bars ending one hour into July: July keeps one row with a target."""
    frame = bars(pd.date_range("2024-01-01 00:00", "2024-07-01 01:00", freq="h"), seed=3)
    frame.rename_axis("timestamp").reset_index().to_parquet(path)


FILES = {"EURUSD.csv": _pandas_csv, "GOOG_daily.csv": _daily_csv, "BTC-hourly.parquet": _hourly_into_a_month}


@dataclass(frozen=True)
class Trained:
    uri: str
    workdir: Path
    outputs: dict[str, str]  # file name -> what `train` printed


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    workdir = tmp_path_factory.mktemp("users-data")
    uri = sqlite_uri(workdir / "mlflow.db")
    outputs: dict[str, str] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(workdir)
        for name, write in FILES.items():
            write(workdir / name)
            outputs[name] = train(["--data", str(workdir / name), "--trials", "2", "--jobs", "1"])
    return Trained(uri, workdir, outputs)


def _experiment_runs(uri: str, symbol: str) -> tuple[str, list[mlflow.entities.Run]]:
    return experiment_runs(uri, f"wf_xgboost_{symbol}_f")


@pytest.mark.parametrize(
    ("name", "symbol", "interval", "skipped", "time_column"),
    [
        ("EURUSD.csv", "EURUSD", "1h", "0", "Unnamed: 0"),
        ("GOOG_daily.csv", "GOOG_daily", "1d", "0", "Date"),
        ("BTC-hourly.parquet", "BTC_hourly", "1h", "1", "timestamp"),
    ],
)
def test_file_trains_into_its_own_experiment_with_finite_scores(
    trained: Trained, name: str, symbol: str, interval: str, skipped: str, time_column: str
) -> None:
    """Each file: experiment named after it, every trial finite avg_test_r2, importance logged."""
    experiment, runs = _experiment_runs(trained.uri, symbol)
    assert len(runs) == 2
    client = mlflow.MlflowClient(trained.uri)
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        assert run.info.status == "FINISHED"
        assert experiment == f"wf_xgboost_{symbol}_f{params['total_features']}_tr3m_te1m"
        assert math.isfinite(metrics["avg_test_r2"])
        assert metrics["num_folds"] >= 3
        assert (params["symbol"], params["bar_interval"]) == (symbol, interval)
        assert (params["folds_skipped"], params["time_column"]) == (skipped, time_column)
        assert "importance_skipped" not in run.data.tags
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= ARTIFACTS
        assert len(params["feature_names"].split(",")) == min(50, int(params["total_features"]))
    assert "Not ranked" not in trained.outputs[name]


def test_features_follow_the_data(trained: Trained, tmp_path: Path) -> None:
    """No volume column: no volume features; daily bars: no hour features, constant ones dropped."""
    client = mlflow.MlflowClient(trained.uri)

    def features_of(symbol: str) -> tuple[set[str], dict[str, str]]:
        _, runs = _experiment_runs(trained.uri, symbol)
        local = client.download_artifacts(runs[0].info.run_id, "feature_importance.csv", str(tmp_path))
        listed = set(pd.read_csv(local)["feature"])
        assert len(listed) == int(runs[0].data.params["total_features"])
        return listed, runs[0].data.params

    fx, _ = features_of("EURUSD")
    assert not [f for f in fx if "volume" in f]
    assert {"hour_sin", "day_of_week", "is_weekend"} <= fx
    daily, params = features_of("GOOG_daily")
    assert not [f for f in daily if f.startswith("hour")]
    assert "is_weekend" not in daily  # business days: constant, so dropped
    assert int(params["dropped_constant_features"]) >= 1
    assert {"volume_z_24", "day_of_week", "month"} <= daily


def test_watcher_ranks_the_experiments_apart(trained: Trained) -> None:
    """`python -m watcher --once` ranks each file's experiment on its own: one rank 1 per experiment."""
    config = trained.workdir / "watcher.yaml"
    config.write_text(WATCHER_YAML)
    env = {**os.environ, "MLFLOW_TRACKING_URI": trained.uri}
    proc = subprocess.run(
        [sys.executable, "-m", "watcher", "--config", str(config), "--once"],
        capture_output=True,
        text=True,
        env=env,
        cwd=trained.workdir,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for symbol in ("EURUSD", "GOOG_daily", "BTC_hourly"):
        _, runs = _experiment_runs(trained.uri, symbol)
        ranks = sorted(r.data.tags.get("model_rank", "") for r in runs)
        assert ranks == ["1", "2"], symbol
        best = min(runs, key=lambda r: r.data.tags["model_rank"])
        assert best.data.metrics["avg_test_r2"] == max(r.data.metrics["avg_test_r2"] for r in runs)
