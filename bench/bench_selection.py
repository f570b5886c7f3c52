"""The selection statistics' pure computation (watcher/selection.py) at board sizes.

Boards of N runs x 60 folds x 16 blocks (C(16, 8) = 12,870 splits), per-fold values drawn as
noise plus a small skill that grows with the run's index, so the confidence set has work to do.
Reports the median wall time of several runs of each part: reading the board into a matrix,
the CSCV (PBO and its λ), the model confidence set (over the best ``MCS_CANDIDATES`` runs), and
the whole ``compute``. Goal (DESIGN.md): under a second at 1,000 runs.

    .venv/bin/python bench/bench_selection.py [--runs 3] [--sizes 100 1000 5000] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import sys
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
    result: selection.Selection | None = None
    for _ in range(runs):
        for name, fn in parts.items():
            out, dt = timed(fn)
            seconds[name].append(dt)
            if name == "compute":
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
    }


def markdown(rows: list[dict[str, Any]], runs: int, load: tuple[float, float]) -> str:
    lines = [
        f"Median of {runs} runs; load average {load[0]:.1f} at start, {load[1]:.1f} at the end "
        "(other jobs on the 2 cores).",
        "",
        "| runs | splits | board → matrix | CSCV (PBO, λ) | confidence set | whole `compute` | PBO | tied |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        s = row["seconds"]
        tied = f"{row['tied']} of {row['candidates']} candidates"
        lines.append(
            f"| {row['runs']:,} | {row['splits']:,} | {s['matrix']:.3f} s | {s['cscv']:.3f} s | "
            f"{s['mcs']:.3f} s | **{s['compute']:.3f} s** | {row['pbo']:.2f} | {tied} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per size (median)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--markdown", action="store_true", help="print only the markdown table")
    args = parser.parse_args(argv)
    start_load = os.getloadavg()[0]
    rows = [measure(n, args.runs) for n in args.sizes]
    load = (start_load, os.getloadavg()[0])
    save("selection", {"machine": machine(), "rows": rows, "loadavg_at_end": load[1]})
    print(markdown(rows, args.runs, load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
