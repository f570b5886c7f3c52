"""Trainer benchmark: Podium's sweep vs a plain loop on the built-in sample, same server.

Both log to one `mlflow server` through a counting proxy (the trainer's worker processes too),
with the same data, folds, hyperparameters and seeds; their metrics must agree. Reported:
trials per minute (whole sweep, data loading and worker start-up included), tracking calls per
trial (artifact file uploads apart), and where a trial's time goes.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from typing import Any

from mlflow import MlflowClient

from bench import common, plain_loop
from bench.common import Calls, log, median
from bench.servers import running_server
from tests.support.proxy import Proxy
from trainer import data
from trainer.config import load_config
from trainer.sweep import run_sweep

REL_TOL = 1e-6


def compare(podium: dict[str, float], plain: dict[str, float]) -> dict[str, Any]:
    """Compare two runs' latest metrics; importance keys may differ only among exact-zero ties."""
    worst = 0.0
    mismatched: list[str] = []
    for key in sorted(set(podium) & set(plain)):
        a, b = podium[key], plain[key]
        if math.isnan(a) and math.isnan(b):
            continue
        diff = abs(a - b) / max(abs(a), abs(b), 1e-12)
        if not math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-12):
            mismatched.append(f"{key}: {a!r} vs {b!r}")
        if abs(a - b) > 1e-12:
            worst = max(worst, diff)
    only = sorted((set(podium) ^ set(plain)) - {"importance_skipped"})
    # A key logged by one side only must be an importance key of value 0 (a tie at zero
    # broken differently: Podium by SHAP, the plain loop by column order).
    bad_only = [
        k for k in only if not (k.startswith("importance_") and (podium.get(k) or plain.get(k)) == 0.0)
    ]
    return {
        "compared": len(set(podium) & set(plain)),
        "max_rel_diff": worst,
        "mismatched": mismatched,
        "one_side_only": only,
        "same": not mismatched and not bad_only,
    }


def latest_metrics(client: MlflowClient, experiment_name: str) -> dict[str, dict[str, float]]:
    exp = client.get_experiment_by_name(experiment_name)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return {r.info.run_name: dict(r.data.metrics) for r in runs if r.info.status == "FINISHED"}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="sqlite")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--jobs", default="1,2", help="Podium --jobs values to measure")
    parser.add_argument("--out", default="trainer")
    args = parser.parse_args(argv)
    common.quiet_logs()
    jobs_list = [int(j) for j in args.jobs.split(",")]
    results: dict[str, Any] = {
        "machine": common.machine(),
        "trials": args.trials,
        "reps": args.reps,
        "backend": args.backend,
        "sweeps": [],
    }
    ds = data.load(None)
    with running_server(args.backend) as server:
        direct = MlflowClient(server.url)
        proxy = Proxy(server.url)
        proxy.timeout = 600.0
        try:
            for rep in range(args.reps):
                # Alternate the sides so machine load drifts hit both alike.
                sides = [("plain", 1), *(("podium", j) for j in jobs_list)]
                if rep % 2:
                    sides.reverse()
                for side, jobs in sides:
                    name = f"bench_trainer_{side}_j{jobs}_{rep}"
                    config = load_config(None, {"trials": args.trials, "jobs": jobs, "experiment": name})
                    proxy.reset()
                    started = time.perf_counter()
                    if side == "plain":
                        plain_loop.run_sweep(config, ds, proxy.url, name)
                    else:
                        summary = run_sweep(config, tracking_uri=proxy.url, progress=False)
                        if summary.failed:
                            raise RuntimeError(f"{name}: trials failed: {summary.failed[0].error}")
                    seconds = time.perf_counter() - started
                    calls = Calls.of(proxy.tracking_calls())
                    row = {
                        "side": side,
                        "jobs": jobs,
                        "rep": rep,
                        "experiment": name,
                        "seconds": seconds,
                        "trials_per_minute": args.trials / seconds * 60,
                        "calls": calls.as_dict(),
                        "calls_per_trial": calls.total / args.trials,
                        # Experiment lookups/creation happen once per sweep, the rest per trial.
                        "sweep_calls": sum(v for k, v in calls.by_endpoint.items() if " experiments/" in k),
                        "per_trial_calls": sum(
                            v for k, v in calls.by_endpoint.items() if " experiments/" not in k
                        )
                        / args.trials,
                        "artifact_requests": len(proxy.requests) - calls.total,
                    }
                    results["sweeps"].append(row)
                    log(
                        f"trainer {side} jobs={jobs} rep {rep}: {row['trials_per_minute']:.2f} trials/min, "
                        f"{row['per_trial_calls']:.2f} calls per trial + {row['sweep_calls']} per sweep"
                    )
            # Same numbers: every Podium sweep against the plain loop, trial by trial.
            checks = []
            plain = latest_metrics(direct, "bench_trainer_plain_j1_0")
            for row in results["sweeps"]:
                if row["side"] != "podium":
                    continue
                podium = latest_metrics(direct, row["experiment"])
                for run_name in sorted(plain):
                    check = compare(podium[run_name], plain[run_name])
                    checks.append({"experiment": row["experiment"], "run": run_name, **check})
            results["checks"] = checks
            same = all(c["same"] for c in checks)
            worst = max((c["max_rel_diff"] for c in checks), default=0.0)
            log(f"same metrics: {same} ({len(checks)} runs compared, max relative diff {worst:.2e})")
        finally:
            proxy.close()
    for side, jobs in {(r["side"], r["jobs"]) for r in results["sweeps"]}:
        rows = [r for r in results["sweeps"] if r["side"] == side and r["jobs"] == jobs]
        log(f"{side} j{jobs}: median {median([r['trials_per_minute'] for r in rows]):.2f} trials/min")
    log(f"wrote {common.save(args.out, results)}")


if __name__ == "__main__":
    main()
