"""Watcher at the scale of a trading universe: one rule over 100 / 500 / 1,000 experiments.

Per backend (sqlite, PostgreSQL) one `mlflow server` holds every experiment, each with 10
finished trainer-sized runs (30 params with `feature_names`, 37 metrics, as `python -m trainer`
logs them; bench/fill.py), all filled up front. For each size N the watcher talks to the server
through one counting proxy (tests/support/proxy.py), which counts calls and the bytes of the
answers, and one run gives every figure DESIGN.md's goals ask for:

- the first ranking with the default settings: every pass until no first ranking is deferred
  (total, passes, longest pass, calls); at the largest size (unless `--no-serial`), just after
  it on the same server, the serial first ranking as the watcher made it before it spread its
  work (a second copy of the same experiments, `write_concurrency` 1 and every experiment in
  one pass), and their ratio;
- the idle daemon pass with no holder check due (once the kept listing's window over recent
  experiment changes has closed: the fill created every group's experiments seconds before);
- the re-rank of one experiment after a new leading run, at 1 and at N watched experiments,
  taken in turns;
- the idle daemon passes once every experiment's holder check is due: the first (one slice of
  at most `holder_check_runs` holder runs) and the whole round, until none is deferred;
- `python -m watcher --once` idle (it checks every experiment) in a process of its own, after
  `--once --sweep` (unless `--no-once-sweep`).

The server has one worker, as DESIGN.md's figures assume; `--server-workers K` starts it with K,
where writing four experiments at once (the default) may gain on the serial first ranking.

Setup (filling, the new runs, reading states to see that the first ranking is done) goes
straight to the server and is never counted. Each watcher's clock stands still unless the
benchmark moves it, so which holder checks are due depends on what the benchmark does, not on
how long its passes take. `--table FILE` prints the figures as BENCHMARKS.md's tables.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag

from bench import common
from bench.bench_watcher import CountingTracking
from bench.common import Calls, log, median, timed
from bench.fill import (
    MAX_FILLED,
    METRIC,
    TRAINER_HYPERPARAMETERS,
    TRAINER_METRICS,
    TRAINER_PARAMS,
    TRAINER_TAGS,
    fill,
)
from bench.servers import BACKENDS, running_server
from tests.support.proxy import Proxy
from watcher.listing import MARGIN_SECONDS
from watcher.mlflow_io import EXPERIMENT_BATCH
from watcher.model import SWEEP_SECONDS
from watcher.schedule import HOLDER_CHECK_RUNS
from watcher.service import Watcher
from watcher.settings import HttpConfig, RuleConfig, WatcherSettings
from watcher.state import UNRANKED, ExperimentState, state_of

RUNS = 10
TOP_N = 10
FILTER = "metrics.num_folds >= 3"
# Passes a first ranking, a settling or a holder check round may take before the benchmark gives
# up on it (a round over 1,000 experiments of 10 holders each is 40 passes of 250 holder runs).
MAX_PASSES = 200
PROXY_TIMEOUT = 600.0
# Seconds from the start of a `--once` process to its pass, at most (imports, config).
ONCE_START_SECONDS = 120.0


def prefix(n: int, copy: str = "uni") -> str:
    """The names of one group's experiments: ``copy`` "uni" is ranked with the default settings,
    "ser" (a copy of the same experiments) serially."""
    return f"{copy}{n:04d}_"


class Clock:
    """A watcher's clock, moved only by the benchmark."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def rule(pattern: str) -> dict[str, Any]:
    return {
        "name": "universe",
        "experiments": [f"{pattern}*"],
        "metric": METRIC,
        "top_n": TOP_N,
        "production_candidates": 3,
        "filter": FILTER,
    }


def make_watcher(url: str, pattern: str, **settings: Any) -> Watcher:
    """A watcher of the experiments named ``pattern*`` with its own clock; ``settings`` override
    the defaults."""
    config = WatcherSettings(
        tracking_uri=url, http=HttpConfig(enabled=False), rules=[RuleConfig(**rule(pattern))], **settings
    )
    return Watcher(config, CountingTracking(url), clock=Clock())


