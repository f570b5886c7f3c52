"""The daemon as a real process: graceful SIGTERM, and surviving a tracking server outage."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import uuid4

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.support.daemon import Daemon
from tests.support.mlflow_server import ServerHandle
from tests.support.proxy import Proxy
from tests.support.watcher_runs import expected_order, make_runs, podium_tags

pytestmark = [pytest.mark.server, pytest.mark.slow]


def write_config(tmp_path: Path, pattern: str, poll: float) -> Path:
    path = tmp_path / "watcher.yaml"
    rule = {"name": "r", "experiments": [pattern], "metric": "avg_test_r2", "trigger": "run_finished"}
    path.write_text(
        yaml.safe_dump({"poll_interval_seconds": poll, "http": {"enabled": False}, "rules": [rule]})
    )
    return path


def test_sigterm_mid_pass_finishes_the_pass_then_exits_0(sqlite_server: ServerHandle, tmp_path: Path) -> None:
    """SIGTERM while a pass runs: the pass completes (tags consistent), then exit code 0."""
    client = MlflowClient(sqlite_server.url)
    prefix = f"daemon_{uuid4().hex[:6]}"
    for i in range(15):  # empty experiments first (by name): each costs the pass a few calls
        client.create_experiment(f"{prefix}_a{i:02d}")
    boards = {}
    for i in range(2):
        exp_id = client.create_experiment(f"{prefix}_z{i}")
        boards[exp_id] = expected_order(make_runs(client, exp_id, [0.05 * j for j in range(12)]))
    daemon = Daemon(write_config(tmp_path, f"{prefix}_*", poll=3600), sqlite_server.url)
    try:
        daemon.wait_for("pass_started")
        code = daemon.stop()
    finally:
        daemon.kill()
    assert code == 0
    names = [e["event"] for e in daemon.events]
    assert names.index("shutdown_requested") < names.index("pass_finished")
    finished = next(e for e in daemon.events if e["event"] == "pass_finished")
    assert finished["ok"] is True
    assert finished["experiments_checked"] == 17
    assert names[-1] == "watcher_stopped"
    for exp_id, ranked in boards.items():
        tags = podium_tags(client, exp_id)
        assert {r: t["model_rank"] for r, t in tags.items()} == {
            r: str(i + 1) for i, r in enumerate(ranked[:10])
        }


class Relay:
    """A TCP relay to the tracking server that can be switched off and on (an outage)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = True
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if not self.up:
                conn.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._open.update((conn, upstream))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def set_up(self, up: bool) -> None:
        """Down: refuse new connections and cut the open ones (pooled keep-alive included)."""
        self.up = up
        if not up:
            with self._lock:
                for s in self._open:
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                self._open.clear()

    def close(self) -> None:
        self.set_up(False)
        self.sock.close()


@pytest.fixture
def relay(sqlite_server: ServerHandle) -> Iterator[Relay]:
    r = Relay(sqlite_server.port)
    yield r
    r.close()


def test_the_daemon_survives_an_outage_and_recovers(
    sqlite_server: ServerHandle, relay: Relay, tmp_path: Path
) -> None:
    """Server unreachable: passes fail fast and are logged, the process stays up, and once the
    server answers again a pass succeeds and ranks what finished meanwhile."""
    client = MlflowClient(sqlite_server.url)
    name = f"outage_{uuid4().hex[:6]}"
    exp_id = client.create_experiment(name)
    made = make_runs(client, exp_id, [0.1, 0.2])
    daemon = Daemon(write_config(tmp_path, name, poll=1), relay.url)
    try:
        daemon.wait_for("pass_finished", ok=True)
        relay.set_up(False)
        failed = daemon.wait_for("pass_failed")
        assert "Traceback" not in json.dumps(failed)
        daemon.wait_for("pass_finished", ok=False)
        made += make_runs(client, exp_id, [0.9], prefix="during_outage")
        relay.set_up(True)
        daemon.wait_for("experiment_ranked", action="rerank")
        daemon.wait_for("pass_finished", ok=True)
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    ranked = expected_order(made)
    assert {r: t["model_rank"] for r, t in podium_tags(client, exp_id).items()} == {
        r: str(i + 1) for i, r in enumerate(ranked)
    }


def test_a_pass_longer_than_the_interval_logs_no_scheduler_warning_per_tick(
    sqlite_server: ServerHandle, counting_proxy: Callable[[str], Proxy], tmp_path: Path
) -> None:
    """A pass may outlast the poll interval (a first pass over a universe, the passes that
    follow at once): the ticks it covers are skipped as meant, and the log says nothing of
    them (APScheduler warned once per tick, over a catch-up of minutes hundreds of lines)."""
    client = MlflowClient(sqlite_server.url)
    name = f"longpass_{uuid4().hex[:6]}"
    make_runs(client, client.create_experiment(name), [0.1, 0.2])
    proxy = counting_proxy(sqlite_server.url)
    proxy.writes_open.clear()  # the first pass waits at its first write
    daemon = Daemon(write_config(tmp_path, name, poll=1), proxy.url)
    try:
        daemon.wait_for("pass_started")
        deadline = time.monotonic() + 60
        while proxy.held == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3.5)  # three ticks go by
        proxy.writes_open.set()
        finished = daemon.wait_for("pass_finished")
        assert daemon.stop() == 0
    finally:
        proxy.writes_open.set()
        daemon.kill()
    assert finished["ok"] is True
    assert finished["duration_seconds"] > 3
    assert [e for e in daemon.events if str(e.get("logger", "")).startswith("apscheduler")] == []
