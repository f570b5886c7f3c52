"""`python -m trainer`: exit codes and one clear message for every user mistake."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import structlog

from tests.support.trainer_cli import error_line, store_untouched
from trainer.cli import main
from trainer.sample import SAMPLE_BARS, sample_bars


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


@pytest.fixture
def bars_csv(tmp_path: Path) -> Path:
    path = tmp_path / "bars.csv"
    sample_bars(n_bars=24 * 40).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--trials", "0"], "argument --trials: must be at least 1"),
        (["train", "--jobs", "x"], "argument --jobs: 'x' is not a whole number"),
        (["train", "--window", "sideways"], "argument --window"),
        (["train", "--seed", "-1"], "argument --seed: must be at least 0, got -1"),
        (["train", "--horizon", "0"], "argument --horizon: must be at least 1, got 0"),
        (["train", "--horizon", "1.5"], "argument --horizon: '1.5' is not a whole number"),
        (["train", "--embargo", "-2"], "argument --embargo: must be at least 0, got -2"),
        (["train", "--embargo", "0.5"], "argument --embargo: '0.5' is not a whole number"),
        (["train", "--cost-bps", "-1"], "argument --cost-bps: must be a number of basis points, 0 or more"),
        (["train", "--cost-bps", "ten"], "argument --cost-bps: 'ten' is not a number"),
        (["train", "--cost-bps", "nan"], "argument --cost-bps: must be a number of basis points"),
        (["sample-data", "--out", "never.csv", "--seed", "-1"], "argument --seed: must be at least 0"),
        (["sample-data"], "--out"),
    ],
)
def test_bad_option_exits_2_naming_it(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str], sqlite_uri: str
) -> None:
    """A bad command-line value exits 2 with argparse's message naming the option."""
    code, err = _run(argv, capsys)
    assert code == 2
    assert expected in error_line(err)
    assert store_untouched(sqlite_uri)


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("trails: 3\n", "unknown key 'trails'"),
        ("cost_bps: -2\n", "cost_bps: Input should be greater than or equal to 0"),
        ("cost_bps: cheap\n", "cost_bps: Input should be a valid number"),
        ("walk_forward: {train_month: 3}\n", "unknown key 'walk_forward.train_month'"),
        ("search_space:\n  max_dept: {type: int, low: 1, high: 3}\n", "unknown hyperparameter(s) max_dept"),
        (
            "search_space:\n  n_estimators: {type: int, low: 9, high: 3}\n",
            "low (9) must not be above high (3)",
        ),
        ("trials: [1\n", "not valid YAML at line"),
        ("trials: 0\n", "trials: Input should be greater than or equal to 1"),
        ("seed: -1\n", "seed: Input should be greater than or equal to 0"),
        ("importance: {seed: -3}\n", "importance.seed: Input should be greater than or equal to 0"),
        (
            "search_space:\n  n_estimators: 50\n  subsample: {type: float, low: 0.5, high: 1.5}\n",
            "search_space.subsample.high: 1.5 is not a number > 0 and <= 1",
        ),
        (
            "search_space:\n  n_estimators: 50\n  learning_rate: 0\n",
            "search_space.learning_rate: value 0 is not a number > 0",
        ),
        (
            "search_space:\n  n_estimators: 50\n  max_depth: {type: int, low: -1, high: 3}\n",
            "search_space.max_depth.low: -1 is not a whole number >= 0",
        ),
        (
            "search_space:\n  n_estimators: 0\n",
            "search_space.n_estimators: value 0 is not a whole number >= 1",
        ),
        (
            "search_space:\n  n_estimators: 9\n  colsample_bytree: {type: choice, values: [0.5, 0]}\n",
            "search_space.colsample_bytree: value 0 is not a number > 0 and <= 1",
        ),
        (
            "search_space:\n  n_estimators: 9\n  reg_alpha: {type: float, low: -0.1, high: 1}\n",
            "search_space.reg_alpha.low: -0.1 is not a number >= 0",
        ),
        (
            "search_space:\n  n_estimators: 9\n  gamma: -2\n  min_child_weight: -1\n",
            "search_space.gamma: value -2 is not a number >= 0",
        ),
        ("xgboost: {objective: 'binary:logistic'}\n", "xgboost.objective: Input should be"),
        ("walk_forward: {min_test_rows: 0}\n", "walk_forward.min_test_rows: Input should be greater"),
        ("horizon: 0\n", "horizon: Input should be greater than or equal to 1"),
        ("horizon: 2.5\n", "horizon: Input should be a valid integer"),
        ("embargo: -1\n", "embargo: Input should be greater than or equal to 0"),
        (
            "search_space:\n  n_estimators: 9\n  subsample: true\n",
            "search_space.subsample: true is a boolean, not a hyperparameter value",
        ),
        (
            "search_space:\n  n_estimators: 9\n  colsample_bytree: {type: choice, values: [0.5, false]}\n",
            "search_space.colsample_bytree.values: false is a boolean",
        ),
        (
            "search_space:\n  n_estimators: 9\n  max_depth: 3.5\n",
            "search_space.max_depth: 3.5 is not a whole number",
        ),
        (
            "search_space:\n  n_estimators: {type: int, low: 5.0, high: 9.5}\n",
            "search_space.n_estimators.high: 9.5 is not a whole number",
        ),
    ],
)
def test_bad_config_exits_2_naming_file_and_key(
    tmp_path: Path, yaml_text: str, expected: str, capsys: pytest.CaptureFixture[str], sqlite_uri: str
) -> None:
    """A config file with an unknown key or a bad value exits 2 naming the file and the key."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    code, err = _run(["train", "--config", str(path)], capsys)
    assert code == 2
    line = error_line(err)
    assert expected in line
    assert str(path) in line
    assert store_untouched(sqlite_uri)


@pytest.mark.parametrize(
    ("encoded", "byte"),
    [("caf\u00e9: 1\n".encode("latin-1"), "0xe9"), ("trials: 1\n".encode("utf-16"), "0xff")],
)
def test_config_file_not_in_utf8_exits_2_naming_it(
    tmp_path: Path, encoded: bytes, byte: str, capsys: pytest.CaptureFixture[str], sqlite_uri: str
) -> None:
    """A latin-1 or UTF-16 config file exits 2 with one line naming the file, no traceback."""
    path = tmp_path / "encoded.yaml"
    path.write_bytes(encoded)
    code, err = _run(["train", "--config", str(path), "--trials", "1", "--jobs", "1"], capsys)
    assert code == 2
    line = error_line(err)
    assert f"config file {path} is not UTF-8 text (byte {byte}" in line
    assert store_untouched(sqlite_uri)


def test_whole_floats_for_integer_hyperparameters_train_and_price_holes_are_filled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sqlite_uri: str
) -> None:
    """`max_depth: 3.0` and `max_leaves: [8.0]` reach XGBoost as ints, so the trial trains; the
    file's NaN closes are filled and counted in param `prices_filled`."""
    bars = sample_bars(n_bars=24 * 130)
    bars.loc[bars.index[300::40], "close"] = float("nan")
    path = tmp_path / "holes.csv"
    bars.to_csv(path, index=False)
    config = tmp_path / "c.yaml"
    config.write_text(
        "importance: {enabled: false}\nsearch_space:\n  n_estimators: 5.0\n  max_depth: 3.0\n"
        "  max_leaves: {type: choice, values: [8.0]}\n"
    )
    argv = ["train", "--config", str(config), "--data", str(path), "--trials", "1", "--jobs", "1"]
    code, err = _run(argv, capsys)
    assert code == 0, err
    client = mlflow.MlflowClient(sqlite_uri)
    (experiment,) = [e for e in client.search_experiments() if e.name.startswith("wf_xgboost_holes_")]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["n_estimators"], params["max_depth"], params["max_leaves"]) == ("5", "3", "8")
    assert params["prices_filled"] == str(len(bars.index[300::40]))
    assert params["dropped_empty_features"] == "0"
    assert "prices_filled" in err
    assert "column=close" in err


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--config pointing nowhere exits 2 naming the file."""
    code, err = _run(["train", "--config", str(tmp_path / "none.yaml")], capsys)
    assert code == 2
    assert "cannot read config file" in error_line(err)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_file", "does not exist"),
        ("missing_time_column", "no time column 'ts'"),
        ("missing_target", "no target column 'label'"),
        ("text_target", "target column 'label' in"),
        ("duplicates", "duplicate timestamp"),
        ("too_little", "need 4 calendar months, the usable rows cover 2 (2023-01 .. 2023-02)"),
        ("no_time_column", "has no time column: none is named timestamp, time, datetime, date, ts"),
        ("several_time_columns", "several time columns ('timestamp', 'ts')"),
        ("bad_time_value", "a value that is not a time: 'soon' in row 4"),
        ("bad_number", "OHLCV column 'Close' in"),
        ("min_test_rows_too_high", "a test window of 1 month(s) needs at least 5000 rows"),
        ("ambiguous_dates", "time column 'timestamp' in {path} reads both day-first and month-first"),
        ("constant_target", "target column 'label' in {path} is constant"),
        ("mostly_empty_close", "OHLCV column 'close' in {path} is mostly empty"),
    ],
)
def test_bad_data_exits_2_with_one_message_and_no_run(
    case: str,
    expected: str,
    bars_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sqlite_uri: str,
) -> None:
    """Bad data exits 2 with one message naming file and column, before any MLflow run exists."""
    argv = ["train", "--data", str(bars_csv), "--trials", "1", "--jobs", "1"]
    frame = pd.read_csv(bars_csv)
    if case == "missing_file":
        argv[2] = str(tmp_path / "nope.parquet")
    elif case == "missing_time_column":
        argv += ["--time-column", "ts"]
    elif case == "missing_target":
        argv += ["--target", "label"]
    elif case == "text_target":
        frame.assign(label="up").to_csv(bars_csv, index=False)
        argv += ["--target", "label"]
    elif case == "duplicates":
        pd.concat([frame, frame.iloc[[10]]]).to_csv(bars_csv, index=False)
    elif case == "no_time_column":
        frame.rename(columns={"timestamp": "moment"}).to_csv(bars_csv, index=False)
    elif case == "several_time_columns":
        frame.assign(ts=frame["timestamp"]).to_csv(bars_csv, index=False)
    elif case == "bad_time_value":
        frame.assign(timestamp=frame["timestamp"].where(frame.index != 3, "soon")).to_csv(
            bars_csv, index=False
        )
    elif case == "bad_number":
        frame = frame.rename(columns={"close": "Close"}).astype({"Close": str})
        frame.loc[99, "Close"] = "12,5"
        frame.to_csv(bars_csv, index=False)
        expected += f" {bars_csv} is not numeric: '12,5' in row 100"
    elif case == "min_test_rows_too_high":
        bars = sample_bars(n_bars=24 * 130)
        bars.to_csv(bars_csv, index=False)
        argv += ["--min-test-rows", "5000"]
    elif case == "ambiguous_dates":  # days 1..12 only: 01/02 fits the 1st of February and the 2nd of January
        days = frame.iloc[: 24 * 12].assign(timestamp=lambda f: pd.to_datetime(f["timestamp"]))
        days.assign(timestamp=days["timestamp"].dt.strftime("%d/%m/%Y %H:%M")).to_csv(bars_csv, index=False)
    elif case == "constant_target":
        frame.assign(label=1.5).to_csv(bars_csv, index=False)
        argv += ["--target", "label"]
    elif case == "mostly_empty_close":
        frame.assign(close=frame["close"].where(frame.index % 4 == 0)).to_csv(bars_csv, index=False)
    code, err = _run(argv, capsys)
    assert code == 2
    line = error_line(err)
    assert expected.format(path=bars_csv) in line
    assert (str(tmp_path / "nope.parquet") if case == "missing_file" else str(bars_csv)) in line
    assert store_untouched(sqlite_uri)


def test_sample_data_writes_the_builtin_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`sample-data --out` writes the built-in sample as CSV with OHLCV columns."""
    out = tmp_path / "sub" / "sample.csv"
    assert main(["sample-data", "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["timestamp", "open", "high", "low", "close", "volume"]
    assert len(frame) == SAMPLE_BARS


def test_module_entry_point_exits_2_without_traceback(tmp_path: Path) -> None:
    """`python -m trainer train` on a missing file: exit 2, one line on stderr, no traceback."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "train", "--data", str(tmp_path / "missing.csv")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: data file {tmp_path / 'missing.csv'} does not exist"
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("direction_with_target", "--task direction predicts whether the next return"),
        ("classification_without_target", "--task classification needs --target COL"),
        ("three_classes", "target column 'label' in {path} has 3 distinct values (-1, 0, 1)"),
        ("always_up", "--task direction: the next return in {path} is above zero in every row"),
        ("unknown_task", "argument --task: invalid choice: 'sideways'"),
    ],
)
def test_a_task_the_data_or_options_do_not_fit_exits_2_with_one_line_and_no_run(
    case: str, expected: str, bars_csv: Path, capsys: pytest.CaptureFixture[str], sqlite_uri: str
) -> None:
    """Direction and classification refusals: one line naming the option (and the file and
    column where there is one), exit 2, nothing written to the store."""
    argv = ["train", "--data", str(bars_csv), "--trials", "1", "--jobs", "1"]
    frame = pd.read_csv(bars_csv)
    if case == "direction_with_target":
        frame.assign(label=frame.index % 2).to_csv(bars_csv, index=False)
        argv += ["--task", "direction", "--target", "label"]
    elif case == "classification_without_target":
        argv += ["--task", "classification"]
    elif case == "three_classes":
        frame.assign(label=frame.index % 3 - 1).to_csv(bars_csv, index=False)
        argv += ["--task", "classification", "--target", "label"]
    elif case == "always_up":
        rising = 100.0 * 1.001 ** np.arange(len(frame))
        frame.assign(open=rising, high=rising * 1.001, low=rising * 0.999, close=rising).to_csv(
            bars_csv, index=False
        )
        argv += ["--task", "direction"]
    elif case == "unknown_task":
        argv += ["--task", "sideways"]
    code, err = _run(argv, capsys)
    assert code == 2
    if case == "unknown_task":  # argparse: usage, then one error line
        assert expected in err.strip().splitlines()[-1]
    else:
        assert expected.format(path=bars_csv) in error_line(err)
    assert store_untouched(sqlite_uri)
