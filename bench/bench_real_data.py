"""The default sweep on real intraday bars: how many trials learned something, and how well.

Runs ``python -m trainer train --data tests/data/EURUSD_1h.csv --no-progress`` (every other
setting the default: 24 trials, ``--jobs 2``) against a fresh sqlite store, then reads the runs
back. A trial learned nothing when it is tagged ``degenerate``, or, for a trainer that does not
tag, when its ``avg_train_r2`` is within 1e-6 of 0 (a model with no split predicts one value
on every training row, which scores R² 0 there). ``--source DIR`` runs the trainer of another
checkout (its package directory first on ``PYTHONPATH``), so today's trainer and a change can
be measured by the same script; ``--label`` names the result in bench/results/real_data.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from bench import common
from bench.common import log

DATA = common.ROOT / "tests" / "data" / "EURUSD_1h.csv"
FLAT_R2 = 1e-6


def learned(run: Any) -> bool:
    if run.data.tags.get("degenerate") == "true":
        return False
    return abs(run.data.metrics.get("avg_train_r2", 0.0)) > FLAT_R2


def best(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return max(finite) if finite else None


def measure(source: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="podium-bench-real-") as tmp:
        env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db")
        if source is not None:
            env["PYTHONPATH"] = f"{source}{os.pathsep}{env.get('PYTHONPATH', '')}"
        command = [sys.executable, "-m", "trainer", "train", "--data", str(DATA), "--no-progress"]
        started = time.perf_counter()
        done = subprocess.run(command, env=env, cwd=tmp, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"the sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")
        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        (experiment,) = [e for e in client.search_experiments() if e.name.startswith("wf_xgboost_")]
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
    metric = lambda run, key: run.data.metrics.get(key, math.nan)  # noqa: E731
    good = [r for r in runs if learned(r)]
    return {
        "experiment": experiment.name,
        "trials": len(runs),
        "learned": len(good),
        "learned_nothing": len(runs) - len(good),
        "importance_nonzero_of_learned": sum(1 for r in good if metric(r, "importance_max") > 0),
        "best_avg_test_r2": best([metric(r, "avg_test_r2") for r in runs]),
        "best_avg_test_r2_of_learned": best([metric(r, "avg_test_r2") for r in good]),
        "best_avg_test_r2_os": best([metric(r, "avg_test_r2_os") for r in runs]),
        "num_folds": metric(runs[0], "num_folds") if runs else None,
        "sweep_seconds": round(seconds, 1),
        "table": done.stdout.strip().splitlines(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="the checkout whose trainer runs (default: this one)")
    parser.add_argument("--label", default="after", help="name of this measurement in the results")
    args = parser.parse_args(argv)
    common.quiet_logs()
    log(f"default sweep on {DATA.name} ({args.label})")
    result = {"machine": common.machine(), **measure(args.source)}
    path = common.RESULTS / "real_data.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[args.label] = result
    common.save("real_data", results)
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine", "table")}, indent=2))
    print("\n".join(result["table"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
