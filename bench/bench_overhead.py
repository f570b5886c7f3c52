"""The trainer's overhead before and after a change, side by side in one run.

``bench.bench_profile`` (one ``--jobs 1`` sweep on the built-in sample, unprofiled and then under
pyinstrument, plus process start) is run in turn from an older checkout (``--before DIR``, e.g.
``git worktree add /tmp/before <commit>``) and from this one, each in a fresh interpreter with
its own checkout first on ``PYTHONPATH``: the same data, trials, settings and server code. The
order alternates by round (before/after, then after/before), so a load that drifts during the
run does not favour one side. On a shared machine the shares are what to compare; the seconds
move with the load, which each sweep records.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import common
from bench.common import log

PARTS = (
    "xgboost",
    "importance_outside_xgboost",
    "logging_outside_xgboost",
    "scaling_outside_xgboost",
    "other",
)


def run_side(checkout: Path, trials: int, out: str) -> dict[str, Any]:
    """One ``bench_profile`` run from ``checkout``; its results, with the load around it."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    load_before = os.getloadavg()[0]
    subprocess.run(
        [sys.executable, "-m", "bench.bench_profile", "--trials", str(trials), "--out", out],
        cwd=checkout,
        env=env,
        check=True,
    )
    result: dict[str, Any] = json.loads((checkout / "bench" / "results" / f"{out}.json").read_text())
    result["load_around"] = [load_before, os.getloadavg()[0]]
    return result


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over a side's runs: shares, seconds and each part's share of sweep + start."""
    shares = {
        name: common.median([r[name] for r in runs])
        for name in ("outside_xgboost_share", "steady_state_outside_xgboost_share")
    }
    seconds = {
        name: common.median([r[name] for r in runs])
        for name in (
            "unprofiled_seconds",
            "unprofiled_cpu_seconds",
            "profiled_seconds",
            "process_start_seconds",
        )
    }
    parts = {
        part: common.median(
            [
                r["parts_seconds"].get(part, 0.0) / (r["profiled_seconds"] + r["process_start_seconds"])
                for r in runs
            ]
        )
        for part in PARTS
    }
    parts["process_start"] = common.median(
        [r["process_start_seconds"] / (r["profiled_seconds"] + r["process_start_seconds"]) for r in runs]
    )
    return {**shares, **seconds, "part_shares": parts, "runs": len(runs)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", type=Path, required=True, help="checkout of the code to compare against")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--after-first", action="store_true", help="start the first round with this checkout")
    parser.add_argument("--out", default="overhead")
    args = parser.parse_args(argv)
    sides = {"before": args.before.resolve(), "after": common.ROOT}
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for round_ in range(args.rounds):
        order = ["before", "after"] if (round_ + args.after_first) % 2 == 0 else ["after", "before"]
        for side in order:
            log(f"round {round_ + 1}: {side} ({sides[side]})")
            runs[side].append(run_side(sides[side], args.trials, f"{args.out}_{side}_{round_ + 1}"))
    results = {
        "machine": common.machine(),
        "trials": args.trials,
        "before": {"checkout": str(sides["before"]), **summary(runs["before"])},
        "after": summary(runs["after"]),
        "runs": runs,
    }
    for side in ("before", "after"):
        s = results[side]
        log(
            f"{side}: outside XGBoost {s['outside_xgboost_share']:.1%} of sweep + start "
            f"(per trial {s['steady_state_outside_xgboost_share']:.1%}); unprofiled "
            f"{s['unprofiled_seconds']:.1f} s, {s['unprofiled_cpu_seconds']:.1f} s CPU; "
            + ", ".join(f"{k} {v:.1%}" for k, v in s["part_shares"].items())
        )
    log(f"wrote {common.save(args.out, results)}")


if __name__ == "__main__":
    main()
