"""``python -m trainer train | retrain | sample-data``: parse, configure logging, map errors to
exit codes (0 ok, 1 training or tracking failed, 2 bad usage, config or input data)."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from trainer.errors import InputError, TrackingError, TrainingError
from trainer.logs import configure_logging

if TYPE_CHECKING:
    from trainer.executor import ExecutorFactory

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
TRAINER_INSTALL_HINT = "pip install 'mlflow-podium[trainer]'"


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _cost_bps(text: str) -> float:
    """An argparse type: a number of basis points, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of basis points, 0 or more, got {text}")
    return value


_positive = _at_least(1)
_seed = _at_least(0)  # numpy's seeds are non-negative


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer",
        description="Walk-forward XGBoost sweeps logged to MLflow.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,retrain,sample-data}")

    train = sub.add_parser("train", help="run a sweep of walk-forward XGBoost trials")
    train.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help="YAML config (default: built-in defaults, as in config/trainer.yaml)",
    )
    train.add_argument(
        "--data",
        metavar="PATH",
        type=Path,
        help="CSV (also .gz, .bz2, .xz or .zip) or Parquet file (default: the built-in sample)",
    )
    train.add_argument("--target", metavar="COL", help="predict this column from every other numeric column")
    train.add_argument(
        "--task",
        choices=("regression", "direction", "classification"),
        help="regression (default): predict the return or --target; direction: whether the next "
        "return from OHLCV bars is positive; classification: a two-valued --target column",
    )
    train.add_argument(
        "--time-column",
        metavar="COL",
        help="the time column (default: the one named timestamp, time, datetime, date or ts in any "
        "case, or an unnamed first column of times)",
    )
    train.add_argument(
        "--symbol", metavar="SYM", help="symbol in the experiment name and params (default: the file's stem)"
    )
    train.add_argument("--trials", metavar="N", type=_positive, help="number of trials")
    train.add_argument("--train-months", metavar="M", type=_positive, help="months in each training window")
    train.add_argument(
        "--test-months", metavar="M", type=_positive, help="months in each test window (the step)"
    )
    train.add_argument("--window", choices=("rolling", "expanding"), help="training window kind")
    train.add_argument(
        "--min-test-rows",
        metavar="N",
        type=_positive,
        help="a test window with fewer rows is not a fold (default: the larger of 10 and half the "
        "median test window)",
    )
    train.add_argument(
        "--horizon",
        metavar="H",
        type=_positive,
        help="predict the log return over the next H bars (default 1); the last H rows of each "
        "training window, whose labels reach into the test window, are purged",
    )
    train.add_argument(
        "--embargo",
        metavar="BARS",
        type=_at_least(0),
        help="rows left out at the start of each test window, after the previous one (default 0)",
    )
    train.add_argument(
        "--cost-bps",
        metavar="BPS",
        type=_cost_bps,
        help="trading cost in basis points per unit of position change, taken off the trading "
        "scores' strategy returns (default 0)",
    )
    train.add_argument(
        "--experiment",
        metavar="NAME",
        help="MLflow experiment (default: wf_xgboost_{SYMBOL}_f{n}_tr{m}m_te{m}m)",
    )
    train.add_argument("--seed", metavar="S", type=_seed, help="seed of the trial sampler")
    train.add_argument("--jobs", metavar="J", type=_positive, help="trials run in parallel processes")
    train.add_argument(
        "--search",
        choices=("random", "tpe"),
        help="how trials are picked: random (default) or tpe (Optuna's TPE, resumed from the "
        "experiment's finished runs)",
    )
    _add_backend_options(train)
    train.add_argument("--top", metavar="N", type=_positive, help="rows in the final table of best trials")
    train.add_argument("--no-progress", action="store_true", help="plain log lines, no progress bar")

    retrain = sub.add_parser("retrain", help="retrain a logged trial without its weak features")
    retrain.add_argument("--run-id", metavar="RUN_ID", required=True, help="the run to retrain")
    retrain.add_argument(
        "--drop-below", metavar="X", type=float, help="drop features whose importance is below X"
    )
    retrain.add_argument("--exclude", metavar="F1,F2,...", help="comma-separated features to drop")
    _add_backend_options(retrain)

    sample = sub.add_parser("sample-data", help="write the built-in sample data set as CSV")
    sample.add_argument("--out", metavar="PATH", type=Path, required=True, help="CSV file to write")
    sample.add_argument("--seed", metavar="S", type=_seed, help="generate with another seed")
    return parser


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", choices=("local", "ray"), help="where trials run: local processes or a Ray cluster"
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="Ray cluster to run on (default: env RAY_ADDRESS, else a local Ray started for the sweep)",
    )


