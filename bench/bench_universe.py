"""Watcher at the scale of a trading universe: one rule over 100 / 500 / 1,000 experiments.

Per backend (sqlite, PostgreSQL) one `mlflow server` holds every experiment, each with 10
finished trainer-sized runs (30 params with `feature_names`, 37 metrics, as `python -m trainer`
logs them; bench/fill.py). For each size the watcher talks to the server through one counting
proxy (tests/support/proxy.py), which counts calls and the bytes of the answers:

- the first ranking: every pass until each watched experiment is ranked (total, longest pass);
- the idle daemon pass, with a holder check due and with none due (where the watcher keeps the
  check on a schedule; otherwise every pass makes it);
- the `--once` idle pass: the real CLI in a process of its own (with `--sweep`, and without it
  where the flag exists);
- the re-rank of one experiment after a new leading run, at 1 and at N watched experiments.

Setup (filling, the new runs, reading states to see when the first ranking is done) goes
straight to the server and is never counted. The watcher's clock is the wall clock plus an
offset the benchmark moves to make a holder check due, so no pass waits for real time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag

from bench import common
from bench.bench_watcher import CountingTracking
from bench.common import Calls, log, median, timed
from bench.fill import (
    MAX_FILLED,
    METRIC,
    TRAINER_HYPERPARAMETERS,
    TRAINER_METRICS,
    TRAINER_PARAMS,
    TRAINER_TAGS,
    fill,
)
from bench.servers import BACKENDS, running_server
from tests.support.proxy import Proxy
from watcher.cli import build_parser
from watcher.service import Watcher
from watcher.settings import HttpConfig, RuleConfig, WatcherSettings
from watcher.state import STATE_TAG, UNRANKED, ExperimentState

RUNS = 10
TOP_N = 10
FILTER = "metrics.num_folds >= 3"
# Passes the first ranking may take before the benchmark gives up on it.
MAX_FIRST_PASSES = 40
PROXY_TIMEOUT = 600.0
SETTINGS_KEYS = set(WatcherSettings.model_fields)
HOLDER_SCHEDULE = "holder_check_seconds" in SETTINGS_KEYS
SWEEP_FLAG = "--sweep" in build_parser().format_help()


def prefix(n: int) -> str:
    return f"uni{n:04d}_"


class Clock:
    """The wall clock plus an offset the benchmark moves (a holder check falls due)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def rule(n: int) -> dict[str, Any]:
    return {
        "name": "universe",
        "experiments": [f"{prefix(n)}*"],
        "metric": METRIC,
        "top_n": TOP_N,
        "production_candidates": 3,
        "filter": FILTER,
    }


def make_settings(url: str, n: int) -> WatcherSettings:
    return WatcherSettings(tracking_uri=url, http=HttpConfig(enabled=False), rules=[RuleConfig(**rule(n))])


def measured(proxy: Proxy, fn: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    proxy.reset()
    out, seconds = timed(fn)
    calls = Calls.of(proxy.tracking_calls())
    return out, {"seconds": seconds, "calls": calls.as_dict(), "bytes": proxy.tracking_bytes()}


def daemon_pass(watcher: Watcher, proxy: Proxy, sweep: bool | None = None) -> dict[str, Any]:
    """One daemon pass; ``sweep=False`` keeps the sweep out of an idle figure (the sweep runs
    every 15 minutes, and the benchmark's passes may span more than that)."""
    tracking = watcher.tracking
    assert isinstance(tracking, CountingTracking)
    tracking.searches = {}
    result, row = measured(proxy, lambda: watcher.run_pass(sweep=sweep))
    if not result.ok:
        raise RuntimeError(f"watcher pass failed: {result.error}")
    actions: dict[str, int] = {}
    for outcome in result.outcomes:
        actions[outcome.action] = actions.get(outcome.action, 0) + 1
    return {**row, "tag_writes": result.tag_writes, "actions": actions, "searches": tracking.searches}


def unranked(direct: MlflowClient, n: int) -> int:
    """Watched experiments without a ranking yet (read directly, not counted)."""
    exps = direct.search_experiments(filter_string=f"name LIKE '{prefix(n)}%'", max_results=50_000)
    count = 0
    for exp in exps:
        state = ExperimentState.from_tag(exp.tags.get(STATE_TAG))
        if state is None or state.fingerprint == UNRANKED or not state.board:
            count += 1
    return count


def add_leader(direct: MlflowClient, experiment_id: str, value: float) -> None:
    """One new finished trainer-sized run that leads its experiment (uncounted setup)."""
    run = direct.create_run(experiment_id, run_name="new_leader")
    now = int(time.time() * 1000)
    metrics = [Metric(METRIC, value, now, 0), Metric("num_folds", 5.0, now, 0)]
    metrics += [Metric(k, 0.5, now, 0) for k in TRAINER_METRICS]
    params = [Param(k, v) for k, v in TRAINER_PARAMS.items()]
    params += [Param(k, "1") for k in TRAINER_HYPERPARAMETERS]
    direct.log_batch(
        run.info.run_id, metrics=metrics, params=params, tags=[RunTag(k, v) for k, v in TRAINER_TAGS.items()]
    )
    direct.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))


