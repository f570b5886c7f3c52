"""Where a Podium sweep's wall time goes: XGBoost's own training and prediction against the rest.

One sweep on the built-in sample with the default trial settings, ``--jobs 1`` (every trial in
this process, so one profiler sees all of it), logging to a real `mlflow server` (sqlite),
under cProfile. XGBoost's own work is the time inside ``xgboost.train`` and the ``Booster``
predict calls (wherever they are made: fold scores, permutation importance, SHAP, the
signature). Everything else is split by the trainer's own functions: data (loading, checks,
the per-window ``QuantileDMatrix``), importance outside its XGBoost predictions, logging (the
model, the batch, artifacts and charts), and the remainder. Process start (interpreter and
imports, paid once per sweep and once per worker) is timed in a fresh interpreter.
cProfile slows Python-heavy code more than XGBoost's C++, so the shares outside XGBoost are if
anything overstated; the unprofiled wall time of the same sweep is reported beside them.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench import common
from bench.common import log
from bench.servers import running_server
from trainer.config import load_config
from trainer.sweep import run_sweep

Func = tuple[str, int, str]  # (file, line, name), pstats' key


def _cumulative(stats: pstats.Stats, match: Callable[[Func], bool]) -> float:
    """Cumulative seconds of the matching functions, counting nested matches once."""
    table: dict[Func, Any] = stats.stats  # type: ignore[attr-defined]
    total = 0.0
    for func, (_, _, _, cumtime, callers) in table.items():
        if not match(func):
            continue
        # time reached through another matching function is already in that one's cumtime
        nested = sum(c[3] for caller, c in callers.items() if match(caller))
        total += cumtime - nested
    return total


def _is(path_part: str, *names: str) -> Callable[[Func], bool]:
    return lambda f: path_part in f[0] and f[2] in names


def _xgboost(f: Func) -> bool:
    return (_is("xgboost/training.py", "train")(f)) or (
        _is("xgboost/core.py", "inplace_predict", "predict")(f)
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--out", default="profile")
    args = parser.parse_args(argv)
    common.quiet_logs()
    results: dict[str, Any] = {"machine": common.machine(), "trials": args.trials}
    with running_server("sqlite") as server:
        config = load_config(None, {"trials": args.trials, "jobs": 1, "experiment": "bench_profile_plain"})
        t0 = time.perf_counter()
        run_sweep(config, tracking_uri=server.url, progress=False)
        results["unprofiled_seconds"] = time.perf_counter() - t0
        config = load_config(None, {"trials": args.trials, "jobs": 1, "experiment": "bench_profile"})
        profiler = cProfile.Profile()
        t0 = time.perf_counter()
        profiler.enable()
        run_sweep(config, tracking_uri=server.url, progress=False)
        profiler.disable()
        wall = time.perf_counter() - t0
    stats = pstats.Stats(profiler)
    xgb_total = _cumulative(stats, _xgboost)
    train = _cumulative(stats, _is("xgboost/training.py", "train"))
    predict = xgb_total - train
    data = _cumulative(stats, _is("trainer/sweep.py", "load_checked")) + _cumulative(
        stats, _is("trainer/train.py", "matrix")
    )
    importance = _cumulative(stats, _is("trainer/importance.py", "for_trial"))
    importance_xgb = _cumulative_within(stats, _is("trainer/importance.py", "for_trial"), _xgboost)
    logging_ = _cumulative(stats, _is("trainer/sweep.py", "_log"))
    logging_xgb = _cumulative_within(stats, _is("trainer/sweep.py", "_log"), _xgboost)
    start = _process_start()
    parts = {
        "xgboost_train": train,
        "xgboost_predict": predict,
        "data": data,
        "importance_outside_xgboost": importance - importance_xgb,
        "logging_outside_xgboost": logging_ - logging_xgb,
    }
    parts["other"] = wall - sum(parts.values())
    results.update(
        {
            "profiled_seconds": wall,
            "process_start_seconds": start,
            "parts_seconds": parts,
            "xgboost_share": xgb_total / (wall + start),
            "outside_xgboost_share": 1 - xgb_total / (wall + start),
        }
    )
    for name, seconds in parts.items():
        log(f"{name}: {seconds:.1f} s ({seconds / (wall + start):.0%})")
    log(f"process start: {start:.1f} s; outside XGBoost: {results['outside_xgboost_share']:.0%}")
    top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:25]  # type: ignore[attr-defined]
    results["top_self_time"] = [
        {"func": f"{f[0].split('site-packages/')[-1]}:{f[2]}", "seconds": v[2]} for f, v in top
    ]
    log(f"wrote {common.save(args.out, results)}")


def _cumulative_within(
    stats: pstats.Stats, root: Callable[[Func], bool], inner: Callable[[Func], bool]
) -> float:
    """Seconds of ``inner`` functions reached from ``root`` functions: walk the caller graph up
    from each inner call edge and attribute the edge when a root is among its ancestors."""
    table: dict[Func, Any] = stats.stats  # type: ignore[attr-defined]
    memo: dict[Func, bool] = {}

    def under_root(func: Func, seen: frozenset[Func] = frozenset()) -> bool:
        if root(func):
            return True
        if func in memo:
            return memo[func]
        if func in seen or func not in table:
            return False
        result = any(under_root(c, seen | {func}) for c in table[func][4])
        memo[func] = result
        return result

    total = 0.0
    for func, (_, _, _, _, callers) in table.items():
        if not inner(func):
            continue
        for caller, edge in callers.items():
            if not inner(caller) and under_root(caller):
                total += edge[3]
    return total


def _process_start() -> float:
    """A fresh interpreter importing what a sweep imports."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import trainer.cli, trainer.sweep, mlflow.xgboost"], check=True)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
