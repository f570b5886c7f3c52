"""Make runs for watcher tests with plain MlflowClient calls (not the trainer); a watcher over a
rule; the board the contract expects, and the writes a counting proxy saw."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

from mlflow.entities import Metric, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from tests.support.proxy import Proxy
from watcher.lister import list_experiments, watched_from
from watcher.mlflow_io import MlflowTracking
from watcher.model import WatchedExperiment
from watcher.service import Watcher
from watcher.settings import WatcherSettings

METRIC = "avg_test_r2"
WRITE_PATHS = ("set-tag", "delete-tag", "log-batch", "set-experiment-tag", "delete-experiment-tag")

_clock = [int(time.time() * 1000)]


def next_ms() -> int:
    """Strictly increasing millisecond times, so end_time order is the creation order."""
    _clock[0] = max(_clock[0] + 1, int(time.time() * 1000))
    return _clock[0]


@dataclass(frozen=True)
class MadeRun:
    run_id: str
    name: str
    value: float | None
    status: str


def new_experiment(client: MlflowClient, prefix: str = "wf_xgboost_t") -> tuple[str, str]:
    name = f"{prefix}_{uuid4().hex[:8]}"
    return client.create_experiment(name), name


def make_run(
    client: MlflowClient,
    experiment_id: str,
    name: str,
    metrics: Mapping[str, float] | None = None,
    *,
    status: str = "FINISHED",
    tags: Mapping[str, str] | None = None,
) -> str:
    """One run: create, one log_batch, terminate (unless RUNNING)."""
    run = client.create_run(experiment_id, run_name=name, start_time=next_ms())
    run_id = run.info.run_id
    now = next_ms()
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in (metrics or {}).items()],
        tags=[RunTag(k, v) for k, v in (tags or {}).items()],
    )
    if status != "RUNNING":
        client.set_terminated(run_id, status=status, end_time=next_ms())
    return run_id


def make_runs(
    client: MlflowClient,
    experiment_id: str,
    values: Iterable[float | None],
    *,
    metric: str = "avg_test_r2",
    extra: Mapping[str, float] | None = None,
    prefix: str = "trial",
) -> list[MadeRun]:
    made = []
    for i, value in enumerate(values):
        metrics = dict(extra or {"num_folds": 3.0})
        if value is not None:
            metrics[metric] = value
        name = f"{prefix}_{i}"
        made.append(MadeRun(make_run(client, experiment_id, name, metrics), name, value, "FINISHED"))
    return made


def podium_tags(client: MlflowClient, experiment_id: str) -> dict[str, dict[str, str]]:
    """Every active run's watcher-owned tags (model_rank, top_*, production_candidate)."""
    out: dict[str, dict[str, str]] = {}
    for run in client.search_runs([experiment_id], max_results=50000):
        tags = {
            k: v
            for k, v in run.data.tags.items()
            if k in ("model_rank", "production_candidate") or (k.startswith("top_") and k[4:].isdigit())
        }
        if tags:
            out[run.info.run_id] = tags
    return out


def expected_order(made: Iterable[MadeRun], ascending: bool = False) -> list[str]:
    """Run ids of finite-valued runs in rank order (creation order breaks ties)."""
    finite = [
        (m.value, i, m.run_id) for i, m in enumerate(made) if m.value is not None and math.isfinite(m.value)
    ]
    finite.sort(key=lambda t: (t[0] if ascending else -t[0], t[1]))  # type: ignore[operator]
    return [t[2] for t in finite]


def search_ids(client: MlflowClient, experiment_id: str, filter_string: str) -> set[str]:
    return {r.info.run_id for r in client.search_runs([experiment_id], filter_string, max_results=50000)}


def status_of(client: MlflowClient, run_id: str) -> str:
    return str(RunStatus.to_string(RunStatus.from_string(client.get_run(run_id).info.status)))