def measured(proxy: Proxy, fn: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    proxy.reset()
    out, seconds = timed(fn)
    calls = Calls.of(proxy.tracking_calls())
    return out, {"seconds": seconds, "calls": calls.as_dict(), "bytes": proxy.tracking_bytes()}


def daemon_pass(watcher: Watcher, proxy: Proxy, sweep: bool | None = None) -> dict[str, Any]:
    """One daemon pass; ``sweep=False`` keeps the sweep out of an idle figure (the sweep runs
    every 15 minutes, and a size's passes may span more than that)."""
    tracking = watcher.tracking
    assert isinstance(tracking, CountingTracking)
    tracking.searches = {}
    result, row = measured(proxy, lambda: watcher.run_pass(sweep=sweep))
    if not result.ok:
        raise RuntimeError(f"watcher pass failed: {result.error}")
    actions: dict[str, int] = {}
    for outcome in result.outcomes:
        actions[outcome.action] = actions.get(outcome.action, 0) + 1
    return {
        **row,
        "tag_writes": result.tag_writes,
        "actions": actions,
        "rankings_deferred": result.rankings_deferred,
        "holder_checks_deferred": result.holder_checks_deferred,
        # Runs the searches for `model_rank` holders returned: in an idle pass, the holder check's.
        "holder_runs": int(tracking.searches.get("holder check", {}).get("runs", 0)),
        "searches": tracking.searches,
    }


def passes_summary(passes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "passes": list(passes),
        "pass_count": len(passes),
        "seconds": sum(p["seconds"] for p in passes),
        "longest_pass_seconds": max(p["seconds"] for p in passes),
        "median_pass_seconds": median([p["seconds"] for p in passes]),
        "calls": sum(p["calls"]["total"] for p in passes),
        "bytes": sum(p["bytes"] for p in passes),
        "holder_runs": sum(p["holder_runs"] for p in passes),
    }


def states(direct: MlflowClient, pattern: str) -> list[ExperimentState | None]:
    """The watched experiments' states (read directly, not counted)."""
    exps = direct.search_experiments(filter_string=f"name LIKE '{pattern}%'", max_results=50_000)
    return [state_of(exp.tags) for exp in exps]


def unranked(direct: MlflowClient, pattern: str) -> int:
    """Watched experiments without a ranking yet."""
    return sum(1 for s in states(direct, pattern) if s is None or s.fingerprint == UNRANKED or not s.board)


def oldest_sweep(direct: MlflowClient, pattern: str) -> float:
    """When the watched experiment swept longest ago was swept (unix seconds; 0: one never was)."""
    return min((s.swept or 0) / 1000 if s is not None else 0.0 for s in states(direct, pattern))


def first_ranking(
    watcher: Watcher, proxy: Proxy, direct: MlflowClient, pattern: str, label: str
) -> dict[str, Any]:
    """The daemon's passes from a watcher that has ranked nothing until none defers a first
    ranking (the daemon runs them back to back)."""
    passes: list[dict[str, Any]] = []
    while len(passes) < MAX_PASSES:
        passes.append(daemon_pass(watcher, proxy))
        p = passes[-1]
        log(
            f"  {label} pass {len(passes)}: {p['calls']['total']} calls, {p['seconds']:.1f} s, "
            f"{p['rankings_deferred']} deferred"
        )
        if p["rankings_deferred"] == 0:
            break
    s = watcher.settings
    return {
        **passes_summary(passes),
        "unranked_after": unranked(direct, pattern),
        "write_concurrency": s.write_concurrency,
        "max_rankings_per_pass": s.max_rankings_per_pass,
    }


def settle(watcher: Watcher, proxy: Proxy) -> list[dict[str, Any]]:
    """Passes after the first ranking that still work (the paged count, deferred writes), run
    until one is idle, so the idle figures that follow are of idle passes."""
    passes: list[dict[str, Any]] = []
    while len(passes) < MAX_PASSES:
        p = daemon_pass(watcher, proxy, sweep=False)
        passes.append(p)
        busy = p["tag_writes"] or set(p["actions"]) - {"idle"}
        if not busy and not p["rankings_deferred"] and not p["holder_checks_deferred"]:
            break
    return passes


def holder_check_round(watcher: Watcher, proxy: Proxy, label: str) -> dict[str, Any]:
    """Moves the clock past ``holder_check_seconds``, so every experiment's holder check is
    due, and runs the passes until none is deferred: the first is one slice of the check."""
    clock = watcher.clock
    assert isinstance(clock, Clock)
    clock.now += watcher.settings.holder_check_seconds + 1
    passes: list[dict[str, Any]] = []
    while len(passes) < MAX_PASSES:
        passes.append(daemon_pass(watcher, proxy, sweep=False))
        if passes[-1]["holder_checks_deferred"] == 0:
            break
    first = passes[0]
    if first["holder_runs"] == 0:
        raise AssertionError(f"{label}: the pass with every holder check due read no holder")
    log(
        f"  {label}: holder check due, first pass: {first['calls']['total']} calls, "
        f"{first['bytes'] / 1e6:.2f} MB, {first['seconds']:.2f} s, {first['holder_runs']} holder runs"
    )
    summary = passes_summary(passes)
    log(
        f"  {label}: holder check round: {summary['pass_count']} passes, {summary['seconds']:.1f} s, "
        f"longest {summary['longest_pass_seconds']:.2f} s, {summary['holder_runs']} holder runs"
    )
    return {"holder_check_runs": watcher.holder_check_runs, "first": first, "round": summary}


def add_leader(direct: MlflowClient, experiment_id: str, value: float) -> None:
    """One new finished trainer-sized run that leads its experiment (uncounted setup)."""
    run = direct.create_run(experiment_id, run_name="new_leader")
    now = int(time.time() * 1000)
    metrics = [Metric(METRIC, value, now, 0), Metric("num_folds", 5.0, now, 0)]
    metrics += [Metric(k, 0.5, now, 0) for k in TRAINER_METRICS]
    params = [Param(k, v) for k, v in TRAINER_PARAMS.items()]
    params += [Param(k, "1") for k in TRAINER_HYPERPARAMETERS]
    direct.log_batch(
        run.info.run_id, metrics=metrics, params=params, tags=[RunTag(k, v) for k, v in TRAINER_TAGS.items()]
    )
    direct.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))


