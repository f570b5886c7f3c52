"""``--search random|tpe`` on a real MLflow server: random search's trials as before, TPE resumed
from the experiment's finished runs, trial names that go on, and tag ``podium.hyperparameters``.

Sweeps are tiny (few small trees, three folds, no permutation importance); one experiment of
12 + 12 TPE trials serves the resume checks and the tag's.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import mlflow
import pytest
import yaml
from mlflow.entities import Metric, Param, RunTag
from structlog.testing import capture_logs

from tests.support.mlflow_server import ServerHandle
from tests.support.proxy import Proxy
from tests.support.ray_cluster import RayCluster
from tests.support.trainer_cli import error_line, store_untouched
from trainer import cli, hyperimportance
from trainer.config import FloatRange, IntRange, TrainerConfig, sample_trial
from trainer.hyperimportance import TAG
from trainer.search import Covered, TpeSampler, next_index, parse_param, tpe_problem
from trainer.sweep import SweepSummary, print_summary, run_sweep
from trainer.tracking import READ_ATTEMPTS

pytestmark = [pytest.mark.server, pytest.mark.slow]

TINY: dict[str, Any] = {
    "jobs": 1,
    "walk_forward": {"train_months": 6, "test_months": 6},
    "importance": {"enabled": False},
    "search_space": {
        "n_estimators": {"type": "int", "low": 5, "high": 15},
        "max_depth": {"type": "int", "low": 2, "high": 4},
        "learning_rate": {"type": "float", "low": 0.02, "high": 0.3, "log": True},
    },
}
VARIED = ("learning_rate", "max_depth", "n_estimators")


def tiny(**changes: Any) -> TrainerConfig:
    return TrainerConfig.model_validate({**TINY, "experiment": f"search_{uuid4().hex[:8]}", **changes})


def runs_by_name(uri: str, experiment_id: str) -> dict[str, mlflow.entities.Run]:
    return {r.info.run_name: r for r in mlflow.MlflowClient(uri).search_runs([experiment_id])}


def tag_of(uri: str, experiment_id: str) -> dict[str, Any]:
    tags = mlflow.MlflowClient(uri).get_experiment(experiment_id).tags
    return dict(json.loads(tags[TAG]))


def hyperparameters_of(run: mlflow.entities.Run) -> dict[str, Any]:
    space = TINY["search_space"]
    return {name: parse_param(_dist(space[name]), run.data.params[name]) for name in space}


def _dist(raw: dict[str, Any]) -> IntRange | FloatRange:
    return IntRange.model_validate(raw) if raw["type"] == "int" else FloatRange.model_validate(raw)


def log_foreign_run(
    uri: str, experiment_id: str, name: str, params: dict[str, str], metric: float | None
) -> None:
    """A FINISHED run logged by hand, as another tool or an older space would leave one."""
    client = mlflow.MlflowClient(uri)
    run = client.create_run(experiment_id, run_name=name)
    metrics = [] if metric is None else [Metric("avg_test_r2", metric, 0, 0)]
    client.log_batch(
        run.info.run_id,
        metrics=metrics,
        params=[Param(k, v) for k, v in params.items()],
        tags=[RunTag("origin", "test")],
    )
    client.set_terminated(run.info.run_id, "FINISHED")


# --------------------------------------------------------------------------------------------
# Random search
# --------------------------------------------------------------------------------------------


def test_random_search_keeps_each_trials_params_and_a_second_sweep_goes_on(
    sqlite_server: ServerHandle,
) -> None:
    """Trial N of a random search is ``sample_trial(space, seed, N)``, in a new experiment as
    before; a second sweep into it names its trials after the highest and draws theirs."""
    config = tiny(trials=3, seed=7)
    first = run_sweep(config, tracking_uri=sqlite_server.url, progress=False)
    second = run_sweep(
        config.model_copy(update={"trials": 2}), tracking_uri=sqlite_server.url, progress=False
    )
    runs = runs_by_name(sqlite_server.url, first.experiment_id)
    assert sorted(runs) == [f"trial_{i}" for i in range(5)]
    for i in range(5):
        expected = sample_trial(config.search_space, 7, i)
        assert {k: runs[f"trial_{i}"].data.params[k] for k in expected} == {
            k: str(v) for k, v in expected.items()
        }
    assert second.history is not None
    assert not second.history.resumed  # random search reads the run names only
    assert second.history.read == 0
    # fewer than 8 runs: the tag says why there is no importance
    assert "8" in tag_of(sqlite_server.url, first.experiment_id)["reason"]


# --------------------------------------------------------------------------------------------
# TPE, resumed
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resumed:
    config: TrainerConfig
    first: SweepSummary
    second: SweepSummary
    logs: list[dict[str, Any]]
    printed: str


@pytest.fixture(scope="module")
def resumed(sqlite_server: ServerHandle) -> Resumed:
    """12 TPE trials, three runs logged by hand (outside the space, another task, no metric),
    then 12 more TPE trials into the same experiment."""
    config = tiny(trials=12, search="tpe", seed=3)
    first = run_sweep(config, tracking_uri=sqlite_server.url, progress=False)
    base = {"n_estimators": "10", "max_depth": "3", "task": "regression"}
    uri, exp = sqlite_server.url, first.experiment_id
    log_foreign_run(uri, exp, "wide", {**base, "learning_rate": "0.9"}, 0.5)
    log_foreign_run(uri, exp, "direction", {**base, "learning_rate": "0.1", "task": "direction"}, 0.6)
    log_foreign_run(uri, exp, "unscored", {**base, "learning_rate": "0.1"}, None)
    with capture_logs() as logs:
        second = run_sweep(config, tracking_uri=uri, progress=False)
    out = io.StringIO()
    print_summary(second, 5, out)
    return Resumed(config, first, second, logs, out.getvalue())


def test_a_second_tpe_sweep_reads_the_first_and_names_its_trials_after_it(
    resumed: Resumed, sqlite_server: ServerHandle
) -> None:
    assert resumed.first.experiment_id == resumed.second.experiment_id
    history = resumed.second.history
    assert history is not None
    assert (history.read, len(history.covered)) == (15, 12)
    assert history.left_out == {"outside_space": 1, "other_task": 1, "no_metric": 1}
    (event,) = [e for e in resumed.logs if e["event"] == "search_resumed"]
    assert (event["read"], event["kept"], event["outside_space"], event["first_trial"]) == (
        15,
        12,
        1,
        "trial_12",
    )
    assert "Resumed from 15 finished runs of the experiment: 12 kept" in resumed.printed
    assert "1 outside_space" in resumed.printed
    names = [o.index for o in resumed.second.outcomes]
    assert names == list(range(12, 24))
    runs = runs_by_name(sqlite_server.url, resumed.first.experiment_id)
    assert {f"trial_{i}" for i in range(24)} <= set(runs)
    assert {runs[f"trial_{i}"].info.status for i in range(24)} == {"FINISHED"}


def test_the_resumed_study_used_the_history(resumed: Resumed, sqlite_server: ServerHandle) -> None:
    """A fresh study with the same seed asks other params than the resumed sweep's first trial:
    the 12 runs read replaced TPE's random start-up trials."""
    fresh = TpeSampler(resumed.config.search_space, resumed.config.seed, [])
    runs = runs_by_name(sqlite_server.url, resumed.first.experiment_id)
    # the first sweep was a fresh study with this seed, so fresh asks repeat its trials
    assert fresh.ask(0) == hyperparameters_of(runs["trial_0"])
    second_sweep = [hyperparameters_of(runs[f"trial_{i}"]) for i in range(12, 24)]
    fresh_again = TpeSampler(resumed.config.search_space, resumed.config.seed, [])
    fresh_asks = [fresh_again.ask(i) for i in range(12)]
    assert second_sweep[0] != fresh_asks[0]
    assert sum(a != b for a, b in zip(second_sweep, fresh_asks, strict=True)) >= 10


