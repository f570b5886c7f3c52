"""``--backend ray`` on a real local Ray cluster (one per session) and a real `mlflow server`.

One sweep with a worker killed mid-trial serves most checks: its finished runs carry the whole
contract and the local backend's numbers, the killed trial alone fails, and `retrain --backend
ray` retrains one of its runs. A second, interrupted sweep shows SIGTERM leaves no run RUNNING.
A direction trial with no address (the sweep starts a Ray of its own) shows that path and the
classifier's numbers, equal to the local backend's.
Missing Ray or an unreachable cluster is exit 2 before anything is logged.
"""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from uuid import uuid4

import mlflow
import pytest

from tests.support.mlflow_server import ServerHandle, free_port
from tests.support.ray_cluster import RayCluster
from tests.support.run_contract import (
    ARTIFACTS,
    AVERAGES,
    DATA_PARAMS,
    HYPERPARAMETERS,
    IMPORTANCE_STATS,
    PER_FOLD,
    SMALL_YAML,
)
from trainer import cli
from trainer.config import load_config
from trainer.sweep import run_sweep
from trainer.worker import FAILURE_TAG

pytestmark = [pytest.mark.server, pytest.mark.slow]

BUSY_ACTOR = "ray::TrialActor.run"  # the process title of an actor running a trial


def _trainer(cwd: Path, server: ServerHandle, ray: RayCluster, *args: str) -> subprocess.Popen[str]:
    """``python -m trainer ARGS --backend ray`` against the session's cluster and server."""
    env = {**os.environ, **ray.env, "MLFLOW_TRACKING_URI": server.url}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "trainer", *args, "--backend", "ray", "--ray-address", ray.address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )


def _runs(server: ServerHandle, experiment: str) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(server.url)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    return client.search_runs([exp.experiment_id])


def _busy_worker(ray: RayCluster, proc: subprocess.Popen[str], timeout: float = 240.0) -> int:
    """The pid of a cluster worker in the middle of a trial of ``proc``'s sweep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = ray.worker_pids(BUSY_ACTOR)
        if pids:
            return pids[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("no trial started on the cluster")


@pytest.fixture(scope="module")
def small_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ray-sweep") / "small.yaml"
    path.write_text(SMALL_YAML)
    return path


def _train(config: Path, server: ServerHandle, ray: RayCluster, *args: str) -> subprocess.Popen[str]:
    return _trainer(config.parent, server, ray, "train", "--config", str(config), "--no-progress", *args)


class KilledSweep:
    """A 2-trial sweep on one actor, SIGKILLed in its first trial, and the same 2 trials run
    locally (in this process, while the Ray sweep runs)."""

    def __init__(self, experiment: str, returncode: int, out: str, runs: list[mlflow.entities.Run]) -> None:
        self.experiment, self.returncode, self.out, self.runs = experiment, returncode, out, runs

    def finished(self) -> list[mlflow.entities.Run]:
        return [r for r in self.runs if r.info.status == "FINISHED"]


@pytest.fixture(scope="module")
def killed_sweep(ray_cluster: RayCluster, sqlite_server: ServerHandle, small_config: Path) -> KilledSweep:
    experiment = f"ray_{uuid4().hex[:8]}"
    args = ("--experiment", experiment, "--trials", "2", "--jobs", "1")
    proc = _train(small_config, sqlite_server, ray_cluster, *args)
    local_config = load_config(small_config, {"experiment": f"local_{experiment}", "jobs": 1, "trials": 2})
    with ThreadPoolExecutor(max_workers=1) as pool:
        local = pool.submit(run_sweep, local_config, tracking_uri=sqlite_server.url, progress=False)
        try:
            os.kill(_busy_worker(ray_cluster, proc), signal.SIGKILL)
            out, err = proc.communicate(timeout=400)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert len(local.result().finished) == 2
    assert proc.returncode in (0, 1), err
    return KilledSweep(experiment, proc.returncode, out, _runs(sqlite_server, experiment))


def test_a_worker_killed_mid_trial_fails_only_its_run(killed_sweep: KilledSweep) -> None:
    """SIGKILL to the actor process running a trial: that run ends FAILED with the reason in
    tag failure_reason; a fresh actor takes its place and runs the next trial; exit 1."""
    assert killed_sweep.returncode == 1, killed_sweep.out  # a failed trial: reported, exit 1
    statuses = {r.info.run_name: r.info.status for r in killed_sweep.runs}
    assert statuses == {"trial_0": "FAILED", "trial_1": "FINISHED"}, killed_sweep.out
    failed = next(r for r in killed_sweep.runs if r.info.status == "FAILED")
    assert "Ray worker running this trial died" in failed.data.tags[FAILURE_TAG]
    assert f"trial_0 ({failed.info.run_id}) failed: WorkerDied" in killed_sweep.out


def test_ray_runs_log_the_contract_and_the_local_numbers(
    killed_sweep: KilledSweep, sqlite_server: ServerHandle
) -> None:
    """Every contract name on the finished Ray run, and every metric equal to the local
    backend's for the same seed and trial."""
    finished = {r.info.run_name: r for r in killed_sweep.finished()}
    assert list(finished) == ["trial_1"]
    client = mlflow.MlflowClient(sqlite_server.url)
    local_runs = {r.info.run_name: r for r in _runs(sqlite_server, f"local_{killed_sweep.experiment}")}
    for name, run in finished.items():
        params, metrics = run.data.params, run.data.metrics
        assert set(HYPERPARAMETERS + DATA_PARAMS) <= set(params)
        assert set(AVERAGES + IMPORTANCE_STATS) <= set(metrics)
        assert len([k for k in metrics if k.startswith("importance_")]) == 20 + len(IMPORTANCE_STATS)
        for key in PER_FOLD:
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [0, 1, 2]
        assert set(ARTIFACTS) <= {f.path for f in client.list_artifacts(run.info.run_id)}
        assert run.outputs is not None
        assert len(run.outputs.model_outputs) == 1
        assert run.data.tags["sweep_id"]
        other = local_runs[name]
        assert {k: v for k, v in params.items() if k != "sweep_seed"} == {
            k: v for k, v in other.data.params.items() if k != "sweep_seed"
        }
        assert metrics.keys() == other.data.metrics.keys()
        assert run.data.tags["podium.folds"] == other.data.tags["podium.folds"]
        for key, value in metrics.items():
            assert math.isclose(value, other.data.metrics[key], rel_tol=0, abs_tol=0), key