class Leaders:
    """Each new leading run above every earlier one, so each makes a re-rank."""

    def __init__(self) -> None:
        self.added = 0

    def add(self, direct: MlflowClient, experiment_id: str) -> None:
        self.added += 1
        add_leader(direct, experiment_id, MAX_FILLED + 0.001 * self.added)


def reranks_side_by_side(
    direct: MlflowClient,
    proxy: Proxy,
    sides: Sequence[tuple[str, Watcher, str]],
    reps: int,
    leaders: Leaders,
) -> dict[str, Any]:
    """The re-rank of one experiment by each (label, watcher, experiment id), taken in turns
    ``reps`` times; no holder check is due (the clocks stand still)."""
    rows: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in sides}
    for _ in range(reps):
        for label, watcher, experiment_id in sides:
            leaders.add(direct, experiment_id)
            p = daemon_pass(watcher, proxy, sweep=False)
            if p["actions"].get("rerank", 0) + p["actions"].get("full", 0) != 1:
                raise AssertionError(f"the re-rank pass at {label} did {p['actions']}")
            rows[label].append(p)
    out: dict[str, Any] = {}
    for label, passes in rows.items():
        out[label] = {
            "passes": passes,
            "median_seconds": median([p["seconds"] for p in passes]),
            "calls": [p["calls"]["total"] for p in passes],
            "median_bytes": median([p["bytes"] for p in passes]),
        }
        log(
            f"  re-rank of one experiment at {label} watched: calls {out[label]['calls']}, "
            f"median {out[label]['median_seconds'] * 1000:.0f} ms"
        )
    return out


