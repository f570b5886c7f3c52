"""Local `mlflow server` processes for the benchmarks, backed by sqlite or PostgreSQL.

Built on the test suite's helpers (tests/support/) so the benchmarks and the tests start servers
and count calls the same way.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.mlflow_server import (
    ServerHandle,
    create_pg_database,
    drop_pg_database,
    sqlite_uri,
    start_server,
)

BACKENDS = ("sqlite", "postgresql")


@dataclass
class BenchServer:
    """A running `mlflow server`: `.url` for clients, `.db_uri` for the direct SQL store."""

    backend: str
    handle: ServerHandle
    db_uri: str
    workdir: Path

    @property
    def url(self) -> str:
        return self.handle.url


@contextmanager
def running_server(backend: str) -> Iterator[BenchServer]:
    """A one-worker `mlflow server` on a fresh sqlite file or PostgreSQL database, removed after."""
    workdir = Path(tempfile.mkdtemp(prefix=f"podium_bench_{backend}_"))
    if backend == "sqlite":
        db_uri = sqlite_uri(workdir / "mlflow.db")
    elif backend == "postgresql":
        db_uri = create_pg_database(prefix="podium_bench")
    else:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    try:
        handle = start_server(db_uri, workdir, backend=backend)
        try:
            yield BenchServer(backend, handle, db_uri, workdir)
        finally:
            handle.stop()
    finally:
        if backend == "postgresql":
            drop_pg_database(db_uri)
        shutil.rmtree(workdir, ignore_errors=True)
