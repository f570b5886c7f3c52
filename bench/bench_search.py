"""TPE against random search, side by side: the same trial budget, five seeds each.

For each data set (the built-in sample, and arch's real S&P 500 daily bars as the package ships
them) and each seed, both searches run the same trainer trial (``trainer.train.run_trial``,
every fold of the walk-forward plan, no MLflow: the search is what is compared, not logging)
through the sweep's own samplers (``trainer.search.RandomSampler`` and ``TpeSampler``, asked
and told one trial at a time). Reported:

- the median over seeds of the best ranking metric (``avg_test_r2``) after 8, 16 and 32 trials;
- the PBO of each sweep's board (``watcher.selection.compute`` over every trial's per-fold test
  R², 8 blocks): does adaptive search overfit the walk-forward folds more?
- TPE's ask + tell time per trial against the trial's own time (goal: under 1%).

The configuration is cheap on purpose (the machine is shared): fewer, shallower trees than the
defaults and no permutation importance; ``--quick`` shrinks it further for a smoke run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.common import log
from tests.support.real_data import arch_file
from trainer.config import TrainerConfig
from trainer.prepare import load_checked
from trainer.search import RandomSampler, Sampler, TpeSampler
from trainer.train import Prepared, run_trial
from watcher.selection import BoardRun, compute

SEEDS = (0, 1, 2, 3, 4)
BUDGET = 32
CHECKPOINTS = (8, 16, 32)
SPACE: dict[str, Any] = {
    "n_estimators": {"type": "int", "low": 10, "high": 30},
    "max_depth": {"type": "int", "low": 2, "high": 5},
    "learning_rate": {"type": "float", "low": 0.02, "high": 0.3, "log": True},
    "subsample": {"type": "float", "low": 0.6, "high": 1.0},
    "colsample_bytree": {"type": "float", "low": 0.4, "high": 1.0},
    "min_child_weight": {"type": "float", "low": 1.0, "high": 50.0, "log": True},
    "reg_lambda": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
    "reg_alpha": {"type": "float", "low": 0.001, "high": 1.0, "log": True},
}
DATASETS: dict[str, dict[str, Any]] = {
    # the built-in sample: 6 months' training, 2 months' test give 9 folds (PBO needs 8)
    "sample": {"walk_forward": {"train_months": 6, "test_months": 2}},
    # 1999-2018 daily bars: a year's training and a year's test give 18 folds
    "sp500": {"walk_forward": {"train_months": 12, "test_months": 12}},
}


def config_for(name: str, quick: bool) -> TrainerConfig:
    raw: dict[str, Any] = {"importance": {"enabled": False}, "search_space": SPACE, **DATASETS[name]}
    if name == "sp500":
        raw["data"] = {"path": str(arch_file("sp500"))}
    if quick:
        raw["search_space"] = {**SPACE, "n_estimators": {"type": "int", "low": 5, "high": 15}}
    return TrainerConfig.model_validate(raw)


def sweep(prepared: Prepared, search: str, seed: int, budget: int) -> dict[str, Any]:
    space = prepared.config.search_space
    sampler: Sampler = TpeSampler(space, seed, []) if search == "tpe" else RandomSampler(space, seed)
    metric = prepared.task.main_metric
    values: list[float] = []
    board: list[tuple[float, str, list[float | None]]] = []
    search_s = trial_s = 0.0
    for index in range(budget):
        t0 = time.perf_counter()
        hp = sampler.ask(index)
        t1 = time.perf_counter()
        result = run_trial(prepared, index, hp, seed + index)
        value = result.averages()[metric]
        t2 = time.perf_counter()
        sampler.tell(index, value)
        t3 = time.perf_counter()
        search_s += (t1 - t0) + (t3 - t2)
        trial_s += t2 - t1
        values.append(value)
        board.append((value, f"trial_{index}", [f.test[prepared.task.main] for f in result.folds]))
    best = {n: max(values[:n]) for n in CHECKPOINTS if n <= budget}
    ranked = sorted(board, key=lambda b: -b[0])
    selection = compute([BoardRun(run_id, folds) for _, run_id, folds in ranked], higher_is_better=True)
    return {
        "best": best,
        "pbo": selection.pbo,
        "pbo_reason": selection.reason,
        "folds": selection.folds,
        "search_s_per_trial": search_s / budget,
        "trial_s_per_trial": trial_s / budget,
    }


def measure(quick: bool) -> dict[str, Any]:
    budget = 8 if quick else BUDGET
    seeds = SEEDS[:2] if quick else SEEDS
    out: dict[str, Any] = {"budget": budget, "seeds": list(seeds), "space": SPACE, "data": {}}
    for name in DATASETS:
        config = config_for(name, quick)
        prepared = Prepared(load_checked(config), config)
        rows: dict[str, list[dict[str, Any]]] = {"random": [], "tpe": []}
        for seed in seeds:
            for search in ("random", "tpe"):  # interleaved: load drift hits both alike
                started = time.perf_counter()
                row = sweep(prepared, search, seed, budget)
                rows[search].append(row)
                log(
                    f"{name} {search} seed {seed}: best {row['best']} pbo {row['pbo']} "
                    f"({time.perf_counter() - started:.0f} s)"
                )
        out["data"][name] = {
            "folds": len(prepared.folds),
            "walk_forward": config.walk_forward.model_dump(),
            "runs": rows,
            "summary": {search: summarise(rs) for search, rs in rows.items()},
        }
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    checkpoints = sorted({n for r in rows for n in r["best"]})
    pbos = [r["pbo"] for r in rows if r["pbo"] is not None]
    search_s = statistics.median(r["search_s_per_trial"] for r in rows)
    trial_s = statistics.median(r["trial_s_per_trial"] for r in rows)
    return {
        "median_best": {n: statistics.median(r["best"][n] for r in rows) for n in checkpoints},
        "median_pbo": statistics.median(pbos) if pbos else None,
        "pbos": pbos,
        "search_ms_per_trial": 1000 * search_s,
        "trial_s": trial_s,
        "overhead_share": search_s / trial_s,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        "| data | search | best @8 | best @16 | best @32 | median PBO (5 sweeps) | ask+tell per trial | share of a trial |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, data in result["data"].items():
        for search, s in data["summary"].items():
            best = s["median_best"]
            cells = [f"{best[n]:.4f}" if n in best else "" for n in (8, 16, 32)]
            pbo = "" if s["median_pbo"] is None else f"{s['median_pbo']:.2f}"
            lines.append(
                f"| {name} ({data['folds']} folds) | {search} | {' | '.join(cells)} | {pbo} | "
                f"{s['search_ms_per_trial']:.1f} ms | {100 * s['overhead_share']:.2f}% of {s['trial_s']:.2f} s |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, 8 trials, tiny trees: a smoke run")
    args = parser.parse_args()
    common.quiet_logs()
    started = time.perf_counter()
    result = measure(args.quick)
    result["seconds"] = time.perf_counter() - started
    result["machine"] = common.machine()
    path: Path = common.save("search_quick" if args.quick else "search", result)
    print(table(result))
    log(f"{result['seconds']:.0f} s; saved {path}")


if __name__ == "__main__":
    main()
