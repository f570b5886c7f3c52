"""Where a Podium sweep's wall time goes: XGBoost's own training and prediction against the rest.

One sweep on the built-in sample with the default trial settings, ``--jobs 1`` (every trial in
this process, so one profiler sees all of it), logging to a real `mlflow server` (sqlite),
under pyinstrument (a sampling profiler: its call tree keeps every path apart, so an XGBoost
call is attributed to the phase it was made in, and its overhead is small). XGBoost's own work
is the time inside ``xgboost.train`` and the ``Booster`` predict calls, wherever they are made
(fold scores, permutation importance, SHAP, the model's signature). The rest is split by the
trainer's own functions: data (loading, checks, each window's ``QuantileDMatrix``), importance
outside XGBoost, logging (the model, the batch, artifacts and charts) and the remainder.
Process start (interpreter and imports, paid once per sweep and once per worker) is timed in a
fresh interpreter. The unprofiled wall time of the same sweep is reported beside it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyinstrument import Profiler

from bench import common
from bench.common import log
from bench.servers import running_server
from trainer.config import TrainerConfig, load_config
from trainer.sweep import run_sweep

XGBOOST = {
    ("xgboost/training.py", "train"),
    ("xgboost/core.py", "inplace_predict"),
    ("xgboost/core.py", "predict"),
    # QuantileDMatrix (and DMatrix) construction: the quantile sketch of the hist method, work
    # XGBRegressor.fit does inside fit. Reported apart too (``xgboost_by_phase_seconds["data"]``).
    ("xgboost/core.py", "__init__"),
}
PHASES = {
    ("trainer/prepare.py", "load_checked"): "data",
    ("trainer/train.py", "matrix"): "data",
    ("trainer/importance.py", "for_trial"): "importance",
    ("trainer/worker.py", "_log"): "logging",
    # the target's scale: rescaling a booster to the data's units (XGBoost's model round trip)
    ("trainer/booster.py", "in_data_units"): "scaling",
}


def _key(frame: Any, table: dict[tuple[str, str], Any]) -> Any:
    path = (frame.file_path or "").replace("\\", "/")
    for (part, name), value in table.items():
        if frame.function == name and path.endswith(part):
            return value
    return None


def attribute(root: Any) -> dict[str, float]:
    """Seconds per (phase, xgboost-or-not), walking pyinstrument's call tree once."""
    out: dict[str, float] = {}

    def walk(frame: Any, phase: str) -> None:
        if _key(frame, dict.fromkeys(XGBOOST, True)):
            out[f"xgboost:{phase}"] = out.get(f"xgboost:{phase}", 0.0) + frame.time
            return
        phase = _key(frame, PHASES) or phase
        own = frame.time - sum(child.time for child in frame.children)
        out[phase] = out.get(phase, 0.0) + own
        for child in frame.children:
            walk(child, phase)

    walk(root, "other")
    return out


@dataclass(frozen=True)
class Profile:
    """One profiled sweep: wall time, its parts, and XGBoost's time by phase."""

    wall: float
    # xgboost, data, importance_outside_xgboost, logging_outside_xgboost, scaling_outside_xgboost, other
    parts: dict[str, float]
    xgboost_by_phase: dict[str, float]
    text: str  # pyinstrument's call tree

    def shares(self, start: float) -> dict[str, float]:
        """XGBoost's share of the sweep plus process start ``start``, and the rest's."""
        total = self.wall + start
        xgb_total = self.parts["xgboost"]
        # Per trial, once-per-sweep costs (data, process start) apart: what a long sweep tends to.
        per_trial_outside = (
            self.parts["importance_outside_xgboost"]
            + self.parts["logging_outside_xgboost"]
            + self.parts["scaling_outside_xgboost"]
            + self.parts["other"]
        )
        return {
            "xgboost_share": xgb_total / total,
            "outside_xgboost_share": 1 - xgb_total / total,
            # The same with each window's QuantileDMatrix counted as data, not as XGBoost's.
            "outside_xgboost_share_matrices_apart": 1
            - (xgb_total - self.xgboost_by_phase.get("data", 0.0)) / total,
            "steady_state_outside_xgboost_share": per_trial_outside / (self.wall - self.parts["data"]),
        }


def profile_sweep(config: TrainerConfig, tracking_uri: str) -> Profile:
    """Run ``config``'s sweep under pyinstrument and split its wall time (see the module doc)."""
    profiler = Profiler(interval=0.002)
    t0 = time.perf_counter()
    profiler.start()
    run_sweep(config, tracking_uri=tracking_uri, progress=False)
    profiler.stop()
    wall = time.perf_counter() - t0
    session = profiler.last_session
    assert session is not None  # set by stop()
    spent = attribute(session.root_frame())
    xgb = {k.split(":", 1)[1]: v for k, v in spent.items() if k.startswith("xgboost:")}
    parts = {
        "xgboost": sum(xgb.values()),
        "data": spent.get("data", 0.0),
        "importance_outside_xgboost": spent.get("importance", 0.0),
        "logging_outside_xgboost": spent.get("logging", 0.0),
        "scaling_outside_xgboost": spent.get("scaling", 0.0),
    }
    parts["other"] = wall - sum(parts.values())
    return Profile(wall, parts, xgb, profiler.output_text(unicode=True, color=False, show_all=False))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--out", default="profile")
    args = parser.parse_args(argv)
    common.quiet_logs()
    results: dict[str, Any] = {"machine": common.machine(), "trials": args.trials}
    with running_server("sqlite") as server:
        config = load_config(None, {"trials": args.trials, "jobs": 1, "experiment": "bench_profile_plain"})
        results["load_average_before"] = os.getloadavg()[0]
        c0, t0 = time.process_time(), time.perf_counter()
        run_sweep(config, tracking_uri=server.url, progress=False)
        results["unprofiled_seconds"] = time.perf_counter() - t0
        results["unprofiled_cpu_seconds"] = time.process_time() - c0
        config = load_config(None, {"trials": args.trials, "jobs": 1, "experiment": "bench_profile"})
        profile = profile_sweep(config, server.url)
        results["load_average_after"] = os.getloadavg()[0]
    start = process_start()
    parts, wall, total = profile.parts, profile.wall, profile.wall + start
    shares = profile.shares(start)
    results["steady_state_outside_xgboost_share"] = shares.pop("steady_state_outside_xgboost_share")
    (common.RESULTS / f"{args.out}.txt").write_text(profile.text)
    results.update(
        {
            "profiled_seconds": wall,
            "process_start_seconds": start,
            "parts_seconds": parts,
            "xgboost_by_phase_seconds": profile.xgboost_by_phase,
            **shares,
        }
    )
    for name, seconds in parts.items():
        log(f"{name}: {seconds:.1f} s ({seconds / total:.0%})")
    log(f"XGBoost by phase: { {k: round(v, 1) for k, v in profile.xgboost_by_phase.items()} }")
    log(f"process start: {start:.1f} s; outside XGBoost: {results['outside_xgboost_share']:.0%}")
    log(
        f"per trial, once-per-sweep costs apart: {results['steady_state_outside_xgboost_share']:.0%} outside XGBoost"
    )
    log(f"wrote {common.save(args.out, results)}")


def process_start() -> float:
    """A fresh interpreter importing what a sweep imports."""
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import trainer.cli, trainer.sweep, trainer.worker, mlflow.xgboost"],
        check=True,
    )
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
