"""Permutation importance: sklearn's ``permutation_importance`` vs ``trainer.importance``.

Same booster (sklearn gets an ``XGBRegressor`` wrapping its trees), same held-out rows, same
``n_repeats`` and ``random_state``, one thread each. Reports the median wall time of several
runs (the two sides alternate, so a busy machine slows both alike), the ratio, and whether the
numbers are equal (bit for bit, else the largest difference).

    .venv/bin/python bench/bench_importance.py [--runs 5] [--repeats 5] [--markdown]

"rows ours predicts": sklearn predicts every permuted row of every feature; ours skips features
the model never splits on and rows whose tree paths the permutation leaves alone.

Cases, all with the built-in sample's 150 engineered features (hourly bars):
- ``month``: the latest fold's model on the latest test window (one month, ~720 rows), the
  trainer's default; small and large models.
- ``day``: the same model on 24 held-out rows, where per-call overhead dominates.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import xgboost as xgb
from sklearn.inspection import permutation_importance

from trainer import data, importance, splitpaths
from trainer.splits import walk_forward_splits

SEED = 42


@dataclass(frozen=True)
class Case:
    name: str
    rounds: int
    max_depth: int
    rows: int | None  # None: the whole latest test window


CASES = (
    Case("month, 100 trees depth 4", 100, 4, None),
    Case("month, 300 trees depth 6", 300, 6, None),
    Case("day (24 rows), 100 trees depth 4", 100, 4, 24),
)


@dataclass(frozen=True)
class Result:
    case: Case
    n_rows: int
    n_features: int
    used_features: int
    sklearn_seconds: float
    ours_seconds: float
    identical: bool
    max_abs_diff: float
    rows_predicted: float  # share of the permuted rows ours had to predict

    @property
    def ratio(self) -> float:
        return self.sklearn_seconds / self.ours_seconds


def _timed(fn: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def _interleaved(
    a: Callable[[], np.ndarray], b: Callable[[], np.ndarray], runs: int
) -> tuple[float, np.ndarray, float, np.ndarray]:
    """Median seconds and last result of each; runs alternate so load on a shared machine hits both."""
    a_times, b_times = [], []
    a_result = b_result = np.empty(0)
    for _ in range(runs):
        seconds, a_result = _timed(a)
        a_times.append(seconds)
        seconds, b_result = _timed(b)
        b_times.append(seconds)
    return statistics.median(a_times), a_result, statistics.median(b_times), b_result


def run_case(case: Case, dataset: data.Dataset, runs: int, repeats: int) -> Result:
    folds = walk_forward_splits(dataset.times, train_months=3, test_months=1)
    last = folds[-1]
    X_train, y_train = dataset.X[last.train], dataset.y[last.train]
    X_test, y_test = dataset.X[last.test], dataset.y[last.test]
    if case.rows is not None:
        X_test, y_test = X_test[: case.rows], y_test[: case.rows]
    params = {
        "max_depth": case.max_depth,
        "eta": 0.05,
        "subsample": 0.8,
        "colsample_bytree": 0.7,
        "tree_method": "hist",
        "max_bin": 64,
        "nthread": 1,
        "seed": SEED,
        "verbosity": 0,
    }
    booster = xgb.train(params, xgb.DMatrix(X_train, label=y_train), num_boost_round=case.rounds)
    regressor = xgb.XGBRegressor(n_jobs=1)
    regressor.load_model(bytearray(booster.save_raw()))

    def theirs() -> np.ndarray:
        bunch = permutation_importance(
            regressor, X_test, y_test, scoring="r2", n_repeats=repeats, random_state=SEED
        )
        return np.asarray(bunch.importances)

    def ours() -> np.ndarray:
        return importance.permutation_importances(booster, X_test, y_test, n_repeats=repeats, seed=SEED)[1]

    sk_seconds, expected, our_seconds, got = _interleaved(theirs, ours, runs)
    data32 = np.ascontiguousarray(X_test, dtype=np.float32)
    used = importance.used_features(booster, X_test.shape[1])
    paths = splitpaths.build(booster, data32)
    if paths is None:
        predicted = len(used) / X_test.shape[1]
    else:
        perms = importance.permutation_indices(len(X_test), repeats, SEED)
        changed = sum(int(paths.changed(data32, perms, int(c), np.arange(repeats)).sum()) for c in used)
        predicted = changed / (repeats * len(X_test) * X_test.shape[1])
    return Result(
        case=case,
        n_rows=len(X_test),
        n_features=X_test.shape[1],
        used_features=len(used),
        sklearn_seconds=sk_seconds,
        ours_seconds=our_seconds,
        identical=bool(np.array_equal(expected, got)),
        max_abs_diff=float(np.max(np.abs(expected - got))),
        rows_predicted=predicted,
    )


def markdown(results: list[Result], runs: int, repeats: int) -> str:
    lines = [
        f"n_repeats={repeats}, random_state={SEED}, one thread, median of {runs} runs.",
        "",
        "| case | held-out rows | features (split on) | rows ours predicts | sklearn | ours | ratio | same numbers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        same = "identical" if r.identical else f"max diff {r.max_abs_diff:.1e}"
        lines.append(
            f"| {r.case.name} | {r.n_rows} | {r.n_features} ({r.used_features}) | {r.rows_predicted:.0%} "
            f"| {r.sklearn_seconds * 1000:.0f} ms | {r.ours_seconds * 1000:.0f} ms "
            f"| {r.ratio:.1f}× | {same} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per side (median)")
    parser.add_argument("--repeats", type=int, default=5, help="n_repeats (sklearn's default: 5)")
    parser.add_argument("--markdown", action="store_true", help="print only the markdown table")
    args = parser.parse_args(argv)
    dataset = data.load(None)
    results = []
    for case in CASES:
        result = run_case(case, dataset, args.runs, args.repeats)
        results.append(result)
        if not args.markdown:
            print(
                f"{case.name}: sklearn {result.sklearn_seconds:.3f}s, ours {result.ours_seconds:.3f}s, "
                f"{result.ratio:.1f}x, identical={result.identical}",
                file=sys.stderr,
            )
    print(markdown(results, args.runs, args.repeats))
    return 0 if all(r.identical for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