def once(proxy: Proxy, pattern: str, workdir: Path, extra: Sequence[str] = ()) -> dict[str, Any]:
    """`python -m watcher --once` in its own process, as cron would run it."""
    config = workdir / f"once_{pattern}.yaml"
    config.write_text(
        yaml.safe_dump({"tracking_uri": proxy.url, "http": {"enabled": False}, "rules": [rule(pattern)]})
    )
    args = [
        sys.executable,
        "-m",
        "watcher",
        "--config",
        str(config),
        "--once",
        "--log-format",
        "json",
        *extra,
    ]
    proc, row = measured(
        proxy, lambda: subprocess.run(args, capture_output=True, text=True, cwd=common.ROOT, timeout=3600)
    )
    if proc.returncode != 0:
        raise RuntimeError(f"--once exited {proc.returncode}: {proc.stderr[-2000:]}")
    finished = [json.loads(line) for line in proc.stderr.splitlines() if '"pass_finished"' in line]
    row["pass_seconds"] = finished[-1]["duration_seconds"] if finished else None
    row["args"] = list(extra)
    log(
        f"  --once {' '.join(extra)}: {row['calls']['total']} calls, pass {row['pass_seconds']} s, "
        f"process {row['seconds']:.1f} s, {row['bytes'] / 1e6:.2f} MB"
    )
    return row


def once_runs(
    watcher: Watcher, proxy: Proxy, direct: MlflowClient, pattern: str, workdir: Path, once_sweep: bool
) -> list[dict[str, Any]]:
    """`--once --sweep` (optional), then `--once` idle. The CLI keeps the wall clock and sweeps
    the experiments whose last sweep, kept in MLflow, is ``SWEEP_SECONDS`` old: without the
    `--sweep` run, a sweep by the daemon (not counted) makes them recent when they are near that
    age, so the `--once` measured sweeps none."""
    runs = []
    if once_sweep:
        runs.append(once(proxy, pattern, workdir, ["--sweep"]))
    elif time.time() + ONCE_START_SECONDS - oldest_sweep(direct, pattern) >= SWEEP_SECONDS:
        log("  sweeping every experiment (not counted) so that `--once` sweeps none")
        clock = watcher.clock
        assert isinstance(clock, Clock)
        clock.now = time.time()
        result = watcher.run_pass(sweep=True, holder_check=False)
        if not result.ok:
            raise RuntimeError(f"the sweep before --once failed: {result.error}")
    runs.append(once(proxy, pattern, workdir))
    return runs


def universe(
    direct: MlflowClient,
    proxy: Proxy,
    n: int,
    ids: dict[str, list[str]],
    one: Watcher,
    leaders: Leaders,
    workdir: Path,
    options: argparse.Namespace,
    serial: bool,
) -> dict[str, Any]:
    """Every figure at N watched experiments; ``one`` watches the one-experiment group."""
    out: dict[str, Any] = {"experiments": n, "loadavg_before": os.getloadavg()}
    log(f"  {n}: load average {out['loadavg_before'][0]:.2f}")
    watcher = make_watcher(proxy.url, prefix(n))
    out["first"] = first_ranking(watcher, proxy, direct, prefix(n), f"{n}: first ranking")
    if serial:
        # After the default one, so a server warmed by the first makes the serial look better,
        # never the default.
        serial_watcher = make_watcher(
            proxy.url, prefix(n, "ser"), write_concurrency=1, max_rankings_per_pass=n
        )
        row = first_ranking(serial_watcher, proxy, direct, prefix(n, "ser"), f"{n}: serial first ranking")
        row["default_over_serial"] = out["first"]["seconds"] / row["seconds"]
        out["serial_first"] = row
        log(f"  {n}: first ranking default / serial: {row['default_over_serial']:.2f}")
    out["settle"] = settle(watcher, proxy)
    # Each search for changed experiments reaches back MARGIN_SECONDS until a search after
    # that time closes the window (watcher/listing.py): a group filled seconds ago would be read
    # again by every pass. Idle means nothing changed lately, so the window closes first.
    time.sleep(MARGIN_SECONDS)
    out["listing_settle"] = daemon_pass(watcher, proxy, sweep=False)
    idle = [daemon_pass(watcher, proxy, sweep=False) for _ in range(options.reps)]
    out["idle_no_check"] = {
        "passes": idle,
        "calls": [p["calls"]["total"] for p in idle],
        "median_seconds": median([p["seconds"] for p in idle]),
        "median_bytes": median([p["bytes"] for p in idle]),
        "batches": math.ceil(n / EXPERIMENT_BATCH),
    }
    log(
        f"  {n}: idle pass, no holder check due: calls {out['idle_no_check']['calls']}, "
        f"median {out['idle_no_check']['median_seconds'] * 1000:.0f} ms, "
        f"{out['idle_no_check']['median_bytes'] / 1e6:.2f} MB"
    )
    sides = [("1", one, ids[prefix(1)][0]), (str(n), watcher, ids[prefix(n)][0])]
    out["rerank"] = reranks_side_by_side(direct, proxy, sides, options.reps, leaders)
    out["rerank"]["n_over_1"] = out["rerank"][str(n)]["median_seconds"] / out["rerank"]["1"]["median_seconds"]
    out["settle_after_rerank"] = settle(watcher, proxy)
    out["holder_check"] = holder_check_round(watcher, proxy, str(n))
    out["once"] = once_runs(watcher, proxy, direct, prefix(n), workdir, options.once_sweep)
    out["loadavg_after"] = os.getloadavg()
    log(f"  {n}: load average {out['loadavg_after'][0]:.2f}")
    return out