def once(proxy: Proxy, n: int, workdir: Path, extra: Sequence[str] = ()) -> dict[str, Any]:
    """`python -m watcher --once` in its own process, as cron would run it."""
    config = workdir / f"once_{n}.yaml"
    config.write_text(
        yaml.safe_dump({"tracking_uri": proxy.url, "http": {"enabled": False}, "rules": [rule(n)]})
    )
    args = [
        sys.executable,
        "-m",
        "watcher",
        "--config",
        str(config),
        "--once",
        "--log-format",
        "json",
        *extra,
    ]
    proc, row = measured(
        proxy, lambda: subprocess.run(args, capture_output=True, text=True, cwd=common.ROOT, timeout=3600)
    )
    if proc.returncode != 0:
        raise RuntimeError(f"--once exited {proc.returncode}: {proc.stderr[-2000:]}")
    finished = [json.loads(line) for line in proc.stderr.splitlines() if '"pass_finished"' in line]
    row["pass_seconds"] = finished[-1]["duration_seconds"] if finished else None
    row["args"] = list(extra)
    return row


def universe(
    direct: MlflowClient, proxy: Proxy, n: int, ids: Sequence[str], workdir: Path, once_sweep: bool
) -> dict[str, Any]:
    clock = Clock()
    watcher = Watcher(make_settings(proxy.url, n), CountingTracking(proxy.url), clock=clock)
    first: list[dict[str, Any]] = []
    while True:
        first.append(daemon_pass(watcher, proxy))
        left = unranked(direct, n)
        p = first[-1]
        log(
            f"  {n}: first-ranking pass {len(first)}: {p['calls']['total']} calls, {p['seconds']:.1f} s, {left} left"
        )
        if left == 0 or len(first) >= MAX_FIRST_PASSES:
            break
    out: dict[str, Any] = {
        "experiments": n,
        "first": {
            "passes": first,
            "pass_count": len(first),
            "seconds": sum(p["seconds"] for p in first),
            "longest_pass_seconds": max(p["seconds"] for p in first),
            "calls": sum(p["calls"]["total"] for p in first),
            "unranked_after": unranked(direct, n),
        },
    }
    # Passes after the first ranking that still work (the paged count, deferred writes) are
    # run until the watcher is idle, so the idle figures below are of idle passes.
    settle: list[dict[str, Any]] = []
    while len(settle) < MAX_FIRST_PASSES:
        p = daemon_pass(watcher, proxy, sweep=False)
        settle.append(p)
        if p["tag_writes"] == 0 and not set(p["actions"]) - {"idle"}:
            break
    out["settle_passes"] = settle
    idle_no_check = [daemon_pass(watcher, proxy, sweep=False) for _ in range(2)]
    idle_check = []
    for _ in range(1 if HOLDER_SCHEDULE else 2):
        clock.offset += 3600  # any holder check schedule falls due
        idle_check.append(daemon_pass(watcher, proxy, sweep=False))
    out["idle"] = {
        "holder_schedule": HOLDER_SCHEDULE,
        "no_check_due": idle_no_check if HOLDER_SCHEDULE else None,
        "check_due": idle_check,
        "every_pass": None if HOLDER_SCHEDULE else idle_no_check + idle_check,
    }
    for label, rows in (("no check due", idle_no_check), ("check due", idle_check)):
        log(
            f"  {n}: idle pass ({label if HOLDER_SCHEDULE else 'holder check every pass'}): "
            f"calls {[r['calls']['total'] for r in rows]}, {median([r['seconds'] for r in rows]) * 1000:.0f} ms, "
            f"{median([r['bytes'] for r in rows]) / 1e6:.2f} MB"
        )
    reranks = []
    for rep in range(2):
        add_leader(direct, ids[0], MAX_FILLED + 0.01 * (rep + 1))
        p = daemon_pass(watcher, proxy, sweep=False)
        if p["actions"].get("rerank", 0) + p["actions"].get("full", 0) != 1:
            raise AssertionError(f"{n}: the re-rank pass did {p['actions']}")
        reranks.append(p)
        log(f"  {n}: re-rank of one experiment: {p['calls']['total']} calls, {p['seconds'] * 1000:.0f} ms")
    out["rerank"] = reranks
    runs = (
        [once(proxy, n, workdir, ["--sweep"] if SWEEP_FLAG else [])] if once_sweep or not SWEEP_FLAG else []
    )
    if SWEEP_FLAG:
        runs.append(once(proxy, n, workdir))
    for r in runs:
        log(
            f"  {n}: --once {' '.join(r['args'])}: {r['calls']['total']} calls, pass {r['pass_seconds']} s, "
            f"process {r['seconds']:.1f} s, {r['bytes'] / 1e6:.2f} MB"
        )
    out["once"] = runs
    return out


