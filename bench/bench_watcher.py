"""Watcher benchmarks: idle pass over many experiments, re-rank after one new run vs the guide.

Per backend (sqlite, PostgreSQL) one `mlflow server` holds every experiment; the watcher and the
guide's way talk to it through one counting proxy, side by side in the same process, so call
counts are exact and wall-time ratios compare like with like. Setup (filling, adding the new run,
reading tag snapshots for the checks) goes straight to the server and is never counted.
"""

from __future__ import annotations

import argparse
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus

from bench import common
from bench.common import Calls, log, median, timed
from bench.fill import MIN_FILLED, fill
from bench.guide import rank_top_models
from bench.servers import BACKENDS, running_server
from tests.support.proxy import Proxy
from watcher.mlflow_io import MlflowTracking
from watcher.service import Watcher
from watcher.settings import HttpConfig, RuleConfig, WatcherSettings

METRIC = "avg_test_r2"
TOP_N = 10
CANDIDATES = 3
FILTER = "metrics.num_folds >= 3"
RANK_TAGS = ("model_rank", f"top_{TOP_N}", "production_candidate")


@dataclass
class Plan:
    sizes: tuple[int, ...] = (1_000, 10_000, 50_000)
    reps: tuple[int, ...] = (5, 3, 1)  # per size: re-rank repetitions per scenario
    idle_experiments: int = 100
    idle_runs: int = 100
    idle_reps: int = 5


def make_watcher(url: str, pattern: str) -> Watcher:
    settings = WatcherSettings(
        tracking_uri=url,
        http=HttpConfig(enabled=False),
        rules=[
            RuleConfig(
                name="bench",
                experiments=[pattern],
                metric=METRIC,
                ascending=False,
                top_n=TOP_N,
                production_candidates=CANDIDATES,
                filter=FILTER,
            )
        ],
    )
    return Watcher(settings, MlflowTracking(url))


def measured_pass(watcher: Watcher, proxy: Proxy) -> dict[str, Any]:
    proxy.reset()
    result, seconds = timed(watcher.run_pass)
    if not result.ok:
        raise RuntimeError(f"watcher pass failed: {result.error}")
    calls = Calls.of(proxy.tracking_calls())
    return {"seconds": seconds, "calls": calls.as_dict(), "tag_writes": result.tag_writes}


def holders(client: MlflowClient, experiment_id: str) -> dict[str, dict[str, str]]:
    """Run id -> the ranking tags it carries (read directly, not counted)."""
    out: dict[str, dict[str, str]] = {}
    for key in RANK_TAGS:
        for run in client.search_runs([experiment_id], f"tags.{key} LIKE '%'", max_results=1000):
            out[run.info.run_id] = {k: run.data.tags[k] for k in RANK_TAGS if k in run.data.tags}
    return out


def add_run(client: MlflowClient, experiment_id: str, name: str, value: float) -> str:
    """One new finished run, logged the way the trainer logs (uncounted setup)."""
    run = client.create_run(experiment_id, run_name=name)
    run_id = run.info.run_id
    client.log_batch(
        run_id,
        metrics=[Metric(METRIC, value, 0, 0), Metric("num_folds", 5.0, 0, 0)],
        params=[Param("max_depth", "4")],
    )
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return run_id


def idle_benchmark(proxy: Proxy, plan: Plan) -> dict[str, Any]:
    watcher = make_watcher(proxy.url, "bench_idle_*")
    first = measured_pass(watcher, proxy)
    log(f"  idle grid first pass: {first['calls']['total']} calls, {first['seconds']:.2f} s")
    passes = [measured_pass(watcher, proxy) for _ in range(plan.idle_reps)]
    totals = sorted({p["calls"]["total"] for p in passes})
    log(f"  idle pass: calls {totals}, median {median([p['seconds'] for p in passes]) * 1000:.0f} ms")
    return {
        "experiments": plan.idle_experiments,
        "runs_per_experiment": plan.idle_runs,
        "first_pass": first,
        "idle_passes": passes,
    }