def test_a_tpe_sweep_after_a_short_one_asks_new_trials(sqlite_server: ServerHandle) -> None:
    """Two TPE trials, then two more into the same experiment: the second sweep's history is
    shorter than TPE's random start-up, and its trials are not the first sweep's again. The seed
    is above 2**32, which Optuna's samplers do not take as it is."""
    config = tiny(trials=2, search="tpe", seed=2**33 + 5)
    first = run_sweep(config, tracking_uri=sqlite_server.url, progress=False)
    second = run_sweep(config, tracking_uri=sqlite_server.url, progress=False)
    assert second.history is not None
    assert len(second.history.covered) == 2
    runs = runs_by_name(sqlite_server.url, first.experiment_id)
    assert {runs[f"trial_{i}"].info.status for i in range(4)} == {"FINISHED"}
    earlier = [hyperparameters_of(runs[f"trial_{i}"]) for i in range(2)]
    later = [hyperparameters_of(runs[f"trial_{i}"]) for i in range(2, 4)]
    assert not [params for params in later if params in earlier]


def test_the_tag_names_every_varied_hyperparameter_with_shares_summing_to_one(
    resumed: Resumed, sqlite_server: ServerHandle
) -> None:
    tag = tag_of(sqlite_server.url, resumed.first.experiment_id)
    assert tag == resumed.second.hyperparameters
    assert (tag["metric"], tag["evaluator"], tag["runs"]) == ("avg_test_r2", "fanova", 24)
    assert sorted(tag["importance"]) == sorted(VARIED)
    shares = list(tag["importance"].values())
    assert all(0 <= s <= 1 for s in shares)
    assert math.isclose(sum(shares), 1.0, abs_tol=1e-9)
    assert shares == sorted(shares, reverse=True)
    space = resumed.config.search_space
    for name, (low, high) in tag["best_ranges"].items():
        dist = space[name]
        assert isinstance(dist, IntRange | FloatRange)
        assert dist.low <= low <= high <= dist.high
    # the table after the leaderboard lists them in the tag's order
    table = resumed.printed.split("Hyperparameter importance", 1)[1].splitlines()[2:5]
    assert [line.split()[0] for line in table] == list(tag["importance"])
    raw = mlflow.MlflowClient(sqlite_server.url).get_experiment(resumed.first.experiment_id).tags[TAG]
    assert ": " not in raw
    assert ", " not in raw