def test_retrain_on_ray_trains_one_run_with_fewer_features(
    killed_sweep: KilledSweep, ray_cluster: RayCluster, sqlite_server: ServerHandle, small_config: Path
) -> None:
    """`retrain --backend ray --exclude` of a finished Ray run: a new FINISHED run in the same
    experiment, tagged retrained_from, without the excluded features."""
    source = killed_sweep.finished()[0]
    features = source.data.params["feature_names"].split(",")
    dropped = features[:2]
    proc = _trainer(
        small_config.parent,
        sqlite_server,
        ray_cluster,
        "retrain",
        "--run-id",
        source.info.run_id,
        "--exclude",
        ",".join(dropped),
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    match = re.search(r"^new_run_id=([0-9a-f]{32})$", out, re.MULTILINE)
    assert match, out
    new = mlflow.MlflowClient(sqlite_server.url).get_run(match.group(1))
    assert new.info.status == "FINISHED"
    assert new.info.experiment_id == source.info.experiment_id
    assert new.data.tags["retrained_from"] == source.info.run_id
    assert int(new.data.params["total_features"]) == int(source.data.params["total_features"]) - 2
    assert set(new.data.params["dropped_features"].split(",")) == set(dropped)
    assert not set(dropped) & set(new.data.params["feature_names"].split(","))
    assert "avg_test_r2" in new.data.metrics


def test_sigterm_to_the_driver_leaves_no_run_running(
    ray_cluster: RayCluster, sqlite_server: ServerHandle, small_config: Path
) -> None:
    """SIGTERM while trials run on two actors: those runs end KILLED, the rest never start,
    and the driver exits non-zero."""
    experiment = f"ray_{uuid4().hex[:8]}"
    proc = _train(small_config, sqlite_server, ray_cluster, "--experiment", experiment, "--trials", "3")
    try:
        _busy_worker(ray_cluster, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode not in (0, None), err
    statuses = [r.info.status for r in _runs(sqlite_server, experiment)]
    assert "RUNNING" not in statuses
    assert "KILLED" in statuses
    assert len(statuses) < 3


def test_backend_ray_without_ray_installed_exits_2_saying_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`import ray` fails (blocked): exit 2 with the pip command, nothing logged."""
    store = tmp_path / "mlflow.db"
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--backend", "ray", "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'mlflow-podium[ray]'" in err
    assert "Traceback" not in err
    assert not store.exists()


def test_unreachable_ray_cluster_exits_2_naming_the_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listens at RAY_ADDRESS: exit 2 within the connect bound, naming it; no store."""
    address = f"127.0.0.1:{free_port()}"
    store = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.setenv("RAY_ADDRESS", address)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--backend", "ray", "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the Ray cluster at {address}" in err
    assert "Traceback" not in err
    assert not store.exists()


def test_an_open_port_that_never_answers_as_ray_exits_2_within_the_wait(tmp_path: Path) -> None:
    """A port that accepts connections but is no Ray head: exit 2 after PODIUM_RAY_WAIT_SECONDS,
    naming the address; the sweep logs no run (none is left RUNNING)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    store = tmp_path / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}", "PODIUM_RAY_WAIT_SECONDS": "3"}
    env.pop("RAY_ADDRESS", None)
    try:
        started = time.monotonic()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "trainer",
                "train",
                "--backend",
                "ray",
                "--ray-address",
                address,
                "--trials",
                "1",
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
        )
        elapsed = time.monotonic() - started
    finally:
        listener.close()
    assert done.returncode == 2, done.stderr
    assert f"no Ray cluster answered at {address} within 3 s" in done.stderr
    assert "Traceback" not in done.stderr
    assert elapsed < 120
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert client.search_runs(experiments) == []


@pytest.mark.parametrize("value", ["soon", "0", "nan", "1e10"])  # 1e10 s: past Thread.join's limit
def test_a_bad_ray_wait_is_exit_2_naming_the_variable(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.setenv("PODIUM_RAY_WAIT_SECONDS", value)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--backend", "ray", "--trials", "1"]) == 2
    assert f"PODIUM_RAY_WAIT_SECONDS={value!r}" in capsys.readouterr().err
    assert not store.exists()


def test_workers_get_the_drivers_mlflow_settings_but_not_its_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """runtime_env carries MLFLOW_* client settings and the sweep's own values, never a secret."""
    from trainer.ray_executor import worker_env

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "s3cret")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    monkeypatch.setenv("UNRELATED", "x")
    env = worker_env({"MLFLOW_TRACKING_URI": "http://mlflow:5000", "PODIUM_SWEEP_ID": "abc"})
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["PODIUM_SWEEP_ID"] == "abc"
    assert "s3cret" not in env.values()
    assert "UNRELATED" not in env


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("10.0.0.1:http", "'http' is not a port number"),
        ("ray://127.0.0.1:1", "cannot reach the Ray cluster at ray://127.0.0.1:1"),
    ],
)
def test_a_bad_or_closed_address_is_an_input_error_naming_it(address: str, message: str) -> None:
    from trainer.errors import InputError
    from trainer.ray_executor import check_reachable

    with pytest.raises(InputError, match=message):
        check_reachable(address, timeout=2)