def executor_factory(backend: str, ray_address: str | None) -> ExecutorFactory:
    """The executor of ``--backend``; for Ray the address falls back to ``RAY_ADDRESS``."""
    from trainer.executor import for_backend

    return for_backend(backend, ray_address or os.environ.get("RAY_ADDRESS") or None)


TRAIN_OVERRIDES = {
    "data": "data.path",
    "target": "data.target",
    "task": "task",
    "time_column": "data.time_column",
    "symbol": "symbol",
    "trials": "trials",
    "train_months": "walk_forward.train_months",
    "test_months": "walk_forward.test_months",
    "window": "walk_forward.window",
    "min_test_rows": "walk_forward.min_test_rows",
    "horizon": "horizon",
    "embargo": "embargo",
    "cost_bps": "cost_bps",
    "experiment": "experiment",
    "seed": "seed",
    "jobs": "jobs",
    "top": "top",
    "backend": "backend",
    "search": "search",
    "ray_address": "ray_address",
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse already printed usage and the error
        return int(e.code or 0)
    configure_logging()
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "sample-data":
            return _sample(args)
        return _retrain(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (TrackingError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ModuleNotFoundError as e:
        missing = (e.name or "").partition(".")[0]
        if not missing or missing == "trainer":
            raise  # a module of the trainer's own: a bug, not an install
        # `pip install 'mlflow-podium[watcher]'` (the sidecar's set) brings the package without
        # the trainer's stack: say what to install instead of a traceback.
        print(
            f"error: python -m trainer {args.command} needs {missing}, which is not installed: "
            f"{TRAINER_INSTALL_HINT}",
            file=sys.stderr,
        )
        return EXIT_USAGE


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a sweep like Ctrl-C: no run is left RUNNING


def _train(args: argparse.Namespace) -> int:
    from trainer.config import load_config
    from trainer.sweep import print_summary, run_sweep

    overrides: dict[str, Any] = {
        dotted: getattr(args, name)
        for name, dotted in TRAIN_OVERRIDES.items()
        if getattr(args, name) is not None
    }
    if "data.path" in overrides:
        overrides["data.path"] = str(overrides["data.path"])
    config = load_config(args.config, overrides)
    signal.signal(signal.SIGTERM, _interrupt)
    factory = executor_factory(config.backend, config.ray_address)
    summary = run_sweep(config, progress=False if args.no_progress else None, executor_factory=factory)
    print_summary(summary, config.top, sys.stdout)
    return EXIT_OK if not summary.failed else EXIT_FAILED


def _retrain(args: argparse.Namespace) -> int:
    from trainer.retrain import parse_exclude, retrain

    signal.signal(signal.SIGTERM, _interrupt)
    factory = executor_factory(args.backend or "local", args.ray_address)
    result = retrain(
        args.run_id, drop_below=args.drop_below, exclude=parse_exclude(args.exclude), executor_factory=factory
    )
    if result.status != "FINISHED":
        raise TrainingError(f"retraining run {args.run_id} failed in run {result.run_id}: {result.error}")
    metric = result.config.resolved_task().main_metric
    before = result.source.metrics.get(metric, math.nan)
    after = result.metrics.get(metric, math.nan)
    total = len(result.plan.kept) + len(result.plan.dropped)
    names = ", ".join(name for name, _ in result.plan.dropped[:10])
    more = f" and {len(result.plan.dropped) - 10} more" if len(result.plan.dropped) > 10 else ""
    print(
        f"Retrained run {args.run_id} as run {result.run_id} (experiment {result.source.experiment_id}): "
        f"{total} -> {len(result.plan.kept)} features, dropped {names}{more}\n"
        f"{metric} {before:.5f} -> {after:.5f}",
        file=sys.stdout,
    )
    return EXIT_OK


def _sample(args: argparse.Namespace) -> int:
    from trainer import sample

    seed = sample.SAMPLE_SEED if args.seed is None else args.seed
    rows = sample.write_sample(args.out, seed)
    structlog.get_logger(__name__).info("sample_written", path=str(args.out), rows=rows, seed=seed)
    print(args.out)
    return EXIT_OK
