"""Ray backend benchmark: `--backend ray` against `--backend local` at the same `--jobs`.

The built-in sample, the default trial settings, one `mlflow server` (sqlite); one local Ray
cluster with 2 CPUs is started once (as a cluster a team keeps running) and every Ray sweep
connects to it. Sides alternate so load drifts hit both alike. Reported: trials per minute over
the whole sweep (data loading, worker start-up and the driver's connect included), the gain
from 1 to 2 workers on each backend, and whether both backends logged the same numbers trial by
trial. One more sweep starts and stops its own local Ray (no address), to show that cost.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from bench import common
from bench.bench_trainer import compare, latest_metrics
from bench.common import log, median
from bench.servers import running_server
from tests.support.ray_cluster import start_cluster
from trainer.config import load_config
from trainer.executor import ExecutorFactory, local_executor
from trainer.ray_executor import ray_factory
from trainer.sweep import run_sweep


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--jobs", default="1,2")
    parser.add_argument("--out", default="ray")
    parser.add_argument("--ray-first", action="store_true", help="each rep's first pair starts with Ray")
    parser.add_argument(
        "--no-own-cluster", action="store_true", help="skip the sweep that starts its own local Ray"
    )
    args = parser.parse_args(argv)
    common.quiet_logs()
    jobs_list = [int(j) for j in args.jobs.split(",")]
    results: dict[str, Any] = {
        "machine": common.machine(),
        "trials": args.trials,
        "reps": args.reps,
        "sweeps": [],
    }
    with running_server("sqlite") as server:
        workdir = server.workdir
        started = time.perf_counter()
        cluster = start_cluster(max(jobs_list), Path(workdir) / "ray.log")
        assert cluster.address  # waits until the cluster is up
        results["cluster_start_seconds"] = time.perf_counter() - started
        os.environ.update(cluster.env)  # the driver joins with the cluster's token
        try:
            sides: list[tuple[str, int]] = []
            for rep in range(args.reps):
                for jobs in jobs_list:
                    pair = [("local", jobs), ("ray", jobs)]
                    sides += [(s, j) for s, j in (pair if (rep + args.ray_first) % 2 == 0 else pair[::-1])]
            if not args.no_own_cluster:
                sides.append(("ray_own_cluster", max(jobs_list)))
            for i, (side, jobs) in enumerate(sides):
                name = f"bench_ray_{side}_j{jobs}_{i}"
                config = load_config(None, {"trials": args.trials, "jobs": jobs, "experiment": name})
                factory: ExecutorFactory = local_executor
                if side == "ray":
                    factory = ray_factory(cluster.address)
                elif side == "ray_own_cluster":
                    factory = ray_factory(None)
                load_before = os.getloadavg()[0]
                cpu0 = _cpu()
                t0 = time.perf_counter()
                summary = run_sweep(config, tracking_uri=server.url, progress=False, executor_factory=factory)
                seconds = time.perf_counter() - t0
                cpu = _cpu() - cpu0
                if summary.failed:
                    raise RuntimeError(f"{name}: trials failed: {summary.failed[0].error}")
                row = {
                    "side": side,
                    "jobs": jobs,
                    "experiment": name,
                    "seconds": seconds,
                    "trials_per_minute": args.trials / seconds * 60,
                    # this process and its reaped children (local pool workers, an own local Ray);
                    # the shared cluster's actors are not children: their CPU is not in it
                    "cpu_seconds": cpu,
                    "load_average_before": load_before,
                    "load_average_after": os.getloadavg()[0],
                    # a trial's own compute (training, scores, importance), logging apart
                    "trial_seconds_median": median([o.seconds for o in summary.outcomes]),
                }
                results["sweeps"].append(row)
                log(
                    f"{side} jobs={jobs}: {row['trials_per_minute']:.2f} trials/min ({seconds:.1f} s, "
                    f"CPU {cpu:.1f} s, load {load_before:.1f} -> {row['load_average_after']:.1f})"
                )
        finally:
            cluster.stop()
        client = MlflowClient(server.url)
        reference = latest_metrics(client, results["sweeps"][0]["experiment"])
        checks = []
        for row in results["sweeps"][1:]:
            metrics = latest_metrics(client, row["experiment"])
            for run_name in sorted(reference):
                checks.append(
                    {
                        "experiment": row["experiment"],
                        "run": run_name,
                        **compare(metrics[run_name], reference[run_name]),
                    }
                )
        results["checks"] = checks
        log(f"same metrics: {all(c['same'] for c in checks)} ({len(checks)} runs compared)")
    summary_rows = {}
    for side in ("local", "ray"):
        for jobs in jobs_list:
            rows = [r for r in results["sweeps"] if r["side"] == side and r["jobs"] == jobs]
            summary_rows[f"{side}_j{jobs}"] = median([r["trials_per_minute"] for r in rows])
    results["median_trials_per_minute"] = summary_rows
    log(f"medians: {summary_rows}")
    log(f"wrote {common.save(args.out, results)}")


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


if __name__ == "__main__":
    main()