def make_fold_runs(
    client: MlflowClient,
    experiment_id: str,
    folds: Iterable[Iterable[float]],
    *,
    fold_metric: str = "test_r2",
    metric: str = "avg_test_r2",
    folds_tag: bool = False,
    prefix: str = "trial",
) -> list[MadeRun]:
    """Runs as another tool logs them: ``fold_metric`` once per fold (step = fold) and its mean
    as ``metric``; with ``folds_tag``, also the trainer's ``podium.folds`` tag."""
    made = []
    for i, row in enumerate(folds):
        values = [float(v) for v in row]
        run = client.create_run(experiment_id, run_name=f"{prefix}_{i}", start_time=next_ms())
        now = next_ms()
        mean = sum(values) / len(values)
        tags = [RunTag("podium.folds", json.dumps({fold_metric: values}))] if folds_tag else []
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(fold_metric, v, now, step) for step, v in enumerate(values)]
            + [Metric(metric, mean, now, 0)],
            tags=tags,
        )
        client.set_terminated(run.info.run_id, status="FINISHED", end_time=next_ms())
        made.append(MadeRun(run.info.run_id, f"{prefix}_{i}", mean, "FINISHED"))
    return made


def rule(pattern: str, **overrides: object) -> dict[str, object]:
    """One rule over ``pattern`` ranking by the contract's metric; ``overrides`` replace keys."""
    base: dict[str, object] = {
        "name": "r",
        "experiments": [pattern],
        "metric": METRIC,
        "top_n": 10,
        "production_candidates": 3,
        "trigger": "run_finished",
    }
    base.update(overrides)
    return base


def watcher_for(
    url: str, *rules: dict[str, object], clock: Callable[[], float] = time.time, **settings: Any
) -> Watcher:
    """A watcher over ``rules`` without its HTTP server, on ``clock``; ``settings`` are further
    settings keys."""
    config = WatcherSettings(tracking_uri=url, rules=list(rules), http={"enabled": False}, **settings)
    return Watcher(config, MlflowTracking(url), clock=clock)


def writes(proxy: Proxy) -> list[tuple[str, str]]:
    """The tag and state writes among the calls the proxy saw."""
    return [(m, p) for m, p in proxy.tracking_calls() if p.rsplit("/", 1)[-1] in WRITE_PATHS]


def board_for(ranked: list[str], top_n: int = 10, k: int = 3) -> dict[str, dict[str, str]]:
    """The contract's tags for runs in this order: model_rank and top_N for the first N, and
    production_candidate for the first k."""
    board = {}
    for i, run_id in enumerate(ranked[:top_n]):
        tags = {"model_rank": str(i + 1), f"top_{top_n}": "true"}
        if i < k:
            tags["production_candidate"] = "true"
        board[run_id] = tags
    return board


def true_board(client: MlflowClient, exp_id: str, top_n: int = 10, k: int = 3) -> dict[str, dict[str, str]]:
    """The guide's way over what MLflow holds now: every FINISHED run with a finite value,
    best first, ties by earlier end time, then run id; the contract's tags for the top N."""
    runs = client.search_runs([exp_id], "attributes.status = 'FINISHED'", max_results=50000)
    ranked = []
    for run in runs:
        value = run.data.metrics.get(METRIC)
        if value is not None and math.isfinite(value) and abs(value) < sys.float_info.max:
            ranked.append((-value, run.info.end_time, run.info.run_id))
    ranked.sort()
    return board_for([run_id for _, _, run_id in ranked], top_n, k)


def assert_board(client: MlflowClient, exp_id: str, ranked: list[str], top_n: int = 10, k: int = 3) -> None:
    """The tags are exactly the contract for this order: no stale or extra watcher tag anywhere."""
    assert podium_tags(client, exp_id) == board_for(ranked, top_n, k)


def watched_experiments(settings: WatcherSettings, tracking: MlflowTracking) -> list[WatchedExperiment]:
    """The watched experiments, listed afresh (what a one-off pass sees)."""
    return watched_from(settings, list_experiments(settings, tracking))
