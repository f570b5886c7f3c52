"""Local `mlflow server` processes for the benchmarks, backed by sqlite or PostgreSQL.

Built on the test suite's helpers (tests/support/) so the benchmarks and the tests start servers
and count calls the same way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.mlflow_server import (
    ServerHandle,
    create_pg_database,
    drop_pg_database,
    free_port,
    sqlite_uri,
    start_server,
    wait_healthy,
)

BACKENDS = ("sqlite", "postgresql")


@dataclass
class BenchServer:
    """A running `mlflow server`: `.url` for clients, `.db_uri` for the direct SQL store."""

    backend: str
    handle: ServerHandle
    db_uri: str
    workdir: Path
    workers: int = 1

    @property
    def url(self) -> str:
        return self.handle.url


def start_with_workers(db_uri: str, workdir: Path, backend: str, workers: int) -> ServerHandle:
    """`mlflow server --workers K`, started as the test suite starts its one-worker servers
    (its handle's ``restart()`` comes back with one worker; the benchmarks never restart)."""
    artifact_root = workdir / "artifacts"
    artifact_root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = workdir / "server.log"
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", db_uri,
        "--artifacts-destination", str(artifact_root),
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    with open(log_path, "ab") as log:  # the child keeps its own copy of the handle
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    handle = ServerHandle(f"http://127.0.0.1:{port}", backend, db_uri, artifact_root, port, proc, log_path)
    try:
        wait_healthy(handle.url, proc=proc)
    except Exception:
        handle.stop()
        raise RuntimeError(f"mlflow server failed to start; log:\n{log_path.read_text()[-3000:]}") from None
    return handle


@contextmanager
def running_server(backend: str, workers: int = 1) -> Iterator[BenchServer]:
    """An `mlflow server` with ``workers`` workers (one, as the tests run it, by default) on a
    fresh sqlite file or PostgreSQL database, removed after."""
    workdir = Path(tempfile.mkdtemp(prefix=f"podium_bench_{backend}_"))
    if backend == "sqlite":
        db_uri = sqlite_uri(workdir / "mlflow.db")
    elif backend == "postgresql":
        db_uri = create_pg_database(prefix="podium_bench")
    else:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    try:
        if workers == 1:
            handle = start_server(db_uri, workdir, backend=backend)
        else:
            handle = start_with_workers(db_uri, workdir, backend, workers)
        try:
            yield BenchServer(backend, handle, db_uri, workdir, workers)
        finally:
            handle.stop()
    finally:
        if backend == "postgresql":
            drop_pg_database(db_uri)
        shutil.rmtree(workdir, ignore_errors=True)
