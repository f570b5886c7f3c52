"""Shared fixtures: real MLflow stores and real `mlflow server` processes, never mocks.

Session fixtures live once per pytest process: under pytest-xdist (scripts/test.sh) each worker
starts its own servers, PostgreSQL database and Ray cluster when a test of its files asks.
"""

from __future__ import annotations

import os

# Fail fast instead of MLflow's default minutes of back-off; set before mlflow is imported.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("MPLBACKEND", "Agg")
# Servers we start need no GenAI job runner (huey consumers): fewer processes on 2 cores.
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from tests.support.mlflow_server import (
    ServerHandle,
    create_pg_database,
    drop_pg_database,
    free_port,
    start_server,
)
from tests.support.mlflow_server import (
    sqlite_uri as _sqlite_uri,
)
from tests.support.proxy import Proxy
from tests.support.ray_cluster import RayCluster, start_cluster


@pytest.fixture(autouse=True)
def _isolate_mlflow_tracking_uri() -> Iterator[None]:
    """`mlflow.set_tracking_uri` sets a module global and writes os.environ behind monkeypatch's
    back; restore both after every test so no test inherits another's store."""
    from mlflow.tracking._tracking_service import utils

    saved_global = utils._tracking_uri
    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    utils._tracking_uri = saved_global
    if saved_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved_env


@pytest.fixture
def sqlite_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh local sqlite tracking store, also set as MLFLOW_TRACKING_URI for the test."""
    uri = _sqlite_uri(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # local artifact roots (./mlruns) land in tmp, not the repo
    return uri


@pytest.fixture(scope="session")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    workdir = tmp_path_factory.mktemp("mlflow-sqlite")
    server = start_server(_sqlite_uri(workdir / "mlflow.db"), workdir, backend="sqlite")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    workdir = tmp_path_factory.mktemp("mlflow-postgres")
    db_uri = create_pg_database()
    try:
        server = start_server(db_uri, workdir, backend="postgresql")
        yield server
        server.stop()
    finally:
        drop_pg_database(db_uri)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def mlflow_server(request: pytest.FixtureRequest) -> ServerHandle:
    """A real tracking server; tests using it run once per backend."""
    name = "sqlite_server" if request.param == "sqlite" else "postgres_server"
    return request.getfixturevalue(name)


@pytest.fixture
def receiver() -> Iterator[HTTPServer]:
    """A local receiver on a fixed port that is not listening until the test starts it."""
    server = HTTPServer(host="127.0.0.1", port=free_port())
    yield server
    if server.is_running():
        server.clear()
        server.stop()


@pytest.fixture
def counting_proxy() -> Iterator[Callable[[str], Proxy]]:
    """Factory: a real HTTP proxy in front of a server that records every request."""
    proxies: list[Proxy] = []

    def make(server_url: str) -> Proxy:
        proxy = Proxy(server_url)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """One real local Ray cluster (2 CPUs) for the session; sweeps connect to its address."""
    cluster = start_cluster(2, tmp_path_factory.mktemp("ray") / "ray.log")
    yield cluster
    cluster.stop()
