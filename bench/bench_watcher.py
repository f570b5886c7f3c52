"""Watcher benchmarks: idle pass over many experiments, re-rank after one new run vs the guide.

Per backend (sqlite, PostgreSQL) one `mlflow server` holds every experiment; the watcher and the
guide's way talk to it through one counting proxy, side by side in the same process, so call
counts are exact and wall-time ratios compare like with like. Setup (filling, adding the new run,
reading tag snapshots for the checks) goes straight to the server and is never counted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time
from collections.abc import Iterator, Sequence
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
from watcher.model import RunRecord
from watcher.service import Watcher
from watcher.settings import HttpConfig, RuleConfig, WatcherSettings
from watcher.state import STATE_TAG

METRIC = "avg_test_r2"
TOP_N = 10
CANDIDATES = 3
FILTER = "metrics.num_folds >= 3"
# A first ranking reads every run of a 50,000-run experiment in one request.
PROXY_TIMEOUT = 1800.0
RANK_TAGS = ("model_rank", f"top_{TOP_N}", "production_candidate")


@dataclass
class Plan:
    sizes: tuple[int, ...] = (1_000, 10_000, 50_000)
    reps: tuple[int, ...] = (3, 2, 1)  # per size: re-rank repetitions per scenario
    idle_experiments: int = 100
    idle_runs: int = 10
    idle_reps: int = 5


def search_kind(filter_string: str) -> str:
    """Which of the watcher's searches a filter is (for the per-search cost in a pass)."""
    if filter_string.startswith("tags.model_rank LIKE"):
        return "holder check"
    if filter_string.startswith("tags."):
        return "orphan tags"
    if "RUNNING" in filter_string:
        return "running runs"
    if filter_string.startswith("attributes.end_time >"):
        return "ended after watermark"
    if "metrics.`" in filter_string:
        return "threshold"
    return "other"


class CountingTracking(MlflowTracking):
    """The watcher's adapter, also counting the runs its searches return (rows read) and the
    wall time of each kind of search (the holder check's cost, inside the same pass)."""

    def __init__(self, tracking_uri: str) -> None:
        super().__init__(tracking_uri)
        self.runs_read = 0
        self.searches: dict[str, dict[str, float]] = {}

    def _searched(self, kind: str, seconds: float, runs: int) -> None:
        row = self.searches.setdefault(kind, {"calls": 0, "seconds": 0.0, "runs": 0})
        row["calls"] += 1
        row["seconds"] += seconds
        row["runs"] += runs

    def iter_runs(
        self, experiment_ids: Sequence[str], filter_string: str = "", **kwargs: Any
    ) -> Iterator[RunRecord]:
        """Every search that follows page tokens (``search_runs`` and the batch searches) goes
        through here: its runs and its wall time (the caller's work between pages included,
        which for the watcher's batch searches is appending to a list) count for its kind."""
        started = time.perf_counter()
        runs = 0
        try:
            for run in super().iter_runs(experiment_ids, filter_string, **kwargs):
                self.runs_read += 1
                runs += 1
                yield run
        finally:
            if experiment_ids:
                self._searched(search_kind(filter_string), time.perf_counter() - started, runs)

    def search_page(self, *args: Any, **kwargs: Any) -> tuple[list[RunRecord], str | None]:
        (runs, token), seconds = timed(lambda: super(CountingTracking, self).search_page(*args, **kwargs))
        self.runs_read += len(runs)
        self._searched("page (sample or count)", seconds, len(runs))
        return runs, token


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
    return Watcher(settings, CountingTracking(url))


def measured_pass(watcher: Watcher, proxy: Proxy) -> dict[str, Any]:
    tracking = watcher.tracking
    assert isinstance(tracking, CountingTracking)
    tracking.runs_read = 0
    tracking.searches = {}
    proxy.reset()
    result, seconds = timed(watcher.run_pass)
    if not result.ok:
        raise RuntimeError(f"watcher pass failed: {result.error}")
    calls = Calls.of(proxy.tracking_calls())
    return {
        "seconds": seconds,
        "calls": calls.as_dict(),
        "tag_writes": result.tag_writes,
        "runs_read": tracking.runs_read,
        "searches": tracking.searches,
    }


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


def guide_wanted(scenario: str, rep: int, n_runs: int) -> bool:
    """The guide's way does the same work wherever the new run lands (every page, sort, 23
    set_tag calls), so on big experiments it is rerun only in the lead scenario, to keep the whole
    benchmark within ~20 minutes; its median then serves both scenarios. Above 10,000 runs the
    guide's run beside the first ranking (same experiment, one run fewer) serves the re-ranks."""
    if n_runs > 10_000:
        return False
    if scenario == "lead" or n_runs <= 1_000:
        return True
    return rep == 0


