"""A direction sweep against the regression sweep on the built-in sample, side by side.

The same trials (same seed, same hyperparameters, default settings, ``--jobs 1``) run once with
``--task regression`` and once with ``--task direction``, logging to one real `mlflow server`
(sqlite): trials per minute of each, unprofiled, alternating the order task by task so a change
in the machine's load falls on both. Then each sweep once more under pyinstrument
(``bench_profile.profile_sweep``): the share of the wall time outside XGBoost's own training and
prediction, split as ``bench_profile`` splits it (data, importance, logging, the rest).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from typing import Any

from bench import common
from bench.bench_profile import process_start, profile_sweep
from bench.common import log
from bench.servers import running_server
from trainer.config import load_config
from trainer.sweep import run_sweep

TASKS = ("regression", "direction")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--out", default="direction")
    args = parser.parse_args(argv)
    common.quiet_logs()
    results: dict[str, Any] = {"machine": common.machine(), "trials": args.trials, "tasks": {}}
    with running_server("sqlite") as server:
        results["load_average_before"] = os.getloadavg()[0]
        for task in TASKS:
            config = load_config(
                None, {"trials": args.trials, "jobs": 1, "task": task, "experiment": f"bench_{task}"}
            )
            t0 = time.perf_counter()
            summary = run_sweep(config, tracking_uri=server.url, progress=False)
            seconds = time.perf_counter() - t0
            metric = config.resolved_task().main_metric
            results["tasks"][task] = {
                "seconds": seconds,
                "trials_per_minute": args.trials * 60 / seconds,
                "finished": len(summary.finished),
                f"best_{metric}": summary.best(1)[0].metrics[metric] if summary.best(1) else None,
            }
            log(
                f"{task}: {args.trials} trials in {seconds:.1f} s ({args.trials * 60 / seconds:.2f} trials/min)"
            )
        start = process_start()
        for task in TASKS:
            config = load_config(
                None, {"trials": args.trials, "jobs": 1, "task": task, "experiment": f"bench_{task}_profiled"}
            )
            profile = profile_sweep(config, server.url)
            (common.RESULTS / f"{args.out}_{task}.txt").write_text(profile.text)
            shares = profile.shares(start)
            results["tasks"][task].update(
                {"profiled_seconds": profile.wall, "parts_seconds": profile.parts, **shares}
            )
            log(
                f"{task} profiled: {profile.wall:.1f} s; outside XGBoost {shares['outside_xgboost_share']:.0%} "
                f"(per trial, once-per-sweep costs apart: {shares['steady_state_outside_xgboost_share']:.0%}); "
                + ", ".join(f"{k} {v:.1f} s" for k, v in profile.parts.items())
            )
        results["load_average_after"] = os.getloadavg()[0]
    results["process_start_seconds"] = start
    by = results["tasks"]
    results["direction_over_regression_trials_per_minute"] = (
        by["direction"]["trials_per_minute"] / by["regression"]["trials_per_minute"]
    )
    log(
        f"direction / regression trials per minute: {results['direction_over_regression_trials_per_minute']:.2f}"
    )
    log(f"wrote {common.save(args.out, results)}")


if __name__ == "__main__":
    main()
