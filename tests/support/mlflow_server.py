"""Start real `mlflow server` processes on 127.0.0.1 for tests and benchmarks.

Nothing here is a stand-in for MLflow: each handle is a genuine tracking server process backed by
a sqlite file or a PostgreSQL database of its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

PG_ADMIN_URI = os.environ.get("PODIUM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
STARTUP_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, timeout: float = STARTUP_TIMEOUT_S, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode} before answering {url}/health")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"mlflow server at {url} did not answer /health within {timeout:.0f} s")


@dataclass
class ServerHandle:
    url: str
    backend: str
    backend_uri: str
    artifact_root: Path
    port: int
    proc: subprocess.Popen | None
    log_path: Path

    def stop(self) -> None:
        """Stop the server process (its store stays, so `restart()` brings the same data back)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        # The CLI parent execs uvicorn as a child: signal the whole group, or the child lingers.
        _signal_group(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        # Stragglers must go too: the port has to be free for a restart.
        _signal_group(self.proc.pid, signal.SIGKILL)

    def restart(self) -> None:
        """Start the server again on the same port and store."""
        self.stop()
        self.proc = _spawn(self.backend_uri, self.artifact_root, self.port, self.log_path)
        wait_healthy(self.url, proc=self.proc)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _spawn(backend_uri: str, artifact_root: Path, port: int, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_uri,
        "--artifacts-destination", str(artifact_root),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = open(log_path, "ab")  # noqa: SIM115 - the child process owns the handle
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def start_server(backend_uri: str, workdir: Path, backend: str = "sqlite") -> ServerHandle:
    """Start `mlflow server` on a free port and wait until `GET /health` answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    artifact_root = workdir / "artifacts"
    artifact_root.mkdir(exist_ok=True)
    port = free_port()
    log_path = workdir / "server.log"
    proc = _spawn(backend_uri, artifact_root, port, log_path)
    handle = ServerHandle(
        f"http://127.0.0.1:{port}", backend, backend_uri, artifact_root, port, proc, log_path
    )
    try:
        wait_healthy(handle.url, proc=proc)
    except Exception:
        handle.stop()
        raise RuntimeError(f"mlflow server failed to start; log:\n{log_path.read_text()[-3000:]}") from None
    return handle


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def create_pg_database(prefix: str = "podium_test") -> str:
    """Create a fresh PostgreSQL database and return its SQLAlchemy URI."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URI, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URI.rsplit("/", 1)[0]
    return f"{base}/{name}"


def drop_pg_database(uri: str) -> None:
    import psycopg

    name = uri.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URI, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