def rerank_benchmark(
    direct: MlflowClient,
    counted: MlflowClient,
    proxy: Proxy,
    name: str,
    experiment_id: str,
    n_runs: int,
    reps: int,
) -> dict[str, Any]:
    watcher = make_watcher(proxy.url, name)
    first = measured_pass(watcher, proxy)
    # The first ranking against the guide's way on the same runs, side by side: the boards
    # must be equal (the guide rewrites the same tags, so the watcher's next pass stays idle).
    first_tags = holders(direct, experiment_id)
    first_board = sorted((int(t["model_rank"]), r) for r, t in first_tags.items() if "model_rank" in t)
    proxy.reset()
    guide_first, guide_seconds = timed(
        lambda: rank_top_models(counted, name, METRIC, TOP_N, False, CANDIDATES)
    )
    first["guide"] = {
        "seconds": guide_seconds,
        "calls": Calls.of(proxy.tracking_calls()).as_dict(),
        "runs_read": guide_first["runs_read"],
    }
    if [r for _, r in first_board] != [m["run_id"] for m in guide_first["models"]]:
        raise AssertionError(f"{name}: first ranking {first_board} != the guide's board")
    # Tags identical to a full ranking's: exactly the guide's tags on exactly its runs, and the
    # guide's rewrite of them changes nothing.
    full_ranking = {
        m["run_id"]: {
            "model_rank": str(m["rank"]),
            f"top_{TOP_N}": "true",
            **({"production_candidate": "true"} if m["rank"] <= CANDIDATES else {}),
        }
        for m in guide_first["models"]
    }
    if first_tags != full_ranking or holders(direct, experiment_id) != full_ranking:
        raise AssertionError(f"{name}: first ranking's tags {first_tags} != a full ranking's {full_ranking}")
    first["tags_identical"] = True
    # The ranked/unranked counts are completed by a paged count in the passes that follow.
    counting = []
    while json.loads(direct.get_experiment(experiment_id).tags.get(STATE_TAG, "{}")).get("counting"):
        counting.append(measured_pass(watcher, proxy))
    first["count_passes"] = counting
    idle = measured_pass(watcher, proxy)
    log(
        f"  {name}: {len(counting)} count pass(es) "
        f"({sum(c['calls']['total'] for c in counting)} calls, {sum(c['seconds'] for c in counting):.2f} s)"
    )
    log(
        f"  {name}: first pass {first['calls']['total']} calls {first['seconds']:.2f} s "
        f"(guide {guide_seconds:.2f} s, {guide_seconds / first['seconds']:.1f}x); "
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
        watcher_board = sorted((int(t["model_rank"]), r) for r, t in after.items() if "model_rank" in t)
        # The board the new run must give: on top of the previous one, or the previous one.
        previous = [
            r for _, r in sorted((int(t["model_rank"]), r) for r, t in before.items() if "model_rank" in t)
        ]
        expected = [new_run, *previous][:TOP_N] if scenario == "lead" else previous
        if [r for _, r in watcher_board] != expected:
            raise AssertionError(f"{name} {scenario}: watcher board {watcher_board} != expected {expected}")
        row: dict[str, Any] = {"watcher": w, "changed_runs": len(changed), "guide": None}
        if guide_wanted(scenario, rep, n_runs):
            proxy.reset()
            board, g_seconds = timed(lambda: rank_top_models(counted, name, METRIC, TOP_N, False, CANDIDATES))
            g_calls = Calls.of(proxy.tracking_calls())
            guide_board = [m["run_id"] for m in board["models"]]
            if guide_board != expected:
                raise AssertionError(f"{name} {scenario}: guide board {guide_board} != expected {expected}")
            row["guide"] = {"seconds": g_seconds, "calls": g_calls.as_dict(), "runs_read": board["runs_read"]}
        scenarios[scenario].append(row)
        guide_text = (
            f"guide {row['guide']['calls']['reads']}r/{row['guide']['calls']['writes']}w "
            f"{row['guide']['seconds'] * 1000:.0f} ms"
            if row["guide"]
            else "guide not rerun"
        )
        log(
            f"  {name} {scenario}#{rep}: watcher {w['calls']['reads']}r/{w['calls']['writes']}w "
            f"{w['seconds'] * 1000:.0f} ms (changed runs {len(changed)}) | {guide_text}"
        )
    return {"runs": n_runs, "first_pass": first, "idle_pass": idle, **scenarios}


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
        proxy.timeout = PROXY_TIMEOUT
        try:
            counted = MlflowClient(proxy.url)
            out: dict[str, Any] = {
                "fill_seconds": fill_seconds,
                "idle": idle_benchmark(proxy, plan) if plan.idle_experiments else None,
                "rerank": {},
            }
            for n, reps in zip(plan.sizes, plan.reps, strict=True):
                name = f"bench_rr_{n}"
                res = rerank_benchmark(direct, counted, proxy, name, ids[name], n, reps)
                out["rerank"][str(n)] = res
            return out
        finally:
            proxy.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--reps", default="3,2,1")
    parser.add_argument("--idle", default="100x10", help="EXPERIMENTSxRUNS for the idle pass (0x0: none)")
    parser.add_argument("--idle-reps", type=int, default=5)
    parser.add_argument("--out", default="watcher")
    args = parser.parse_args(argv)
    common.quiet_logs()
    n_exp, n_runs = (int(x) for x in args.idle.split("x"))
    plan = Plan(
        sizes=tuple(int(s) for s in args.sizes.split(",")),
        reps=tuple(int(r) for r in args.reps.split(",")),
        idle_experiments=n_exp,
        idle_runs=n_runs,
        idle_reps=args.idle_reps,
    )
    results: dict[str, Any] = {
        "machine": common.machine(),
        "plan": plan.__dict__,
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "backends": {},
    }
    for backend in args.backends.split(","):
        results["backends"][backend] = run_backend(backend, plan)
    common.finish(args.out, results)


if __name__ == "__main__":
    main()
