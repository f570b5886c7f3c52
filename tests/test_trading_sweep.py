"""Trading scores end to end: sweeps of the built-in sample (a planted signal) and of a random
walk of the same length, logged to a real MLflow store, then ranked by a watcher rule on
avg_test_ic with ``selection: {sharpe_metric: oos_sharpe, min_dsr: 0.95}``. The sample's leader
has a real IC and survives the deflation; the random walk's does not, and its production tags
are held back with the reason."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from tests.support.mlflow_server import sqlite_uri
from trainer.config import TrainerConfig
from trainer.sample import SAMPLE_SEED, sample_bars
from trainer.sweep import SweepSummary, print_summary, run_sweep
from watcher.mlflow_io import MlflowTracking
from watcher.service import Watcher
from watcher.settings import WatcherSettings

TRIALS = 8
SWEEP = {
    "trials": TRIALS,
    "jobs": 1,
    "importance": {"enabled": False},
    "walk_forward": {"train_months": 3, "test_months": 3},
    "search_space": {
        "n_estimators": {"type": "int", "low": 20, "high": 40},
        "max_depth": {"type": "int", "low": 2, "high": 4},
        "learning_rate": {"type": "float", "low": 0.05, "high": 0.2},
    },
}


def random_walk(path: Path, seed: int = SAMPLE_SEED) -> Path:
    """The sample's times and volume with a driftless Gaussian random walk as prices."""
    bars = sample_bars()
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.004, len(bars))))
    open_ = np.concatenate([[100.0], close[:-1]])
    bars["open"], bars["close"] = open_, close
    bars["high"] = np.maximum(open_, close) * 1.001
    bars["low"] = np.minimum(open_, close) * 0.999
    bars.to_csv(path, index=False)
    return path


@dataclass(frozen=True)
class Swept:
    uri: str
    sample: SweepSummary
    walk: SweepSummary


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Swept:
    tmp = tmp_path_factory.mktemp("trading")
    uri = sqlite_uri(tmp / "mlflow.db")
    walk = random_walk(tmp / "walk.csv")
    sample = run_sweep(TrainerConfig.model_validate(SWEEP), tracking_uri=uri, progress=False)
    config = TrainerConfig.model_validate({**SWEEP, "data": {"path": str(walk)}})
    return Swept(uri, sample, run_sweep(config, tracking_uri=uri, progress=False))


def watcher_for(uri: str, experiment: str, dsr: bool = True) -> tuple[Watcher, MlflowTracking]:
    selection: dict[str, object] = {"fold_metric": "test_ic", "blocks": 4}
    if dsr:
        selection.update(sharpe_metric="oos_sharpe", min_dsr=0.95)
    rule = {
        "name": "ic",
        "experiments": [experiment],
        "metric": "avg_test_ic",
        "trigger": "run_finished",
        "selection": selection,
    }
    tracking = MlflowTracking(uri)
    settings = WatcherSettings(tracking_uri=uri, rules=[rule], http={"enabled": False})
    return Watcher(settings, tracking), tracking


def selection_after_a_pass(uri: str, experiment: str) -> dict[str, object]:
    # the DSR costs no tracking call: a dry pass with it makes the calls of one without
    calls = []
    for dsr in (False, True):
        watcher, tracking = watcher_for(uri, experiment, dsr)
        assert watcher.run_pass(dry_run=True).ok
        calls.append(dict(tracking.calls_by_method))
    assert calls[0] == calls[1]
    watcher, _ = watcher_for(uri, experiment)
    assert watcher.run_pass().ok
    exp = mlflow.MlflowClient(uri).get_experiment_by_name(experiment)
    assert exp is not None
    return json.loads(exp.tags["podium.selection"])