def run_backend(backend: str, sizes: Sequence[int], once_sweep: bool) -> dict[str, Any]:
    log(f"{backend}: starting mlflow server")
    with running_server(backend) as server, tempfile.TemporaryDirectory() as tmp:
        direct = MlflowClient(server.url)
        groups = [1, *sizes]
        layout = [(f"{prefix(n)}{i:04d}", RUNS) for n in groups for i in range(n)]
        filled, fill_seconds = timed(lambda: fill(direct, server.db_uri, layout, profile="trainer"))
        log(f"{backend}: filled {len(layout):,} experiments × {RUNS} runs in {fill_seconds:.1f} s")
        ids = {n: [f.experiment_id for f in filled if f.name.startswith(prefix(n))] for n in groups}
        proxy = Proxy(server.url)
        proxy.timeout = PROXY_TIMEOUT
        try:
            out: dict[str, Any] = {"fill_seconds": fill_seconds, "sizes": {}}
            for n in groups:
                out["sizes"][str(n)] = universe(direct, proxy, n, ids[n], Path(tmp), once_sweep)
                out["sizes"][str(n)]["loadavg"] = os.getloadavg()[0]
            return out
        finally:
            proxy.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--sizes", default="100,500,1000")
    parser.add_argument("--out", default="universe", help="bench/results/OUT.json")
    parser.add_argument("--label", default="", help="what code was measured (e.g. 'before')")
    parser.add_argument(
        "--no-once-sweep", action="store_true", help="leave out `--once --sweep` (it sweeps every experiment)"
    )
    args = parser.parse_args(argv)
    common.quiet_logs()
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=common.ROOT
    ).stdout.strip()
    results: dict[str, Any] = {
        "machine": common.machine(),
        "label": args.label,
        "commit": commit,
        "holder_schedule": HOLDER_SCHEDULE,
        "sweep_flag": SWEEP_FLAG,
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "backends": {},
    }
    for backend in args.backends.split(","):
        sizes = [int(s) for s in args.sizes.split(",")]
        results["backends"][backend] = run_backend(backend, sizes, not args.no_once_sweep)
        common.save(args.out, results)  # what is done so far survives a later failure
    results["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results["loadavg_at_end"] = os.getloadavg()[0]
    path = common.save(args.out, results)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
