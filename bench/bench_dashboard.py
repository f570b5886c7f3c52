"""Training dashboard on a 10,000-run experiment: the leaderboard and experiments routes, and the
page's first render in Chromium, on a sqlite- and a PostgreSQL-backed `mlflow server`.

Side by side in one run: the leaderboard route (read from the board the watcher keeps) against
what a dashboard without that board has to do, one `search_runs` ordered by the metric for the
top N (the cheapest way MLflow's API offers; the guide's own way pages through every run).
Tracking calls are counted by the test suite's real proxy.

    python -m bench.bench_dashboard [--runs 10000] [--reps 7] [--markdown]
"""

from __future__ import annotations

import argparse
import json
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
from watcher.settings import RuleConfig, WatcherSettings

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
TOP_N = 10


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


def run_backend(backend: str, n_runs: int, reps: int) -> dict[str, Any]:
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


def markdown(results: dict[str, Any]) -> str:
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--markdown", action="store_true", help="print the table for BENCHMARKS.md")
    args = parser.parse_args(argv)
    results = {b: run_backend(b, args.runs, args.reps) for b in args.backends.split(",")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    Path(RESULTS / "dashboard.json").write_text(json.dumps(results, indent=2))
    print(markdown(results) if args.markdown else json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