def test_learning_rate_outranks_a_narrow_subsample(sqlite_server: ServerHandle) -> None:
    space = {
        "n_estimators": 20,
        "max_depth": 3,
        "learning_rate": {"type": "float", "low": 1e-4, "high": 0.3, "log": True},
        "subsample": {"type": "float", "low": 0.95, "high": 1.0},
    }
    summary = run_sweep(tiny(trials=8, search_space=space), tracking_uri=sqlite_server.url, progress=False)
    tag = tag_of(sqlite_server.url, summary.experiment_id)
    assert list(tag["importance"]) == ["learning_rate", "subsample"], tag
    assert tag["runs"] == 8
    assert len(tag["best_ranges"]["learning_rate"]) == 2


def test_tpe_on_ray_resumes_and_writes_the_tag(
    ray_cluster: RayCluster, sqlite_server: ServerHandle, tmp_path: Path
) -> None:
    """``--backend ray --jobs 2``: the driver asks as actors free up, its names go on after the
    runs already there, and the tag is written."""
    config = tiny(trials=1, search="tpe")
    first = run_sweep(config, tracking_uri=sqlite_server.url, progress=False)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "search": "tpe"}))
    env = {**os.environ, **ray_cluster.env, "MLFLOW_TRACKING_URI": sqlite_server.url}
    env.pop("RAY_ADDRESS", None)
    argv = ["--config", str(path), "--experiment", config.experiment or "", "--trials", "2", "--jobs", "2"]
    argv += ["--no-progress", "--backend", "ray", "--ray-address", ray_cluster.address]
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "train", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Resumed from 1 finished runs of the experiment: 1 kept" in proc.stdout
    runs = runs_by_name(sqlite_server.url, first.experiment_id)
    assert sorted(runs) == [f"trial_{i}" for i in range(3)]
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert "3 finished runs" in tag_of(sqlite_server.url, first.experiment_id)["reason"]


# --------------------------------------------------------------------------------------------
# Bad input and a failing server
# --------------------------------------------------------------------------------------------


