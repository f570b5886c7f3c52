"""Training dashboard, on a sqlite- and a PostgreSQL-backed `mlflow server`.

Default (the universe): one rule over 100, then 1,000 experiments of 10 trainer-sized finished
runs each (bench/fill.py; the 100 are the first of the 1,000, the other 900 filled after the
100 were measured: one fill per backend), ranked by a watcher. For each size, side by side in
one run, the code before (a checkout of the old commit, ``--before DIR``, run with PYTHONPATH)
and the code of this tree, each serving the dashboard from a process of its own over the same
server through one counting proxy (tests/support/proxy.py): ``GET /api/experiments`` (its
first answer and the median of the repetitions, with the tracking calls of each), the first
experiment row on screen in Chromium, and, for this tree, the page's search, sort and gated
filter in Chromium and the universe CSV export.

``--board``: one experiment of 10,000 runs: the leaderboard route (read from the board the
watcher keeps) against one `search_runs` ordered by the metric for the top N, and the page's
first render.

    python -m bench.bench_dashboard [--sizes 100,1000] [--before /tmp/dash-before] [--markdown]
    python -m bench.bench_dashboard --board [--runs 10000] [--reps 7] [--markdown]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from mlflow import MlflowClient

from bench.common import RESULTS, log, median
from bench.fill import METRIC, fill
from bench.servers import BACKENDS, running_server
from tests.support.proxy import Proxy
from watcher.api import bind_socket, create_app, run_in_thread
from watcher.mlflow_io import MlflowTracking
from watcher.service import Watcher
from watcher.settings import HttpConfig, RuleConfig, WatcherSettings
from watcher.state import STATE_TAG, UNRANKED, ExperimentState

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
TOP_N = 10
RUNS = 10


def _timed_get(http: httpx.Client, proxy: Proxy, path: str, reps: int) -> dict[str, Any]:
    times, calls = [], []
    for _ in range(reps):
        proxy.reset()
        t0 = time.perf_counter()
        r = http.get(path)
        times.append(time.perf_counter() - t0)
        r.raise_for_status()
        calls.append(len(proxy.tracking_calls()))
    return {"median_s": median(times), "min_s": min(times), "calls": max(calls)}


def _ordered_search(client: MlflowClient, proxy: Proxy, exp_id: str, reps: int) -> dict[str, Any]:
    times, calls = [], []
    for _ in range(reps):
        proxy.reset()
        t0 = time.perf_counter()
        client.search_runs(
            [exp_id],
            "attributes.status = 'FINISHED'",
            order_by=[f"metrics.`{METRIC}` DESC"],
            max_results=TOP_N,
        )
        times.append(time.perf_counter() - t0)
        calls.append(len(proxy.tracking_calls()))
    return {"median_s": median(times), "min_s": min(times), "calls": max(calls)}


def _first_render(base: str, exp_id: str, reps: int) -> dict[str, Any]:
    """Wall time from navigation to the leaderboard rows on screen, a fresh browser page each time."""
    from playwright.sync_api import sync_playwright

    board, listing = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for _ in range(reps):
                page = browser.new_page()
                t0 = time.perf_counter()
                page.goto(f"{base}/#/experiments/{exp_id}")
                page.locator("[data-testid=board-row]").nth(TOP_N - 1).wait_for(timeout=120_000)
                board.append(time.perf_counter() - t0)
                page.close()
                page = browser.new_page()
                t0 = time.perf_counter()
                page.goto(f"{base}/")
                page.locator("[data-testid=experiment-row]").first.wait_for(timeout=120_000)
                listing.append(time.perf_counter() - t0)
                page.close()
        finally:
            browser.close()
    return {"board_median_s": median(board), "list_median_s": median(listing)}


def board_backend(backend: str, n_runs: int, reps: int) -> dict[str, Any]:
    with running_server(backend) as server:
        client = MlflowClient(server.url)
        log(f"{backend}: filling {n_runs:,} runs")
        (exp,) = fill(client, server.db_uri, [("bench_dash_10k", n_runs)])
        proxy = Proxy(server.url)
        proxy.timeout = 600
        try:
            rule = RuleConfig(
                name="bench", experiments=[exp.name], metric=METRIC, top_n=TOP_N, trigger="run_finished"
            )
            watcher = Watcher(WatcherSettings(rules=[rule]), MlflowTracking(proxy.url))
            log(f"{backend}: first ranking")
            result = watcher.run_pass()
            assert result.ok, result.error
            api = run_in_thread(create_app(watcher), bind_socket("127.0.0.1", 0))
            try:
                with httpx.Client(base_url=api.url, timeout=600) as http:
                    http.get(f"/api/experiments/{exp.experiment_id}/leaderboard").raise_for_status()  # warm
                    log(f"{backend}: routes")
                    board = _timed_get(http, proxy, f"/api/experiments/{exp.experiment_id}/leaderboard", reps)
                    listing = _timed_get(http, proxy, "/api/experiments", reps)
                    log(f"{backend}: ordered search")
                    ordered = _ordered_search(MlflowClient(proxy.url), proxy, exp.experiment_id, reps)
                log(f"{backend}: first render in Chromium")
                render = _first_render(api.url, exp.experiment_id, max(3, reps // 2))
            finally:
                api.stop()
        finally:
            proxy.close()
    return {
        "runs": n_runs,
        "leaderboard": board,
        "experiments": listing,
        "ordered_search": ordered,
        "render": render,
    }


def board_markdown(results: dict[str, Any]) -> str:
    names = {"sqlite": "sqlite", "postgresql": "PostgreSQL"}
    lines = [
        f"Runs in the experiment: {next(iter(results.values()))['runs']:,}; medians of the repetitions; "
        "tracking calls counted by the proxy.",
        "",
        "| backend | leaderboard route | its tracking calls | ordered top-10 search (no kept board) | ratio | experiments route | its tracking calls | first render: board | first render: experiments |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for backend, r in results.items():
        b, o, e, p = r["leaderboard"], r["ordered_search"], r["experiments"], r["render"]
        lines.append(
            f"| {names.get(backend, backend)} | {b['median_s'] * 1000:,.0f} ms | {b['calls']} | "
            f"{o['median_s'] * 1000:,.0f} ms | {o['median_s'] / b['median_s']:,.1f}× | "
            f"{e['median_s'] * 1000:,.0f} ms | {e['calls']} | {p['board_median_s'] * 1000:,.0f} ms | "
            f"{p['list_median_s'] * 1000:,.0f} ms |"
        )
    return "\n".join(lines) + "\n"


# ---- the universe: 100 / 1,000 experiments, before and after --------------------------------------

PREFIX = "dash_u_"
UNIVERSE_RULE = {"name": "universe", "metric": METRIC, "top_n": TOP_N, "production_candidates": 3}
# How the page asks for the experiments table: its first page of 50 (without it, every experiment).
PAGE_QUERY = {"page": 1, "page_size": 50}
# The dashboard of a tree, served from a process of its own: one pass (the kept listing), then
# the API until stdin closes. Only names both trees have (the old one is run with PYTHONPATH).
SERVE = """
import json, sys
from watcher.api import bind_socket, create_app, run_in_thread
from watcher.mlflow_io import MlflowTracking
from watcher.service import Watcher
from watcher.settings import HttpConfig, RuleConfig, WatcherSettings
url, rule, port, passes = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
settings = WatcherSettings(tracking_uri=url, http=HttpConfig(enabled=False), rules=[RuleConfig(**rule)])
watcher = Watcher(settings, MlflowTracking(url))
api = run_in_thread(create_app(watcher), bind_socket("127.0.0.1", port))
print("serving", file=sys.stderr, flush=True)
sys.stdin.readline()
for _ in range(passes):
    assert watcher.run_pass().ok
