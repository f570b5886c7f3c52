"""`python -m trainer retrain`: one new run without the weak features, on a real sqlite store."""

from __future__ import annotations

import csv
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Run

from tests.support.mlflow_server import sqlite_uri
from trainer import cli, retrain
from trainer.errors import InputError

SIGNAL = ("sig a", "sig_b", "Größe %")  # awkward names on purpose: they must survive a round trip
NOISE = tuple(f"noise_{i}" for i in range(9))
CONFIG = """
trials: 1
jobs: 1
walk_forward: {train_months: 3, test_months: 1}
importance: {n_repeats: 2, seed: 3}
search_space:
  n_estimators: {type: int, low: 25, high: 25}
  max_depth: {type: int, low: 3, high: 3}
  learning_rate: {type: float, low: 0.3, high: 0.3}
"""


def write_data(path: Path, days: int = 240, seed: int = 0) -> Path:
    """Daily rows: y depends on the three SIGNAL columns only."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {"timestamp": pd.date_range("2024-01-01", periods=days, freq="D").strftime("%Y-%m-%d")}
    )
    for name in (*SIGNAL, *NOISE):
        frame[name] = rng.normal(size=days)
    frame["y"] = 2 * frame[SIGNAL[0]] + frame[SIGNAL[1]] - frame[SIGNAL[2]] + rng.normal(scale=0.3, size=days)
    frame.to_csv(path, index=False)
    return path


def train_source(tmp_path: Path, experiment: str, config: str = CONFIG) -> Run:
    """One trial logged by the real CLI; returns its run."""
    config_path = tmp_path / f"{experiment}.yaml"
    config_path.write_text(config, encoding="utf-8")
    data_path = write_data(tmp_path / "data.csv")
    code = cli.main(
        [
            "train",
            "--config",
            str(config_path),
            "--data",
            str(data_path),
            "--target",
            "y",
            "--experiment",
            experiment,
            "--no-progress",
        ]
    )
    assert code == 0
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run


def importance_of(run_id: str, tmp_path: Path) -> dict[str, float]:
    local = mlflow.MlflowClient().download_artifacts(run_id, "feature_importance.csv", str(tmp_path))
    with open(local, encoding="utf-8", newline="") as handle:
        return {row["feature"]: float(row["importance_mean"]) for row in csv.DictReader(handle)}


def retrained_runs(source: Run) -> list[Run]:
    client = mlflow.MlflowClient()
    return client.search_runs(
        [source.info.experiment_id], filter_string=f"tags.retrained_from = '{source.info.run_id}'"
    )


def new_run(out: str) -> Run:
    """The run that `retrain` reported creating."""
    match = re.search(r" as run ([0-9a-f]{32}) ", out)
    assert match, out
    return mlflow.MlflowClient().get_run(match.group(1))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One real sqlite store shared by this module's tests (a fresh store per test costs ~5 s)."""
    workdir = tmp_path_factory.mktemp("retrain")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", sqlite_uri(workdir / "mlflow.db"))
        patch.chdir(workdir)
        yield workdir


@pytest.fixture(scope="module")
def source(store: Path) -> Run:
    return train_source(store, "retrain_source")