def run_backend(
    backend: str, options: argparse.Namespace, results: dict[str, Any], save: Callable[[], object]
) -> None:
    """Every size on one server; ``results`` grows, and is saved, after each size."""
    sizes: list[int] = options.sizes
    log(f"{backend}: starting mlflow server ({options.server_workers} worker(s))")
    with running_server(backend, options.server_workers) as server, tempfile.TemporaryDirectory() as tmp:
        direct = MlflowClient(server.url)
        serial_size = max(sizes) if options.serial else None
        groups = [(prefix(n), n) for n in (1, *sizes)]
        if serial_size is not None:
            groups.append((prefix(serial_size, "ser"), serial_size))
        layout = [(f"{pattern}{i:04d}", RUNS) for pattern, n in groups for i in range(n)]
        filled, fill_seconds = timed(lambda: fill(direct, server.db_uri, layout, profile="trainer"))
        log(f"{backend}: filled {len(layout):,} experiments × {RUNS} runs in {fill_seconds:.1f} s")
        ids = {
            pattern: [f.experiment_id for f in filled if f.name.startswith(pattern)] for pattern, _ in groups
        }
        out: dict[str, Any] = {"fill_seconds": fill_seconds, "server_workers": server.workers, "sizes": {}}
        results["backends"][backend] = out
        proxy = Proxy(server.url)
        proxy.timeout = PROXY_TIMEOUT
        try:
            one = make_watcher(proxy.url, prefix(1))
            out["one_experiment_first"] = first_ranking(one, proxy, direct, prefix(1), "1: first ranking")
            settle(one, proxy)
            leaders = Leaders()
            for n in sizes:
                out["sizes"][str(n)] = universe(
                    direct, proxy, n, ids, one, leaders, Path(tmp), options, serial=n == serial_size
                )
                save()  # a stopped run keeps every size it finished
        finally:
            proxy.close()


# -- the tables BENCHMARKS.md shows -------------------------------------------------------------


def _s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:,.0f} s"


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def _span(values: Sequence[int]) -> str:
    low, high = min(values), max(values)
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def _once(row: dict[str, Any]) -> str:
    return (
        f"{row['calls']['total']:,} calls, {_mb(row['bytes'])}, pass {_s(row['pass_seconds'] or 0)} "
        f"(process {_s(row['seconds'])})"
    )


