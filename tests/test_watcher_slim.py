"""The sidecar's install, for real: ``pip install '.[watcher]'`` into a fresh venv from what the
Dockerfile's watcher target copies (pyproject.toml, README.md, watcher/; no trainer/), with its
real dependencies (the pip cache makes it quick). Every watcher module imports without the
trainer's stack, ``python -m watcher --once`` ranks a real store, and the dashboard's retrain
answers 501 naming the full image."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from tests.support.mlflow_server import ServerHandle, free_port
from tests.support.watcher_runs import assert_board, make_runs, new_experiment

pytestmark = [pytest.mark.server, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
# What the watcher must do without: the trainer and the heavy part of the `trainer` extra.
ABSENT = ("trainer", "xgboost", "shap", "matplotlib", "sklearn", "pyarrow")


@pytest.fixture(scope="module")
def slim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh venv holding ``mlflow-podium[watcher]`` and nothing else."""
    root = tmp_path_factory.mktemp("slim")
    context = root / "src"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, context / name)
    shutil.copytree(
        REPO / "watcher", context / "watcher", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-compile", f"{context}[watcher]"],
        check=True,
        cwd=root,
        timeout=600,
    )
    return python


def run_slim(python: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=python.parent,  # outside the work tree: nothing imports from the checkout
        env=_env(**env),
    )


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "WATCHER_", "PYTHON"))}
    return {**env, **extra}


def test_the_sidecar_set_holds_neither_the_trainer_nor_its_stack(slim: Path) -> None:
    out = run_slim(
        slim,
        "import importlib.metadata as md, importlib.util as u, json\n"
        f"print(json.dumps([[m for m in {ABSENT!r} if u.find_spec(m)], sorted(d.metadata['Name'].lower() for d in md.distributions())]))",
    )
    assert out.returncode == 0, out.stderr
    present, dists = json.loads(out.stdout)
    assert present == []
    assert "mlflow-skinny" in dists  # the client,
    assert "mlflow" not in dists  # not the server


def test_every_watcher_module_imports_and_retrain_knows_the_trainer_is_missing(slim: Path) -> None:
    modules = sorted(
        ".".join(("watcher", *p.relative_to(REPO / "watcher").with_suffix("").parts)).removesuffix(
            ".__init__"
        )
        for p in (REPO / "watcher").rglob("*.py")
        if p.name != "__main__.py"  # runs the CLI
    )
    out = run_slim(
        slim,
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "from watcher.jobs import missing_trainer_modules, trainer_available\n"
        "print(trainer_available(), ','.join(missing_trainer_modules()))",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "trainer,xgboost,matplotlib,sklearn"]
    assert "watcher.dashboard" in modules
    assert "watcher.notify" in modules


def test_once_ranks_a_store(slim: Path, sqlite_server: ServerHandle, tmp_path: Path) -> None:
    client = MlflowClient(sqlite_server.url)
    exp_id, _ = new_experiment(client, "wf_xgboost_slim")
    made = make_runs(client, exp_id, [0.1, 0.4, 0.2, -0.3])
    done = subprocess.run(
        [str(slim), "-m", "watcher", "--once", "--config", str(REPO / "config" / "watcher.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=_env(MLFLOW_TRACKING_URI=sqlite_server.url),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert_board(client, exp_id, [r.run_id for r in sorted(made, key=lambda r: -(r.value or 0))])


def test_retrain_answers_501_naming_the_full_image(
    slim: Path, sqlite_server: ServerHandle, tmp_path: Path
) -> None:
    port = free_port()
    daemon = subprocess.Popen(
        [str(slim), "-m", "watcher", "--config", str(REPO / "config" / "watcher.yaml")],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "daemon.log").open("w"),
        cwd=tmp_path,
        env=_env(MLFLOW_TRACKING_URI=sqlite_server.url, WATCHER_HTTP__PORT=str(port)),
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()
                assert time.monotonic() < deadline, "the daemon did not answer /healthz in 60 s"
                time.sleep(0.3)
        r = httpx.post(f"{url}/api/retrain", json={"run_id": "0" * 32, "exclude": ["rsi_14"]}, timeout=30)
        assert r.status_code == 501
        detail = r.json()["detail"]
        assert "full Podium image" in detail
        assert "(no trainer, xgboost" in detail
        # The page says so before anyone tries.
        assert "answers 501" in httpx.get(f"{url}/", timeout=30).text
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0


@pytest.mark.parametrize("command", [["train", "--trials", "1"], ["retrain", "--run-id", "0" * 32]])
def test_the_trainer_without_its_stack_says_what_to_install(
    slim: Path, tmp_path: Path, command: list[str]
) -> None:
    """The trainer's package beside the sidecar's set (``pip install '.[watcher]'`` from a
    checkout): exit 2 with one line naming the missing module and the extra, no traceback, no
    store made."""
    store = tmp_path / "mlflow.db"
    done = subprocess.run(
        [str(slim), "-m", "trainer", *command],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,  # `-m trainer` imports the checkout's package; its stack is not in the venv
        env=_env(MLFLOW_TRACKING_URI=f"sqlite:///{store}"),
    )
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: python -m trainer {command[0]} needs ")
    assert line.endswith("which is not installed: pip install 'mlflow-podium[trainer]'")
    assert not store.exists()
