"""What the trading scores add to a trial: the same trials with and without them, interleaved.

One worker (``trainer.worker``), the built-in sample at default settings, one real `mlflow
server` (sqlite). Each trial runs twice, once with the trading scores (per-fold IC, hit rate,
return, Sharpe, turnover, the out-of-sample path's scores, ``oos_returns.csv`` and
``oos_equity.png``) and once without (the data set without its returns, as in ``--target``
mode: the trainer skips every trading score and file); the arm that goes first alternates from
trial to trial, so a change in the machine's load falls on both. Reported: each arm's median
seconds per trial (training, scoring and logging, uploads included), their ratio, and the
tracking calls per trial of each arm (artifact uploads apart).

On a shared machine wall time swings by ±20% from one trial to the next (an A/A run, both arms
with the scores, differed by that much), so each arm's CPU seconds are reported too: this
process's (training, scoring, the client side of logging) plus the `mlflow server`'s, which the
load of other work moves far less.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import common
from bench.common import log, median
from bench.servers import running_server
from tests.support.proxy import Proxy
from trainer.config import load_config, sample_trial
from trainer.prepare import prepare, static_params
from trainer.tracking import Tracking, quiet_mlflow
from trainer.train import run_trial
from trainer.worker import TrialTask, WorkerContext, _Worker

ARMS = ("with", "without")


def server_cpu(proc: Any) -> float:
    """CPU seconds the server process and its worker processes have used so far (from /proc)."""
    if proc is None:
        return 0.0
    total = 0.0
    for pid in [proc.pid, *_descendants(proc.pid)]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return total


def _descendants(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = [int(c) for c in children]
    return out + [d for c in out for d in _descendants(c)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed trials per arm first: a process's first chart loads matplotlib's fonts, once per worker",
    )
    parser.add_argument("--out", default="trading")
    args = parser.parse_args(argv)
    common.quiet_logs()
    quiet_mlflow()
    config = load_config(None, {"jobs": 1})
    inputs = prepare(config)
    data = {
        "with": inputs.dataset,
        "without": dataclasses.replace(inputs.dataset, returns=None, bar_returns=None),
    }
    results: dict[str, Any] = {"machine": common.machine(), "trials": args.trials}
    seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
    calls: dict[str, list[int]] = {arm: [] for arm in ARMS}
    logging_seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
    cpu_seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
    with running_server("sqlite") as server:
        proxy = Proxy(server.url)
        results["load_average_before"] = os.getloadavg()[0]
        tracking = Tracking(proxy.url)
        workers = {}
        experiments = {}
        for arm in ARMS:
            experiments[arm] = tracking.ensure_experiment(f"bench_trading_{arm}")
            context = WorkerContext(
                data[arm], config, proxy.url, experiments[arm], static_params(config, inputs), quiet=True
            )
            workers[arm] = _Worker(context)
        for index in range(-args.warmup, args.trials):
            hp = sample_trial(
                config.search_space, config.seed + 1000 if index < 0 else config.seed, abs(index)
            )
            order = ARMS if index % 2 == 0 else ARMS[::-1]
            for arm in order:
                run_id, artifact_uri = tracking.create_run(experiments[arm], f"trial_{index}", {})
                proxy.reset()
                worker = workers[arm]
                task = TrialTask(index, run_id, artifact_uri, hp, config.seed + index)
                # what Worker.run does, in two timed parts: the trial, then its logging
                server_before = server_cpu(server.handle.proc)
                cpu_before = time.process_time()
                t0 = time.perf_counter()
                result = run_trial(worker.prepared, index, hp, task.seed)
                t1 = time.perf_counter()
                worker._log(task, result)
                t2 = time.perf_counter()
                cpu = time.process_time() - cpu_before + server_cpu(server.handle.proc) - server_before
                cpu_seconds[arm].append(cpu)
                seconds[arm].append(t2 - t0)
                logging_seconds[arm].append(t2 - t1)
                calls[arm].append(len(proxy.tracking_calls()))
                assert ("oos_sharpe" in result.averages()) == (arm == "with")
            log(
                f"trial {index}: with {seconds['with'][-1]:.2f} s (logging {logging_seconds['with'][-1]:.2f}, "
                f"CPU {cpu_seconds['with'][-1]:.2f}), without {seconds['without'][-1]:.2f} s "
                f"(logging {logging_seconds['without'][-1]:.2f}, CPU {cpu_seconds['without'][-1]:.2f})"
            )
        results["load_average_after"] = os.getloadavg()[0]
        for series in (seconds, logging_seconds, cpu_seconds, calls):
            for arm in ARMS:
                del series[arm][: args.warmup]
        proxy.close()
    for arm in ARMS:
        results[arm] = {
            "median_seconds": median(seconds[arm]),
            "seconds": seconds[arm],
            "median_logging_seconds": median(logging_seconds[arm]),
            "median_cpu_seconds": median(cpu_seconds[arm]),
            "cpu_seconds": cpu_seconds[arm],
            "logging_seconds": logging_seconds[arm],
            "tracking_calls_per_trial": median([float(c) for c in calls[arm]]),
        }
    ratio = results["with"]["median_seconds"] / results["without"]["median_seconds"]
    paired = median([a / b for a, b in zip(seconds["with"], seconds["without"], strict=True)])
    results["ratio_of_medians"] = ratio
    cpu_ratio = results["with"]["median_cpu_seconds"] / results["without"]["median_cpu_seconds"]
    cpu_paired = median([a / b for a, b in zip(cpu_seconds["with"], cpu_seconds["without"], strict=True)])
    results["cpu_ratio_of_medians"] = cpu_ratio
    results["cpu_median_paired_ratio"] = cpu_paired
    results["median_paired_ratio"] = paired
    log(
        f"median CPU s/trial (this process and the server): with {results['with']['median_cpu_seconds']:.2f}, "
        f"without {results['without']['median_cpu_seconds']:.2f}: x{cpu_ratio:.3f} (paired x{cpu_paired:.3f})"
    )
    log(
        f"median logging s/trial: with {results['with']['median_logging_seconds']:.2f}, without "
        f"{results['without']['median_logging_seconds']:.2f}"
    )
    log(
        f"median s/trial: with {results['with']['median_seconds']:.2f}, without "
        f"{results['without']['median_seconds']:.2f}: x{ratio:.3f} (paired x{paired:.3f}); "
        f"tracking calls per trial {results['with']['tracking_calls_per_trial']:.0f} vs "
        f"{results['without']['tracking_calls_per_trial']:.0f}"
    )
    common.save(args.out, results)


if __name__ == "__main__":
    main()