def size_cells(size: dict[str, Any], reps: int) -> dict[str, str]:
    """One column of a backend's table: the figures at one size."""
    n = size["experiments"]
    first, idle, check, rerank = size["first"], size["idle_no_check"], size["holder_check"], size["rerank"]
    slice_, round_ = check["first"], check["round"]
    serial = size.get("serial_first")
    once = {tuple(r["args"]): r for r in size["once"]}
    return {
        "first ranking, default settings: total (passes, longest pass), calls": (
            f"{_s(first['seconds'])} ({first['pass_count']}, longest {_s(first['longest_pass_seconds'])}), "
            f"{first['calls']:,} calls"
        ),
        "serial first ranking (one pass, `write_concurrency` 1): total, calls": (
            f"{_s(serial['seconds'])}, {serial['calls']:,} calls" if serial else "—"
        ),
        "first ranking, default / serial": f"**{serial['default_over_serial']:.2f}**" if serial else "—",
        f"idle daemon pass, no holder check due: calls (per batch of {EXPERIMENT_BATCH}), bytes, time "
        f"(median of {reps})": (
            f"{_span(idle['calls'])} ({max(idle['calls']) / idle['batches']:.1f}), "
            f"{_mb(idle['median_bytes'])}, {_s(idle['median_seconds'])}"
        ),
        "idle daemon pass, every holder check due, the first (one slice): calls, bytes, time, holder runs read": (
            f"{slice_['calls']['total']} calls, {_mb(slice_['bytes'])}, {_s(slice_['seconds'])}, "
            f"{slice_['holder_runs']:,} runs"
        ),
        "the whole holder check round: passes, total, median and longest pass": (
            f"{round_['pass_count']}, {_s(round_['seconds'])}, median {_s(round_['median_pass_seconds'])}, "
            f"longest {_s(round_['longest_pass_seconds'])}"
        ),
        "`--once` idle (checks every experiment): calls, bytes, pass (process)": _once(once[()]),
        "`--once --sweep`: calls, bytes, pass (process)": _once(once[("--sweep",)])
        if ("--sweep",) in once
        else "—",
        f"re-rank of one experiment at 1 / at N watched (median of {reps} each): time, N/1, calls": (
            f"{_s(rerank['1']['median_seconds'])} / {_s(rerank[str(n)]['median_seconds'])}, "
            f"**{rerank['n_over_1']:.2f}**, {_span(rerank['1']['calls'])} / {_span(rerank[str(n)]['calls'])} calls"
        ),
        "load average (1 min) before → after": (
            f"{size['loadavg_before'][0]:.1f} → {size['loadavg_after'][0]:.1f}"
        ),
    }


def goals(size: dict[str, Any]) -> list[str]:
    """DESIGN.md's goals for the watcher at a universe's scale, at one size."""
    n = size["experiments"]
    idle, round_, rerank = size["idle_no_check"], size["holder_check"]["round"], size["rerank"]
    per_batch = max(idle["calls"]) / idle["batches"]
    lines = [
        f"idle pass, no holder check due, ≤ 0.5 s and ≤ 3 calls per batch: {_s(idle['median_seconds'])}, "
        f"{per_batch:.1f} calls per batch: "
        + ("holds" if idle["median_seconds"] <= 0.5 and per_batch <= 3 else "does not hold"),
        f"idle pass with a holder check due ≤ 2 s: longest pass of the round {_s(round_['longest_pass_seconds'])}: "
        + ("holds" if round_["longest_pass_seconds"] <= 2 else "does not hold"),
        f"re-rank of one experiment at {n:,} within 20% of at 1: ×{rerank['n_over_1']:.2f}: "
        + ("holds" if rerank["n_over_1"] <= 1.2 else "does not hold"),
    ]
    serial = size.get("serial_first")
    if serial:
        ratio = serial["default_over_serial"]
        lines.append(
            f"first ranking of all {n:,} ≤ 1/3 of the serial time: ×{ratio:.2f}: "
            + ("holds" if ratio <= 1 / 3 else "does not hold")
        )
    return lines


