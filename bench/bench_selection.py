"""The selection statistics' pure computation (watcher/selection.py) at board sizes.

Boards of N runs x 60 folds x 16 blocks (C(16, 8) = 12,870 splits), per-fold values drawn as
noise plus a small skill that grows with the run's index, so the confidence set has work to do.
Reports the median wall time of several runs of each part: reading the board into a matrix,
the CSCV (PBO and its λ), the model confidence set (over the best ``MCS_CANDIDATES`` runs), and
the whole ``compute``. Goal (DESIGN.md): under a second at 1,000 runs.

    .venv/bin/python -m bench.bench_selection [--runs 3] [--sizes 100 1000 5000] [--pass-runs 200]

``--pass-runs N`` also measures a watcher pass on a changed board (one run finished since the
last pass) against a local sqlite-backed ``mlflow server``: an experiment of N runs with 21
per-fold ``test_r2`` values each, ranked by a rule without ``selection``, with it (values from
the ``podium.folds`` tag) and with it (values from the metric history, all but the new run's
already read by the daemon). Wall time and tracking calls of that pass.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.common import machine, median, save, timed
from watcher import selection

FOLDS = 60
BLOCKS = 16


def board(n_runs: int, seed: int = 0) -> list[selection.BoardRun]:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n_runs, FOLDS)) + np.linspace(0, 2, n_runs)[::-1, None]
    return [selection.BoardRun(f"run{i:05d}", row.tolist()) for i, row in enumerate(values)]


def measure(n_runs: int, runs: int) -> dict[str, Any]:
    runs_board = board(n_runs)
    run_ids, matrix, _, _ = selection._matrix(runs_board)
    parts: dict[str, Callable[[], Any]] = {
        "matrix": lambda: selection._matrix(runs_board),
        "cscv": lambda: selection.cscv_lambdas(matrix, BLOCKS),
        "mcs": lambda: selection._confidence_set(run_ids, -matrix, selection.DEFAULT_ALPHA),
        "compute": lambda: selection.compute(runs_board, higher_is_better=True, blocks=BLOCKS),
    }
    seconds: dict[str, list[float]] = {name: [] for name in parts}
    cpu: list[float] = []
    result: selection.Selection | None = None
    for _ in range(runs):
        for name, fn in parts.items():
            cpu_before = time.process_time()
            out, dt = timed(fn)
            seconds[name].append(dt)
            if name == "compute":
                cpu.append(time.process_time() - cpu_before)
                result = out
    assert result is not None
    return {
        "runs": n_runs,
        "folds": FOLDS,
        "blocks": BLOCKS,
        "splits": result.splits,
        "pbo": result.pbo,
        "tied": len(result.tied),
        "candidates": result.candidates,
        "seconds": {name: median(values) for name, values in seconds.items()},
        # CPU time of this process (all its threads) for the whole compute: what the machine's
        # other jobs do not inflate.
        "compute_cpu_seconds": median(cpu),
    }


def pass_cost(n_runs: int, backend: str = "sqlite") -> list[dict[str, Any]]:
    """The re-rank pass after one new run, with and without selection statistics."""
    from mlflow.tracking import MlflowClient

    from bench.servers import running_server
    from tests.support.watcher_runs import make_fold_runs, new_experiment
    from watcher.mlflow_io import MlflowTracking
    from watcher.service import Watcher
    from watcher.settings import WatcherSettings

    rng = np.random.default_rng(3)
    rows = []
    with running_server(backend) as server:
        client = MlflowClient(server.url)
        for label, selection, tag in (
            ("no `selection`", None, False),
            ("`selection`, values from `podium.folds`", {"blocks": 8}, True),
            ("`selection`, values from metric history", {"blocks": 8}, False),
        ):
            exp_id, name = new_experiment(client, "bench_sel")
            make_fold_runs(client, exp_id, rng.normal(0, 0.05, size=(n_runs, 21)), folds_tag=tag)
            rule: dict[str, Any] = {"name": "r", "experiments": [name], "metric": "avg_test_r2"}
            if selection is not None:
                rule["selection"] = selection
            settings = WatcherSettings.model_validate(
                {"tracking_uri": server.url, "rules": [rule], "http": {"enabled": False}}
            )
            watcher = Watcher(settings, MlflowTracking(server.url))
            for _ in range(3):  # the first ranking, then its paged count: settled
                watcher.run_pass()
            make_fold_runs(client, exp_id, rng.normal(0, 0.05, size=(1, 21)), folds_tag=tag, prefix="new")
            result = watcher.run_pass()
            idle = watcher.run_pass()
            rows.append(
                {
                    "case": label,
                    "runs": n_runs + 1,
                    "seconds": result.duration_seconds,
                    "calls": result.tracking_calls,
                    "idle_calls": idle.tracking_calls,
                    "idle_seconds": idle.duration_seconds,
                }
            )
    return rows


def pass_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| rule | runs | re-rank pass after one new run | tracking calls | next (idle) pass, calls |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['case']} | {row['runs']} | {row['seconds']:.2f} s | {row['calls']} | "
            f"{row['idle_seconds']:.2f} s, {row['idle_calls']} |"
        )
    return "\n".join(lines)


def markdown(rows: list[dict[str, Any]], runs: int, load: tuple[float, float]) -> str:
    lines = [
        f"Median of {runs} runs; load average {load[0]:.1f} at start, {load[1]:.1f} at the end "
        "(other jobs on the 2 cores).",
        "",
        "| runs | splits | board → matrix | CSCV (PBO, λ) | confidence set | whole `compute` | its CPU time | PBO | tied |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        s = row["seconds"]
        tied = f"{row['tied']} of {row['candidates']} candidates"
        lines.append(
            f"| {row['runs']:,} | {row['splits']:,} | {s['matrix']:.3f} s | {s['cscv']:.3f} s | "
            f"{s['mcs']:.3f} s | **{s['compute']:.3f} s** | {row['compute_cpu_seconds']:.3f} s | "
            f"{row['pbo']:.2f} | {tied} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per size (median)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--pass-runs", type=int, default=0, help="also time a pass over N runs (0: no)")
    args = parser.parse_args(argv)
    start_load = os.getloadavg()[0]
    rows = [measure(n, args.runs) for n in args.sizes]
    passes = pass_cost(args.pass_runs) if args.pass_runs else []
    load = (start_load, os.getloadavg()[0])
    save("selection", {"machine": machine(), "rows": rows, "passes": passes, "loadavg_at_end": load[1]})
    print(markdown(rows, args.runs, load))
    if passes:
        print()
        print(pass_markdown(passes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