def test_drop_below_trains_one_run_without_the_weak_features(
    source: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Features under X are gone; same experiment, hyperparameters and data; tagged and listed."""
    scores = importance_of(source.info.run_id, tmp_path / "src")
    threshold = 0.01
    weak = {name for name, value in scores.items() if value < threshold}
    assert weak
    assert not weak & set(SIGNAL)

    code = cli.main(["retrain", "--run-id", source.info.run_id, "--drop-below", str(threshold)])

    assert code == 0
    new = new_run(capsys.readouterr().out)
    assert new.data.tags["retrained_from"] == source.info.run_id
    assert new.info.status == "FINISHED"
    assert new.info.experiment_id == source.info.experiment_id
    params = new.data.params
    assert int(params["total_features"]) == len(scores) - len(weak)
    assert set(params["dropped_features"].split(",")) == weak
    for name in ("n_estimators", "max_depth", "learning_rate", "trial_seed", "data_source", "target"):
        assert params[name] == source.data.params[name]
    kept = importance_of(new.info.run_id, tmp_path / "new")
    assert set(kept) == set(scores) - weak
    assert any(k.startswith("importance_") for k in new.data.metrics)
    dropped_csv = mlflow.MlflowClient().download_artifacts(
        new.info.run_id, "dropped_features.csv", str(tmp_path)
    )
    with open(dropped_csv, encoding="utf-8", newline="") as handle:
        assert {row["feature"] for row in csv.DictReader(handle)} == weak


def test_exclude_drops_exactly_the_named_features_even_awkward_ones(
    source: Run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["retrain", "--run-id", source.info.run_id, "--exclude", "Größe %, noise_3"])

    assert code == 0
    new = new_run(capsys.readouterr().out)
    assert new.data.params["dropped_features"] == "Größe %,noise_3"
    assert new.data.params["total_features"] == str(len(SIGNAL) + len(NOISE) - 2)
    kept = importance_of(new.info.run_id, tmp_path / "new")
    assert "Größe %" not in kept
    assert "sig a" in kept
    assert new.data.tags["retrained_from"] == source.info.run_id


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--exclude", "noise_99"], "has no feature 'noise_99'"),
        (["--exclude", "sig  a"], "did you mean 'sig a'"),
        (["--drop-below", "1e9"], "would leave run"),
        (["--drop-below=-1e9"], "nothing to drop"),
        (["--drop-below", "nan"], "--drop-below must be a finite number, not nan"),
        ([], "nothing to drop"),
    ],
)
def test_bad_requests_exit_2_with_a_message_and_create_no_run(
    source: Run, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    before = len(retrained_runs(source))

    code = cli.main(["retrain", "--run-id", source.info.run_id, *args])

    assert code == 2
    assert message in capsys.readouterr().err
    assert len(retrained_runs(source)) == before


def test_unknown_run_id_exits_2_naming_it(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["retrain", "--run-id", "0123456789abcdef0123456789abcdef", "--drop-below", "0.1"])

    assert code == 2
    assert "run 0123456789abcdef0123456789abcdef not found" in capsys.readouterr().err


def test_a_run_without_importance_exits_2(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = train_source(
        store,
        "no_importance",
        CONFIG.replace("importance: {n_repeats: 2, seed: 3}", "importance: {enabled: false}"),
    )

    code = cli.main(["retrain", "--run-id", source.info.run_id, "--exclude", "noise_1"])

    assert code == 2
    assert "has no feature_importance.csv artifact" in capsys.readouterr().err


def test_a_run_whose_importance_was_skipped_says_why(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = train_source(store, "skipped_importance", CONFIG.replace("seed: 3}", "seed: 3, min_rows: 1000}"))
    assert source.data.tags["importance_skipped"].startswith("only ")

    code = cli.main(["retrain", "--run-id", source.info.run_id, "--drop-below", "0.1"])

    assert code == 2
    assert "it was skipped (only " in capsys.readouterr().err


@pytest.mark.parametrize(
    ("drop_below", "exclude", "kept", "dropped"),
    [
        (0.5, [], ("a", "c"), ("b",)),
        (None, ["c"], ("a", "b"), ("c",)),
        (0.5, ["a"], ("c",), ("a", "b")),
        (0.0, [], ("a", "b", "c"), None),  # nothing below 0
    ],
)
def test_plan_drop_keeps_column_order(
    drop_below: float | None, exclude: list[str], kept: tuple[str, ...], dropped: tuple[str, ...] | None
) -> None:
    scores = {"a": 0.9, "b": 0.1, "c": 0.5}
    if dropped is None:
        with pytest.raises(InputError, match="nothing to drop"):
            retrain.plan_drop(["a", "b", "c"], scores, drop_below=drop_below, exclude=exclude, run_id="r")
        return
    plan = retrain.plan_drop(["a", "b", "c"], scores, drop_below=drop_below, exclude=exclude, run_id="r")
    assert plan.kept == kept
    assert tuple(name for name, _ in plan.dropped) == dropped


def test_parse_exclude_trims_and_skips_empty_names() -> None:
    assert retrain.parse_exclude(" a, b ,,c ") == ["a", "b", "c"]
    assert retrain.parse_exclude(None) == []


def test_a_run_whose_data_file_is_gone_exits_2_naming_it(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = store / "moved"
    workdir.mkdir()
    source = train_source(workdir, "moved_data")
    (workdir / "data.csv").rename(workdir / "elsewhere.csv")

    code = cli.main(["retrain", "--run-id", source.info.run_id, "--exclude", "noise_1"])

    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot reload the data of run {source.info.run_id}" in err
    assert "data.csv does not exist" in err


def test_a_failure_after_the_new_run_exists_marks_it_failed(
    source: Run, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An artifact upload that fails once the new run exists: exit 1 and a FAILED run, not RUNNING."""
    blocker = store / "a_file_not_a_directory"
    blocker.write_text("")
    experiment_id = int(source.info.experiment_id)
    db = sqlite3.connect(store / "mlflow.db")
    try:
        (location,) = db.execute(
            "SELECT artifact_location FROM experiments WHERE experiment_id = ?", (experiment_id,)
        ).fetchone()
        with db:  # new runs of the experiment get an artifact root no one can create
            db.execute(
                "UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                (str(blocker / "artifacts"), experiment_id),
            )
        before = {r.info.run_id for r in retrained_runs(source)}
        code = cli.main(["retrain", "--run-id", source.info.run_id, "--exclude", "noise_1"])
    finally:
        with db:
            db.execute(
                "UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                (location, experiment_id),
            )
        db.close()

    assert code == 1
    assert "error: uploading artifacts" in capsys.readouterr().err
    (new,) = [r for r in retrained_runs(source) if r.info.run_id not in before]
    assert new.info.status == "FAILED"