def table(results: dict[str, Any]) -> str:
    """BENCHMARKS.md's tables (one per backend, a column per size) and the goals at the
    largest size, from a results file."""
    reps = results.get("reps", 3)
    lines = [
        f"Commit {results['commit'][:7]}{' (uncommitted changes)' if results.get('dirty') else ''}"
        f"{' — ' + results['label'] if results.get('label') else ''}, {results['started']}"
        f"{' to ' + results['finished'] if results.get('finished') else ' (not finished)'}; "
        f"{results['machine']['cores']} cores, load average at start {results['machine']['loadavg_at_start']:.1f}.",
    ]
    for backend, data in results["backends"].items():
        sizes = [data["sizes"][k] for k in sorted(data["sizes"], key=int)]
        if not sizes:
            continue
        columns = [size_cells(s, reps) for s in sizes]
        workers = data["server_workers"]
        lines += [
            "",
            f"| {backend} ({workers} server worker{'s' if workers != 1 else ''}) | "
            + " | ".join(f"{s['experiments']:,}" for s in sizes)
            + " |",
            "|---" * (len(sizes) + 1) + "|",
        ]
        lines += [f"| {row} | " + " | ".join(c[row] for c in columns) + " |" for row in columns[0]]
        lines += ["", f"Goals at {sizes[-1]['experiments']:,} on {backend}:"]
        lines += [f"- {g}" for g in goals(sizes[-1])]
    return "\n".join(lines)


def sizes_arg(text: str) -> list[int]:
    sizes = [int(s) for s in text.split(",")]
    if any(n < 2 for n in sizes):
        raise argparse.ArgumentTypeError("every size is at least 2 (1 is the re-rank's baseline)")
    return sorted(set(sizes))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--sizes", type=sizes_arg, default="100,500,1000")
    parser.add_argument("--out", default="universe", help="bench/results/OUT.json")
    parser.add_argument("--label", default="", help="what code was measured (e.g. 'before')")
    parser.add_argument(
        "--reps", type=int, default=11, help="idle passes and re-ranks per figure (median; default 11)"
    )
    parser.add_argument(
        "--server-workers", type=int, default=1, metavar="K", help="`mlflow server --workers K` (default 1)"
    )
    parser.add_argument(
        "--no-serial",
        dest="serial",
        action="store_false",
        help="leave out the serial first ranking at the largest size (it takes longest)",
    )
    parser.add_argument(
        "--no-once-sweep",
        dest="once_sweep",
        action="store_false",
        help="leave out `--once --sweep` (it sweeps every experiment)",
    )
    parser.add_argument(
        "--table", metavar="FILE", help="print the markdown tables of a results file and exit"
    )
    parser.add_argument(
        "--before",
        metavar="PATH",
        help="an older checkout: its watcher runs beside this one's, in turns, against the same "
        "servers and counting proxy (bench/universe_before.py; `--once` and the serial ranking left out)",
    )
    args = parser.parse_args(argv)
    if args.table:
        data = json.loads(Path(args.table).read_text())
        if "before_commit" in data:
            from bench import universe_before

            print(universe_before.table(data))
        else:
            print(table(data))
        return
    if args.before:
        from bench import universe_before

        universe_before.main(args)
        return
    common.quiet_logs()

    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], capture_output=True, text=True, cwd=common.ROOT).stdout.strip()

    results: dict[str, Any] = {
        "machine": common.machine(),
        "label": args.label,
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", "watcher", "bench")),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "sizes": args.sizes,
        "reps": args.reps,
        "server_workers": args.server_workers,
        "settings": {
            key: WatcherSettings.model_fields[key].default
            for key in ("holder_check_seconds", "max_rankings_per_pass", "write_concurrency")
        }
        | {
            "holder_check_runs": HOLDER_CHECK_RUNS,
            "experiment_batch": EXPERIMENT_BATCH,
            "sweep_seconds": SWEEP_SECONDS,
        },
        "backends": {},
    }
    for backend in args.backends.split(","):
        run_backend(backend, args, results, lambda: common.save(args.out, results))
    common.finish(args.out, results)
    print(table(results))


if __name__ == "__main__":
    main()