print("passed", file=sys.stderr, flush=True)
sys.stdin.readline()
api.stop()
"""


class Served:
    """A tree's dashboard in a subprocess: ``serve()`` answers with no pass made yet, ``pass_()``
    makes the daemon's first pass (the kept listing)."""

    def __init__(self, tree: Path, proxy_url: str, pattern: str, passes: int) -> None:
        import subprocess
        import sys

        from tests.support.mlflow_server import free_port

        self.port = free_port()
        rule = json.dumps({**UNIVERSE_RULE, "experiments": [pattern]})
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, proxy_url, rule, str(self.port), str(passes)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=tree,
        )  # fmt: skip
        self._expect("serving")
        self.url = f"http://127.0.0.1:{self.port}"

    def _expect(self, word: str) -> None:
        assert self.proc.stderr is not None
        said = []
        for line in self.proc.stderr:  # warnings may come first
            if line.strip() == word:
                return
            said.append(line)
        raise RuntimeError(
            f"the served dashboard exited ({self.proc.poll()}) before {word!r}: {''.join(said)[-2000:]}"
        )

    def pass_(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        self._expect("passed")

    def stop(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write("\n")
                self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except Exception:
            self.proc.kill()


def _get(
    http: httpx.Client, proxy: Proxy, path: str, params: dict[str, Any] | None = None
) -> tuple[float, int, int]:
    """Seconds, tracking calls and bytes of one answer."""
    proxy.reset()
    t0 = time.perf_counter()
    r = http.get(path, params=params)
    seconds = time.perf_counter() - t0
    r.raise_for_status()
    return seconds, len(proxy.tracking_calls()), len(r.content)


def _route(http: httpx.Client, proxy: Proxy, reps: int) -> dict[str, Any]:
    """The experiments route as the page asks for it (the old code, which has no paging,
    answers the whole list): the first answer, then ``reps`` more."""
    first = _get(http, proxy, "/api/experiments", PAGE_QUERY)
    rest = [_get(http, proxy, "/api/experiments", PAGE_QUERY) for _ in range(reps)]
    return {
        "first_s": first[0],
        "first_calls": first[1],
        "median_s": median([r[0] for r in rest]),
        "calls": max(r[1] for r in rest),
        "bytes": rest[-1][2],
    }


def _page(base: str, reps: int, interact: bool, symbol: str) -> dict[str, Any]:
    """The first experiment row on screen (a fresh page each time); with ``interact``, the page's
    search (to one symbol), sort by the leader's value and gated filter, each until shown."""
    from playwright.sync_api import sync_playwright

    first: list[float] = []
    acts: dict[str, list[float]] = {"search": [], "sort_value": [], "gated": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for _ in range(reps):
                page = browser.new_page(viewport={"width": 1360, "height": 900})
                t0 = time.perf_counter()
                page.goto(f"{base}/")
                page.locator("[data-testid=experiment-row]").first.wait_for(timeout=120_000)
                first.append(time.perf_counter() - t0)
                if interact:
                    rows = "document.querySelectorAll('[data-testid=experiment-row]').length"
                    t0 = time.perf_counter()
                    page.get_by_test_id("experiment-search").fill(symbol)
                    page.wait_for_function(f"() => {rows} === 1", timeout=60_000)
                    acts["search"].append(time.perf_counter() - t0)
                    page.get_by_test_id("experiment-search").fill("")
                    page.wait_for_function(f"() => {rows} > 1", timeout=60_000)
                    t0 = time.perf_counter()
                    page.locator("th[data-sort=value]").click()
                    page.wait_for_function(
                        "() => document.querySelector('th[data-sort=value]').getAttribute('aria-sort') === 'descending'",
                        timeout=60_000,
                    )
                    acts["sort_value"].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    page.get_by_test_id("state-gated").click()
                    page.wait_for_function(
                        "() => document.querySelector('[data-testid=state-gated]').classList.contains('on')",
                        timeout=60_000,
                    )
                    acts["gated"].append(time.perf_counter() - t0)
                page.close()
        finally:
            browser.close()
    out: dict[str, Any] = {"first_row_s": median(first)}
    if interact:
        out.update({f"{k}_s": median(v) for k, v in acts.items()})
    return out


def _rank_all(url: str, pattern: str, n: int) -> None:
    """Rank every experiment of the pattern (setup, not measured): passes until all are ranked."""
    rule = RuleConfig.model_validate({**UNIVERSE_RULE, "experiments": [pattern]})
    settings = WatcherSettings(
        tracking_uri=url, http=HttpConfig(enabled=False), rules=[rule], max_rankings_per_pass=max(100, n)
    )
    watcher = Watcher(settings, MlflowTracking(url))
    for _ in range(20):
        assert watcher.run_pass().ok
        states = [ExperimentState.from_tag(r.tags.get(STATE_TAG)) for r in watcher.memory.listing.records()]
        if len(states) >= n and all(s is not None and s.fingerprint != UNRANKED for s in states):
            return
    raise RuntimeError(f"{pattern}: not every experiment was ranked after 20 passes")


def universe_backend(backend: str, sizes: Sequence[int], before: Path, reps: int) -> dict[str, Any]:
    after = Path(__file__).resolve().parents[1]
    out: dict[str, Any] = {}
    with running_server(backend) as server:
        client = MlflowClient(server.url)
        proxy = Proxy(server.url)
        proxy.timeout = 600
        filled = 0
        try:
            for n in sorted(sizes):
                log(f"{backend}: filling experiments {filled:,}..{n - 1:,} (10 trainer-sized runs each)")
                fill(client, server.db_uri, [(f"{PREFIX}{i:04d}", RUNS) for i in range(filled, n)], seed=n, profile="trainer")  # fmt: skip
                filled = n
                log(f"{backend}: ranking {n:,} experiments")
                _rank_all(server.url, f"{PREFIX}*", n)
                symbol = f"{PREFIX}{n // 2:04d}"
                row: dict[str, Any] = {}
                for variant, tree, passes in (
                    ("before", before, 0),
                    ("after", after, 1),
                    ("no_pass", after, 0),
                ):
                    log(f"{backend} {n:,}: {variant}")
                    served = Served(tree, proxy.url, f"{PREFIX}*", passes)
                    try:
                        with httpx.Client(base_url=served.url, timeout=600) as http:
                            served.pass_()
                            if variant == "no_pass":  # no kept listing yet: the route lists once
                                cold = _get(http, proxy, "/api/experiments", PAGE_QUERY)
                                row["after"]["no_pass_s"], row["after"]["no_pass_calls"] = cold[0], cold[1]
                                continue
                            result = _route(http, proxy, reps)
                            if variant == "after":
                                csv_cold = _get(http, proxy, "/api/rules/universe/leaders", {"format": "csv"})
                                csv_warm = _get(http, proxy, "/api/rules/universe/leaders", {"format": "csv"})
                                result["csv"] = {"first_s": csv_cold[0], "first_calls": csv_cold[1],
                                                 "again_s": csv_warm[0], "again_calls": csv_warm[1],
                                                 "bytes": csv_warm[2]}  # fmt: skip
                        result.update(_page(served.url, 3, interact=variant == "after", symbol=symbol))
                    finally:
                        served.stop()
                    row[variant] = result
                out[str(n)] = row
        finally:
            proxy.close()
    return out


def universe_markdown(results: dict[str, Any]) -> str:
    names = {"sqlite": "sqlite", "postgresql": "PostgreSQL"}
    ms = lambda s: f"{s * 1000:,.0f} ms"  # noqa: E731
    lines = [
        "| backend | experiments | `GET /api/experiments` before: time (calls, size) | after: first answer with the kept listing (calls) | after: again (calls, size) | before / after | no pass yet (calls) | first row on screen: before | after | search / sort by value / gated (after) | universe CSV: first (calls) / again (calls) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for backend, sizes in results.items():
        for n, r in sizes.items():
            b, a = r["before"], r["after"]
            lines.append(
                f"| {names.get(backend, backend)} | {int(n):,} | {ms(b['median_s'])} ({b['calls']}, {b['bytes'] / 1e6:.2f} MB) | "
                f"{ms(a['first_s'])} ({a['first_calls']}) | {ms(a['median_s'])} ({a['calls']}, {a['bytes'] / 1e3:.0f} kB) | "
                f"{b['median_s'] / a['median_s']:,.1f}× | {ms(a['no_pass_s'])} ({a['no_pass_calls']}) | "
                f"{ms(b['first_row_s'])} | {ms(a['first_row_s'])} | "
                f"{ms(a['search_s'])} / {ms(a['sort_value_s'])} / {ms(a['gated_s'])} | "
                f"{ms(a['csv']['first_s'])} ({a['csv']['first_calls']}) / {ms(a['csv']['again_s'])} ({a['csv']['again_calls']}) |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--board", action="store_true", help="one 10,000-run experiment's leaderboard instead"
    )
    parser.add_argument("--runs", type=int, default=10_000, help="--board: runs in the experiment")
    parser.add_argument("--sizes", default="100,1000", help="experiments watched, ascending")
    parser.add_argument(
        "--before", type=Path, default=Path("/tmp/dash-before"), help="a checkout of the old code"
    )
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--markdown", action="store_true", help="print the table for BENCHMARKS.md")
    args = parser.parse_args(argv)
    backends = args.backends.split(",")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.board:
        results = {b: board_backend(b, args.runs, args.reps) for b in backends}
        Path(RESULTS / "dashboard.json").write_text(json.dumps(results, indent=2))
        print(board_markdown(results) if args.markdown else json.dumps(results, indent=2))
        return
    if not (args.before / "watcher" / "api.py").exists():
        parser.error(
            f"--before: {args.before} is not a checkout of Podium (git worktree add {args.before} <commit>)"
        )
    sizes = [int(n) for n in args.sizes.split(",")]
    results = {}
    for b in backends:
        results[b] = universe_backend(b, sizes, args.before, args.reps)
        Path(RESULTS / "dashboard_universe.json").write_text(json.dumps(results, indent=2))
    print(universe_markdown(results) if args.markdown else json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
