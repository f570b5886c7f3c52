"""`bench/bench_universe.py --before PATH`: the watcher of an older checkout beside this one's, in
one run, against the same filled servers and through the same counting proxy.

Each side's watchers run in processes of their own (bench/watcher_child.py, PYTHONPATH set to
the checkout: PATH for "before", this repository for "after"), so both pay the same process
set-up and neither has the other's modules loaded. Each side ranks its own copy of the
experiments ("bef" and "uni" groups, filled with the same seed so that the copies hold the same
runs, the same values and ids of the same length), since the first ranking writes tags. Every
measured pass goes through the one proxy, reset before it, one pass at a time, the two sides in
turns: calls and bytes compare exactly, times as ratios under the same load.

Figures, per side, at N experiments: the first ranking (passes in turns until neither defers
one), the idle pass with no holder check due, the re-rank of one experiment at 1 and at N
watched, and the holder check round once every check is due (its first slice and the whole
round). `--once` is left out: it runs in a process of its own either way.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from mlflow import MlflowClient

from bench import common
from bench.bench_universe import RUNS, Leaders, add_leader, passes_summary, rule, unranked
from bench.common import Calls, log, median, timed
from bench.fill import MAX_FILLED, fill
from bench.servers import running_server
from tests.support.proxy import Proxy
from watcher.listing import MARGIN_SECONDS

CHILD = Path(__file__).with_name("watcher_child.py")
SIDES = ("before", "after")
COPY = {"before": "bef", "after": "uni"}
MAX_PASSES = 200
# Experiment ids start here, so every filled experiment's id has as many digits as its copy's
# (ids and artifact locations are in the answers the proxy counts).
FIRST_ID = 10_000


def prefix(n: int, side: str) -> str:
    return f"{COPY[side]}{n:04d}_"


class Child:
    """One watcher in a process of its own (bench/watcher_child.py)."""

    def __init__(self, checkout: Path, url: str, pattern: str, label: str) -> None:
        self.label = label
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=str(checkout),
        )
        self.info = self.call(op="init", url=url, pattern=pattern, rule=rule(pattern))

    def call(self, **msg: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.label}: the watcher process ended (exit {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def child_pass(child: Child, proxy: Proxy, sweep: bool | None = None) -> dict[str, Any]:
    """One pass of one side's watcher, counted alone by the proxy; its time is the pass's own
    (`run_pass` in the child), the round trip to the child left out."""
    proxy.reset()
    p = child.call(op="pass", sweep=sweep)
    if not p["ok"]:
        raise RuntimeError(f"{child.label}: watcher pass failed: {p['error']}")
    p["calls"] = Calls.of(proxy.tracking_calls()).as_dict()
    p["bytes"] = proxy.tracking_bytes()
    # Each call (method, path, request body's size and start) and each answer's size, to find
    # which call differs when the two sides' counts do.
    with proxy._lock:
        p["trace"] = [
            [method, path, len(body), body[:160].decode(errors="replace")]
            for (method, path), body in zip(proxy.requests, proxy.bodies, strict=True)
        ]
        p["answers"] = list(proxy.answers)
    return p


def in_turns(
    children: dict[str, Child], proxy: Proxy, done: Callable[[dict[str, Any]], bool], sweep: bool | None
) -> dict[str, list[dict[str, Any]]]:
    """Each side's passes, one side's then the other's, until ``done`` says a side's last pass
    ends its series (that side then stops)."""
    passes: dict[str, list[dict[str, Any]]] = {side: [] for side in children}
    going = set(children)
    while going:
        for side, child in children.items():
            if side not in going:
                continue
            passes[side].append(child_pass(child, proxy, sweep))
            if done(passes[side][-1]) or len(passes[side]) >= MAX_PASSES:
                going.discard(side)
    return passes


def is_idle(p: dict[str, Any]) -> bool:
    busy = p["tag_writes"] or set(p["actions"]) - {"idle"}
    return not busy and not p["rankings_deferred"] and not p["holder_checks_deferred"]


def side_by_side(
    direct: MlflowClient,
    proxy: Proxy,
    n: int,
    ids: dict[str, list[str]],
    ones: dict[str, Child],
    leaders: Leaders,
    options: argparse.Namespace,
) -> dict[str, Any]:
    out: dict[str, Any] = {"experiments": n, "loadavg_before": os.getloadavg()}
    log(f"  {n}: load average {out['loadavg_before'][0]:.2f}")
    checkouts = {"before": Path(options.before), "after": common.ROOT}
    many = {side: Child(checkouts[side], proxy.url, prefix(n, side), f"{side} {n}") for side in SIDES}
    try:
        first = in_turns(many, proxy, lambda p: p["rankings_deferred"] == 0, None)
        out["first"] = {}
        for side in SIDES:
            out["first"][side] = {
                **passes_summary(first[side]),
                "unranked_after": unranked(direct, prefix(n, side)),
            }
            f = out["first"][side]
            log(
                f"  {n} {side}: first ranking {f['seconds']:.1f} s, {f['pass_count']} passes, {f['calls']} calls"
            )
        out["settle"] = in_turns(many, proxy, is_idle, False)
        time.sleep(MARGIN_SECONDS)
        out["listing_settle"] = in_turns(many, proxy, lambda p: True, False)
        idle: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
        for _ in range(options.reps):
            for side in SIDES:
                idle[side].append(child_pass(many[side], proxy, False))
        out["idle_no_check"] = {
            side: {
                "passes": idle[side],
                "calls": [p["calls"]["total"] for p in idle[side]],
                "bytes": [p["bytes"] for p in idle[side]],
                "median_seconds": median([p["seconds"] for p in idle[side]]),
            }
            for side in SIDES
        }
        for side in SIDES:
            i = out["idle_no_check"][side]
            log(
                f"  {n} {side}: idle: calls {i['calls']}, bytes {i['bytes']}, median {i['median_seconds'] * 1000:.0f} ms"
            )
        # The re-rank of one experiment, at 1 and at N, the four watchers in turns; each round's
        # new leaders carry the same value on every side, so the answers have the same bytes.
        rows: dict[str, list[dict[str, Any]]] = {}
        sides = [(f"{side} 1", ones[side], ids[prefix(1, side)][0]) for side in SIDES]
        sides += [(f"{side} {n}", many[side], ids[prefix(n, side)][0]) for side in SIDES]
        for _ in range(options.reps):
            leaders.added += 1
            for label, child, experiment_id in sides:
                add_leader(direct, experiment_id, MAX_FILLED + 0.001 * leaders.added)
                p = child_pass(child, proxy, False)
                if p["actions"].get("rerank", 0) + p["actions"].get("full", 0) != 1:
                    raise AssertionError(f"the re-rank pass of {label} did {p['actions']}")
                rows.setdefault(label, []).append(p)
        out["rerank"] = {
            label: {
                "passes": passes,
                "calls": [p["calls"]["total"] for p in passes],
                "bytes": [p["bytes"] for p in passes],
                "median_seconds": median([p["seconds"] for p in passes]),
            }
            for label, passes in rows.items()
        }
        for label, r in out["rerank"].items():
            log(
                f"  re-rank at {label}: calls {r['calls']}, bytes {r['bytes']}, median {r['median_seconds'] * 1000:.0f} ms"
            )
        out["settle_after_rerank"] = in_turns(many, proxy, is_idle, False)
        for side in SIDES:
            many[side].call(op="advance", seconds=many[side].info["holder_check_seconds"] + 1)
        check = in_turns(many, proxy, lambda p: p["holder_checks_deferred"] == 0, False)
        out["holder_check"] = {}
        for side in SIDES:
            if check[side][0]["holder_runs"] == 0:
                raise AssertionError(f"{side}: the pass with every holder check due read no holder")
            out["holder_check"][side] = {"first": check[side][0], "round": passes_summary(check[side])}
            h = out["holder_check"][side]
            log(
                f"  {n} {side}: holder check: first {h['first']['calls']['total']} calls, "
                f"{h['first']['bytes']} B, {h['first']['seconds']:.2f} s; round {h['round']['pass_count']} passes, "
                f"{h['round']['calls']} calls, {h['round']['bytes']} B, {h['round']['seconds']:.1f} s"
            )
        out["watchers"] = {side: many[side].info for side in SIDES}
    finally:
        for child in many.values():
            child.close()
    out["loadavg_after"] = os.getloadavg()
    log(f"  {n}: load average {out['loadavg_after'][0]:.2f}")
    return out


def start_ids_at(db_uri: str, first_id: int) -> None:
    """The next experiment gets id ``first_id`` (an empty store's sequence moved on)."""
    engine = sa.create_engine(db_uri)
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(
                    sa.text("SELECT setval(pg_get_serial_sequence('experiments', 'experiment_id'), :v)"),
                    {"v": first_id - 1},
                )
            else:
                # sqlite hands out max(id) + 1: a placeholder row, deleted for good (not soft).
                conn.execute(
                    sa.text(
                        "INSERT INTO experiments (experiment_id, name, lifecycle_stage) "
                        "VALUES (:v, 'id_placeholder', 'deleted')"
                    ),
                    {"v": first_id - 1},
                )
    finally:
        engine.dispose()


def run_backend(
    backend: str, options: argparse.Namespace, results: dict[str, Any], save: Callable[[], object]
) -> None:
    log(f"{backend}: starting mlflow server ({options.server_workers} worker(s))")
    with running_server(backend, options.server_workers) as server, tempfile.TemporaryDirectory():
        direct = MlflowClient(server.url)
        start_ids_at(server.db_uri, FIRST_ID)
        filled = []
        fill_seconds = 0.0
        # One fill per side with the same seed and layout: the copies hold the same runs, and
        # (one experiment created at a time) their ids in the same order as their names, so
        # both watchers take their holder checks (by id) in the same slices.
        for side in SIDES:
            layout = [(f"{prefix(n, side)}{i:04d}", RUNS) for n in (1, *options.sizes) for i in range(n)]
            f, seconds = timed(
                lambda layout=layout: fill(direct, server.db_uri, layout, profile="trainer", workers=1)
            )
            filled += f
            fill_seconds += seconds
        log(f"{backend}: filled {len(filled):,} experiments × {RUNS} runs in {fill_seconds:.1f} s")
        ids: dict[str, list[str]] = {}
        for f in filled:
            ids.setdefault(f.name[:8], []).append(f.experiment_id)
        out: dict[str, Any] = {"fill_seconds": fill_seconds, "server_workers": server.workers, "sizes": {}}
        results["backends"][backend] = out
        proxy = Proxy(server.url)
        proxy.timeout = 600.0
        checkouts = {"before": Path(options.before), "after": common.ROOT}
        ones = {side: Child(checkouts[side], proxy.url, prefix(1, side), f"{side} 1") for side in SIDES}
        try:
            out["watchers"] = {side: ones[side].info for side in SIDES}
            log(f"{backend}: watchers {out['watchers']}")
            first = in_turns(ones, proxy, lambda p: p["rankings_deferred"] == 0, None)
            out["one_experiment_first"] = {side: passes_summary(first[side]) for side in SIDES}
            in_turns(ones, proxy, is_idle, False)
            leaders = Leaders()
            for n in options.sizes:
                out["sizes"][str(n)] = side_by_side(direct, proxy, n, ids, ones, leaders, options)
                save()
        finally:
            for child in ones.values():
                child.close()
            proxy.close()


# -- the table ------------------------------------------------------------------------------------


def _same(before: Any, after: Any, fmt: Callable[[Any], str] = str) -> str:
    return f"{fmt(after)} (same)" if before == after else f"**{fmt(before)} → {fmt(after)}**"


def _ratio(before: float, after: float) -> str:
    return f"{before:.2f} s / {after:.2f} s, ×{after / before:.2f}" if before else "—"


def _span(values: Sequence[int]) -> str:
    low, high = min(values), max(values)
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def table(results: dict[str, Any]) -> str:
    reps = results["reps"]
    lines = [
        f"After {results['commit'][:7]}{' (uncommitted changes)' if results.get('dirty') else ''}, before "
        f"{results['before_commit'][:7]}; {results['started']}"
        f"{' to ' + results['finished'] if results.get('finished') else ' (not finished)'}; "
        f"{results['machine']['cores']} cores, load average at start {results['machine']['loadavg_at_start']:.1f}"
        f"{', at end ' + format(results['loadavg_at_end'], '.1f') if 'loadavg_at_end' in results else ''}.",
    ]
    for backend, data in results["backends"].items():
        for key in sorted(data["sizes"], key=int):
            s = data["sizes"][key]
            n = s["experiments"]
            b, a = (lambda d: d["before"]), (lambda d: d["after"])
            lines += [
                "",
                f"| {backend}, {n:,} experiments × {RUNS} runs | calls before → after | bytes before → after "
                f"| time before / after, ratio |",
                "|---|---|---|---|",
            ]
            f = s["first"]
            lines.append(
                f"| first ranking: passes {_same(b(f)['pass_count'], a(f)['pass_count'])} "
                f"| {_same(b(f)['calls'], a(f)['calls'], lambda v: f'{v:,}')} "
                f"| {_same(b(f)['bytes'], a(f)['bytes'], lambda v: f'{v:,}')} "
                f"| {_ratio(b(f)['seconds'], a(f)['seconds'])} |"
            )
            i = s["idle_no_check"]
            lines.append(
                f"| idle pass, no holder check due (median of {reps}) "
                f"| {_same(_span(b(i)['calls']), _span(a(i)['calls']))} "
                f"| {_same(_span(b(i)['bytes']), _span(a(i)['bytes']))} "
                f"| {_ratio(b(i)['median_seconds'], a(i)['median_seconds'])} |"
            )
            h = s["holder_check"]
            hb, ha = b(h), a(h)
            lines.append(
                f"| holder check due, first pass (one slice; holder runs "
                f"{_same(hb['first']['holder_runs'], ha['first']['holder_runs'])}) "
                f"| {_same(hb['first']['calls']['total'], ha['first']['calls']['total'])} "
                f"| {_same(hb['first']['bytes'], ha['first']['bytes'], lambda v: f'{v:,}')} "
                f"| {_ratio(hb['first']['seconds'], ha['first']['seconds'])} |"
            )
            lines.append(
                f"| the whole holder check round: passes {_same(hb['round']['pass_count'], ha['round']['pass_count'])} "
                f"| {_same(hb['round']['calls'], ha['round']['calls'], lambda v: f'{v:,}')} "
                f"| {_same(hb['round']['bytes'], ha['round']['bytes'], lambda v: f'{v:,}')} "
                f"| {_ratio(hb['round']['seconds'], ha['round']['seconds'])} (longest "
                f"{hb['round']['longest_pass_seconds']:.2f} / {ha['round']['longest_pass_seconds']:.2f} s) |"
            )
            r = s["rerank"]
            for at in ("1", str(n)):
                rb, ra = r[f"before {at}"], r[f"after {at}"]
                lines.append(
                    f"| re-rank of one experiment at {int(at):,} watched (median of {reps}) "
                    f"| {_same(_span(rb['calls']), _span(ra['calls']))} "
                    f"| {_same(_span(rb['bytes']), _span(ra['bytes']))} "
                    f"| {_ratio(rb['median_seconds'], ra['median_seconds'])} |"
                )
            nb = r[f"before {n}"]["median_seconds"] / r["before 1"]["median_seconds"]
            na = r[f"after {n}"]["median_seconds"] / r["after 1"]["median_seconds"]
            lines.append(f"| re-rank at {n:,} / at 1 | | | ×{nb:.2f} before, ×{na:.2f} after |")
            lines.append(
                f"| load average (1 min) before → after | | | {s['loadavg_before'][0]:.1f} → {s['loadavg_after'][0]:.1f} |"
            )
    return "\n".join(lines)


def main(options: argparse.Namespace) -> None:
    common.quiet_logs()

    def git(cwd: Path, *cmd: str) -> str:
        return subprocess.run(["git", *cmd], capture_output=True, text=True, cwd=cwd).stdout.strip()

    results: dict[str, Any] = {
        "machine": common.machine(),
        "commit": git(common.ROOT, "rev-parse", "HEAD"),
        "dirty": bool(git(common.ROOT, "status", "--porcelain", "--untracked-files=no", "--", "watcher")),
        "before": str(options.before),
        "before_commit": git(Path(options.before), "rev-parse", "HEAD"),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "sizes": options.sizes,
        "reps": options.reps,
        "backends": {},
    }
    for backend in options.backends.split(","):
        run_backend(backend, options, results, lambda: common.save(options.out, results))
    common.finish(options.out, results)
    print(table(results))