def _train(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(["train", "--no-progress", *argv])
    return code, capsys.readouterr().err


def test_an_unknown_search_is_exit_2_naming_the_option(
    sqlite_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _train(["--search", "grid", "--trials", "1"], capsys)
    assert code == 2
    line = error_line(err)
    assert "--search" in line
    assert "grid" in line
    assert store_untouched(sqlite_uri)


def test_a_space_tpe_cannot_take_is_exit_2_naming_the_key(
    sqlite_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = {
        **TINY,
        "search_space": {**TINY["search_space"], "max_leaves": {"type": "choice", "values": [8, 16, 8]}},
    }
    path = tmp_path / "tpe.yaml"
    path.write_text(yaml.safe_dump(raw))
    code, err = _train(["--config", str(path), "--search", "tpe"], capsys)
    assert code == 2
    line = error_line(err)
    assert "search_space.max_leaves" in line
    assert "distinct" in line
    assert store_untouched(sqlite_uri)
    # random search draws from the same space
    config = TrainerConfig.model_validate(raw)
    assert tpe_problem(config.search_space) is not None


def test_a_server_failing_the_resume_read_is_exit_1_with_no_run(
    sqlite_server: ServerHandle, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    proxy = Proxy(sqlite_server.url)
    try:
        proxy.down_endpoints = frozenset({"search"})  # runs/search: the resume read
        monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
        experiment = f"search_down_{uuid4().hex[:8]}"
        code, err = _train(["--search", "tpe", "--trials", "1", "--experiment", experiment], capsys)
        assert code == 1
        line = error_line(err)
        assert "reading the runs of experiment" in line
        assert "503" in line
        assert proxy.refused == READ_ATTEMPTS
        assert not [path for _, path in proxy.requests if path.endswith("runs/create")]
    finally:
        proxy.close()
    exp = mlflow.MlflowClient(sqlite_server.url).get_experiment_by_name(experiment)
    assert exp is not None
    assert mlflow.MlflowClient(sqlite_server.url).search_runs([exp.experiment_id]) == []


# --------------------------------------------------------------------------------------------
# Pure parts
# --------------------------------------------------------------------------------------------


def test_names_go_on_after_the_highest_trial_number() -> None:
    assert next_index([]) == 0
    assert next_index(["trial_3", "trial_11", "trial_2", "retrain_of_x", "trial_x", "mytrial_40"]) == 12


@pytest.mark.parametrize(
    ("raw", "text", "expected"),
    [
        ({"type": "int", "low": 2, "high": 6}, "4", 4),
        ({"type": "int", "low": 2, "high": 6}, "7", None),
        ({"type": "int", "low": 2, "high": 6}, "4.5", None),
        ({"type": "float", "low": 0.1234567, "high": 0.5}, "0.1235", 0.1235),
        ({"type": "float", "low": 0.1234567, "high": 0.5}, "0.1234", 0.1234567),  # rounded by random search
        ({"type": "float", "low": 0.2, "high": 0.5}, "0.1", None),
        ({"type": "float", "low": 0.2, "high": 0.5}, "nan", None),
        ({"type": "float", "low": 0.2, "high": 0.5}, "abc", None),
    ],
)
def test_a_logged_param_parses_into_the_space_or_not(raw: dict[str, Any], text: str, expected: Any) -> None:
    assert parse_param(_dist(raw), text) == expected


def test_past_the_cap_fanova_fits_a_sample_and_the_tag_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ranking metric follows learning_rate alone: a sample of the runs still ranks it
    first; ``runs`` and the best ranges cover every run."""
    monkeypatch.setattr(hyperimportance, "MAX_FANOVA_RUNS", 10)
    space = tiny().search_space
    covered = [
        Covered(
            {"learning_rate": 0.02 + 0.01 * i, "max_depth": 2 + i % 3, "n_estimators": 5 + i % 7}, 0.01 * i
        )
        for i in range(16)
    ]
    content = hyperimportance.report(covered, space, "avg_test_r2")
    assert (content["runs"], content["sampled"]) == (16, 10)
    assert next(iter(content["importance"])) == "learning_rate"
    assert content["best_ranges"]["learning_rate"] == [0.15, 0.17]  # the best 3 of all 16
    out = io.StringIO()
    hyperimportance.print_table(content, out)
    assert "a sample of 10 of 16 runs" in out.getvalue()