class OwnRay:
    """One direction trial with ``--backend ray`` and no ``--ray-address``, and the same trial
    run locally (in this process, while the Ray sweep runs)."""

    def __init__(self, experiment: str, proc: subprocess.CompletedProcess[str]) -> None:
        self.experiment, self.proc = experiment, proc


@pytest.fixture(scope="module")
def own_ray(sqlite_server: ServerHandle, small_config: Path) -> OwnRay:
    experiment = f"ray_own_{uuid4().hex[:8]}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": sqlite_server.url}
    env.pop("RAY_ADDRESS", None)
    argv = ["--config", str(small_config), "--no-progress", "--experiment", experiment]
    argv += ["--task", "direction", "--trials", "1", "--jobs", "1", "--backend", "ray"]
    config = load_config(
        small_config, {"task": "direction", "trials": 1, "jobs": 1, "experiment": f"local_{experiment}"}
    )
    with ThreadPoolExecutor(max_workers=1) as pool:
        local = pool.submit(run_sweep, config, tracking_uri=sqlite_server.url, progress=False)
        proc = subprocess.run(
            [sys.executable, "-m", "trainer", "train", *argv],
            capture_output=True,
            text=True,
            env=env,
            cwd=small_config.parent,
            timeout=600,
        )
        assert len(local.result().finished) == 1
    return OwnRay(experiment, proc)


def test_without_an_address_the_sweep_starts_its_own_ray_and_finishes(
    own_ray: OwnRay, sqlite_server: ServerHandle
) -> None:
    """No --ray-address: the sweep starts a local Ray on the main thread (Ray's processes die
    with the thread that forked them), runs the trial there and stops that Ray again."""
    assert own_ray.proc.returncode == 0, own_ray.proc.stderr[-2000:]
    assert [r.info.status for r in _runs(sqlite_server, own_ray.experiment)] == ["FINISHED"]


def test_a_direction_trial_on_ray_logs_the_local_numbers(
    own_ray: OwnRay, sqlite_server: ServerHandle
) -> None:
    """--task direction on Ray: the classifier's metrics, equal to the local backend's."""
    assert own_ray.proc.returncode == 0, own_ray.proc.stderr[-3000:]
    (ray_run,) = _runs(sqlite_server, own_ray.experiment)
    (local_run,) = _runs(sqlite_server, f"local_{own_ray.experiment}")
    assert ray_run.data.params["task"] == "direction"
    assert "avg_test_auc" in ray_run.data.metrics
    assert ray_run.data.metrics == local_run.data.metrics
