"""`python -m watcher` as a real process, its JSON log lines read as they come."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

WAIT_S = 120.0


class Daemon:
    """`python -m watcher` in a subprocess; its JSON log lines are read as they come."""

    def __init__(self, config: Path, tracking_uri: str) -> None:
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "watcher", "--config", str(config), "--log-format", "json"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "non_json", "line": line}
            self._lines.put(event)
        self._lines.put(None)

    def wait_for(self, event: str, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                item = self._lines.get(timeout=1)
            except queue.Empty:
                continue
            if item is None:
                raise AssertionError(f"daemon exited before {event}: {self.events[-5:]}")
            self.events.append(item)
            if item.get("event") == event and all(item.get(k) == v for k, v in fields.items()):
                return item
        raise AssertionError(f"no {event} {fields} within {WAIT_S} s: {self.events[-5:]}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=WAIT_S)
        while (item := self._lines.get(timeout=5)) is not None:
            self.events.append(item)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