def rerank_benchmark(
    direct: MlflowClient, counted: MlflowClient, proxy: Proxy, name: str, experiment_id: str, reps: int
) -> dict[str, Any]:
    watcher = make_watcher(proxy.url, name)
    first = measured_pass(watcher, proxy)
    idle = measured_pass(watcher, proxy)
    log(
        f"  {name}: first pass {first['calls']['total']} calls {first['seconds']:.2f} s; "
        f"idle {idle['calls']['total']} calls {idle['seconds'] * 1000:.0f} ms"
    )
    rng = random.Random(experiment_id)
    lead_values = itertools.count()
    scenarios: dict[str, list[dict[str, Any]]] = {"lead": [], "off_board": []}
    for scenario, rep in itertools.product(scenarios, range(reps)):
        value = 0.9 + 0.001 * next(lead_values) if scenario == "lead" else rng.uniform(0, MIN_FILLED / 2)
        before = holders(direct, experiment_id)
        new_run = add_run(direct, experiment_id, f"new_{scenario}_{rep}", value)
        w = measured_pass(watcher, proxy)
        after = holders(direct, experiment_id)
        changed = sorted(r for r in set(before) | set(after) if before.get(r) != after.get(r))
        proxy.reset()
        board, g_seconds = timed(lambda: rank_top_models(counted, name, METRIC, TOP_N, False, CANDIDATES))
        g_calls = Calls.of(proxy.tracking_calls())
        guide_ranks = {m["run_id"]: str(m["rank"]) for m in board["models"]}
        watcher_ranks = {r: t["model_rank"] for r, t in after.items() if "model_rank" in t}
        same = guide_ranks == watcher_ranks
        if not same:
            raise AssertionError(f"{name} {scenario}: watcher board {watcher_ranks} != guide {guide_ranks}")
        leads = board["models"][0]["run_id"] == new_run
        if leads != (scenario == "lead"):
            raise AssertionError(f"{name} {scenario}: new run leads={leads}")
        row = {
            "watcher": w,
            "guide": {"seconds": g_seconds, "calls": g_calls.as_dict()},
            "changed_runs": len(changed),
            "same_board": same,
        }
        scenarios[scenario].append(row)
        log(
            f"  {name} {scenario}#{rep}: watcher {w['calls']['reads']}r/{w['calls']['writes']}w "
            f"{w['seconds'] * 1000:.0f} ms (changed runs {len(changed)}) | guide "
            f"{g_calls.reads}r/{g_calls.writes}w {g_seconds * 1000:.0f} ms"
        )
    return {"runs": None, "first_pass": first, "idle_pass": idle, **scenarios}


def run_backend(backend: str, plan: Plan) -> dict[str, Any]:
    log(f"{backend}: starting mlflow server")
    with running_server(backend) as server:
        direct = MlflowClient(server.url)
        layout = [(f"bench_rr_{n}", n) for n in plan.sizes]
        layout += [(f"bench_idle_{i:03d}", plan.idle_runs) for i in range(plan.idle_experiments)]
        filled, fill_seconds = timed(lambda: fill(direct, server.db_uri, layout))
        log(f"{backend}: filled {sum(n for _, n in layout):,} runs in {fill_seconds:.1f} s")
        ids = {f.name: f.experiment_id for f in filled}
        proxy = Proxy(server.url)
        try:
            counted = MlflowClient(proxy.url)
            out: dict[str, Any] = {
                "fill_seconds": fill_seconds,
                "idle": idle_benchmark(proxy, plan),
                "rerank": {},
            }
            for n, reps in zip(plan.sizes, plan.reps, strict=True):
                name = f"bench_rr_{n}"
                res = rerank_benchmark(direct, counted, proxy, name, ids[name], reps)
                res["runs"] = n
                out["rerank"][str(n)] = res
            return out
        finally:
            proxy.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--reps", default="5,3,1")
    parser.add_argument("--idle", default="100x100", help="EXPERIMENTSxRUNS for the idle pass")
    parser.add_argument("--idle-reps", type=int, default=5)
    parser.add_argument("--out", default="watcher")
    args = parser.parse_args(argv)
    n_exp, n_runs = (int(x) for x in args.idle.split("x"))
    plan = Plan(
        sizes=tuple(int(s) for s in args.sizes.split(",")),
        reps=tuple(int(r) for r in args.reps.split(",")),
        idle_experiments=n_exp,
        idle_runs=n_runs,
        idle_reps=args.idle_reps,
    )
    results: dict[str, Any] = {"machine": common.machine(), "plan": plan.__dict__, "backends": {}}
    for backend in args.backends.split(","):
        results["backends"][backend] = run_backend(backend, plan)
    path = common.save(args.out, results)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
