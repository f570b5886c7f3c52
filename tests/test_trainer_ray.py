"""``--backend ray`` on a real local Ray cluster (one per session) and a real `mlflow server`.

The same trials as the local backend, the same numbers; a worker killed mid-trial fails only its
own run; SIGTERM to the driver leaves no run RUNNING; missing Ray or an unreachable cluster is
exit 2 before anything is logged.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from uuid import uuid4

import mlflow
import pytest

from tests.support.mlflow_server import ServerHandle, free_port
from tests.support.ray_cluster import RayCluster
from tests.test_trainer_tracking import (
    ARTIFACTS,
    AVERAGES,
    DATA_PARAMS,
    HYPERPARAMETERS,
    IMPORTANCE_STATS,
    PER_FOLD,
    SMALL_YAML,
)
from trainer.config import load_config
from trainer.sweep import run_sweep
from trainer.worker import FAILURE_TAG

pytestmark = [pytest.mark.server, pytest.mark.slow]

BUSY_ACTOR = "ray::TrialActor.run"  # the process title of an actor running a trial


def _train(
    config: Path, server: ServerHandle, *args: str, ray: RayCluster | None = None
) -> subprocess.Popen[str]:
    env = {**os.environ, **(ray.env if ray else {}), "MLFLOW_TRACKING_URI": server.url}
    env.pop("RAY_ADDRESS", None)
    backend = ["--backend", "ray", "--ray-address", ray.address] if ray else []
    return subprocess.Popen(
        [sys.executable, "-m", "trainer", "train", "--config", str(config), "--no-progress", *backend, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=config.parent,
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


def test_ray_sweep_logs_the_contract_and_the_local_numbers(
    ray_cluster: RayCluster, sqlite_server: ServerHandle, small_config: Path
) -> None:
    """Two trials on two Ray actors: every contract name on each run, and every metric equal to
    the local backend's for the same seed and trial."""
    experiment = f"ray_{uuid4().hex[:8]}"
    proc = _train(small_config, sqlite_server, "--experiment", experiment, ray=ray_cluster)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err
    assert "Best 2 by avg_test_r2:" in out
    local = run_sweep(
        load_config(small_config, {"experiment": f"local_{experiment}", "jobs": 1}),
        tracking_uri=sqlite_server.url,
        progress=False,
    )
    assert len(local.finished) == 2
    client = mlflow.MlflowClient(sqlite_server.url)
    ray_runs = {r.info.run_name: r for r in _runs(sqlite_server, experiment)}
    local_runs = {r.info.run_name: r for r in _runs(sqlite_server, f"local_{experiment}")}
    assert set(ray_runs) == set(local_runs) == {"trial_0", "trial_1"}
    for name, run in ray_runs.items():
        assert run.info.status == "FINISHED"
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
        for key, value in metrics.items():
            assert math.isclose(value, other.data.metrics[key], rel_tol=0, abs_tol=0), key


def test_a_worker_killed_mid_trial_fails_only_its_run(
    ray_cluster: RayCluster, sqlite_server: ServerHandle, small_config: Path
) -> None:
    """SIGKILL to the actor process running a trial: that run ends FAILED with the reason in
    tag failure_reason; a fresh actor takes its place and the other trials finish."""
    experiment = f"ray_{uuid4().hex[:8]}"
    proc = _train(small_config, sqlite_server, "--experiment", experiment, "--trials", "3", ray=ray_cluster)
    try:
        os.kill(_busy_worker(ray_cluster, proc), signal.SIGKILL)
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err  # a failed trial: the sweep reports it and exits 1
    runs = _runs(sqlite_server, experiment)
    statuses = sorted(r.info.status for r in runs)
    assert statuses == ["FAILED", "FINISHED", "FINISHED"], out
    failed = next(r for r in runs if r.info.status == "FAILED")
    assert "Ray worker running this trial died" in failed.data.tags[FAILURE_TAG]
    assert f"{failed.info.run_name} ({failed.info.run_id}) failed: WorkerDied" in out


def test_sigterm_to_the_driver_leaves_no_run_running(
    ray_cluster: RayCluster, sqlite_server: ServerHandle, small_config: Path
) -> None:
    """SIGTERM while trials run on the cluster: those runs end KILLED, the rest never start,
    and the driver exits non-zero."""
    experiment = f"ray_{uuid4().hex[:8]}"
    proc = _train(small_config, sqlite_server, "--experiment", experiment, "--trials", "6", ray=ray_cluster)
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
    assert len(statuses) < 6


def test_backend_ray_without_ray_installed_exits_2_saying_how_to_install(tmp_path: Path) -> None:
    """`import ray` fails (blocked in the child): exit 2 with the pip command, nothing logged."""
    store = tmp_path / "mlflow.db"
    code = (
        "import sys; sys.modules['ray'] = None; from trainer.cli import main; "
        "sys.exit(main(['train', '--backend', 'ray', '--trials', '1']))"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 2
    assert "pip install 'mlflow-podium[ray]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not store.exists()


def test_unreachable_ray_cluster_exits_2_naming_the_address(tmp_path: Path) -> None:
    """Nothing listens at the address: exit 2 within the connect bound, naming it; no store."""
    address = f"127.0.0.1:{free_port()}"
    store = tmp_path / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}", "RAY_ADDRESS": address}
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "train", "--backend", "ray", "--trials", "1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"cannot reach the Ray cluster at {address}" in proc.stderr
    assert "Traceback" not in proc.stderr
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