def test_the_planted_signal_survives_deflation_and_the_random_walk_does_not(swept: Swept) -> None:
    """Sample: the leader's avg_test_ic > 0.1, DSR > 0.95, a production candidate. Random walk:
    |avg_test_ic| < 0.05, DSR under 0.9 and the sample's, no production candidate, and why."""
    client = mlflow.MlflowClient(swept.uri)
    found = {}
    for name, summary in (("sample", swept.sample), ("walk", swept.walk)):
        assert len(summary.finished) == TRIALS
        tag = selection_after_a_pass(swept.uri, summary.experiment_name)
        assert tag["sharpe_metric"] == "oos_sharpe"
        assert tag["trials"] == TRIALS
        leader = client.search_runs([summary.experiment_id], "tags.model_rank = '1'")[0]
        assert tag["leader_sharpe"] == pytest.approx(leader.data.metrics["oos_sharpe"], rel=1e-5)
        candidates = client.search_runs([summary.experiment_id], "tags.production_candidate = 'true'")
        found[name] = (leader.data.metrics["avg_test_ic"], tag, len(candidates))
    ic, tag, candidates = found["sample"]
    assert ic > 0.1
    assert tag["dsr"] > 0.95  # type: ignore[operator]
    assert candidates > 0
    ic, walk_tag, candidates = found["walk"]
    assert abs(ic) < 0.05
    assert walk_tag["dsr"] < 0.9  # type: ignore[operator]
    assert walk_tag["dsr"] < tag["dsr"]  # type: ignore[operator]
    assert candidates == 0


def test_a_run_carries_its_out_of_sample_path_as_files(swept: Swept, tmp_path: Path) -> None:
    """oos_returns.csv has a row per out-of-sample bar whose strategy returns give the run's
    oos_sharpe; the equity chart is a PNG; params say the bars per year and the cost; the
    table printed after the sweep shows the IC and the Sharpe ratio."""
    client = mlflow.MlflowClient(swept.uri)
    run = client.get_run(swept.sample.best(1)[0].run_id)
    assert float(run.data.params["periods_per_year"]) == pytest.approx(24 * 365.25, rel=1e-3)
    assert run.data.params["cost_bps"] == "0"
    path = Path(client.download_artifacts(run.info.run_id, "oos_returns.csv", str(tmp_path)))
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == run.data.metrics["oos_bars"]
    s = np.array([float(r["strategy_return"]) for r in rows])
    ppy = float(run.data.params["periods_per_year"])
    assert s.mean() / s.std(ddof=1) * np.sqrt(ppy) == pytest.approx(run.data.metrics["oos_sharpe"], rel=1e-5)
    png = Path(client.download_artifacts(run.info.run_id, "oos_equity.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = io.StringIO()
    print_summary(swept.sample, 3, out)
    header = next(line for line in out.getvalue().splitlines() if line.startswith("rank"))
    assert header.split()[-5:-3] == ["avg_test_ic", "oos_sharpe"]  # before the hyperparameters
    folds = json.loads(run.data.tags["podium.folds"])
    assert len(folds["test_ic"]) == len(folds["test_sharpe"]) == run.data.metrics["num_folds"]


@pytest.mark.parametrize(("sharpe_metric", "code"), [("oos_sharpee", 2), ("oos_sharpe", 0)])
def test_once_exits_2_naming_a_sharpe_metric_no_run_logs(
    swept: Swept, tmp_path: Path, sharpe_metric: str, code: int
) -> None:
    """A rule whose selection.sharpe_metric no ranked run has (a typo) cannot be checked before
    the runs are read: `--once` ranks, then exits 2 with one line naming the key; the metric
    the runs log exits 0."""
    config = tmp_path / "watcher.yaml"
    rule = {
        "name": "ic-once",
        "experiments": [swept.walk.experiment_name],
        "metric": "avg_test_ic",
        "selection": {"fold_metric": "test_ic", "blocks": 4, "sharpe_metric": sharpe_metric},
    }
    config.write_text(
        yaml.safe_dump({"tracking_uri": swept.uri, "http": {"enabled": False}, "rules": [rule]})
    )
    done = subprocess.run(
        [sys.executable, "-m", "watcher", "--once", "--config", str(config), "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == code, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    if code == 2:
        assert len(errors) == 1
        assert "selection.sharpe_metric 'oos_sharpee'" in errors[0]
        assert swept.walk.experiment_name in errors[0]
    else:
        assert errors == []
