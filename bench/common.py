"""Shared helpers of the benchmarks: timing, call classification, medians, machine facts."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

T = TypeVar("T")

# Tracking REST endpoints that only read; every other endpoint writes.
_READ_SUFFIXES = ("/search", "/get", "/get-by-name", "/get-history", "/list")


def is_read(method: str, path: str) -> bool:
    path = path.split("?", 1)[0]
    return method == "GET" or path.endswith(_READ_SUFFIXES) or "/get-" in path.rsplit("/", 1)[-1]


_ID = re.compile(r"\bm-[0-9a-f]{32}\b|\b[0-9a-f]{32}\b")


@dataclass(frozen=True)
class Calls:
    """Tracking calls seen by the counting proxy during one measured step."""

    reads: int
    writes: int
    by_endpoint: dict[str, int]

    @property
    def total(self) -> int:
        return self.reads + self.writes

    @classmethod
    def of(cls, requests: Sequence[tuple[str, str]]) -> Calls:
        paths = [(m, p.split("?", 1)[0]) for m, p in requests]
        by = Counter(
            f"{m} {_ID.sub('{id}', p.removeprefix('/api/2.0/mlflow/').removeprefix('/ajax-api/2.0/mlflow/'))}"
            for m, p in paths
        )
        reads = sum(1 for m, p in paths if is_read(m, p))
        return cls(reads=reads, writes=len(paths) - reads, by_endpoint=dict(sorted(by.items())))

    def as_dict(self) -> dict[str, Any]:
        return {
            "reads": self.reads,
            "writes": self.writes,
            "total": self.total,
            "by_endpoint": self.by_endpoint,
        }


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _cmd(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine() -> dict[str, Any]:
    import mlflow
    import sklearn
    import sqlalchemy
    import xgboost

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem_gb = f"{kb / 1024 / 1024:.0f}"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "mlflow": mlflow.__version__,
        "xgboost": xgboost.__version__,
        "sklearn": sklearn.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "postgresql": _cmd(["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc", "SHOW server_version"]),
        "sqlite": __import__("sqlite3").sqlite_version,
        "loadavg_at_start": os.getloadavg()[0],
    }


def save(name: str, data: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return path


def finish(name: str, results: dict[str, Any]) -> Path:
    """Stamp the end time and the load at the end on a bench's results, save and log them."""
    results["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results["loadavg_at_end"] = os.getloadavg()[0]
    path = save(name, results)
    log(f"wrote {path}")
    return path


def quiet_logs() -> None:
    """Only warnings and errors from Podium's structlog loggers (the figures are the output)."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("mlflow").setLevel(logging.WARNING)
