"""Fill a tracking store fast: finished runs written in bulk through MLflow's SQL schema.

Experiments are created through the server (so they get the server's artifact location); the runs,
with the metrics, params and tags a trainer run carries, go in with one bulk insert per table
(COPY on PostgreSQL, executemany on sqlite) — tens of thousands of runs in seconds, where one
`log_batch` per run would take many minutes.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import sqlalchemy as sa
from mlflow import MlflowClient

METRIC = "avg_test_r2"
OTHER_METRICS = (
    "avg_test_rmse", "avg_test_mae", "avg_train_r2", "avg_train_rmse", "avg_train_mae",
    "num_folds", "importance_max", "importance_mean", "importance_median", "importance_min",
)  # fmt: skip
PARAMS = {
    "max_depth": "6", "learning_rate": "0.05", "n_estimators": "300", "subsample": "0.8",
    "symbol": "AAPL", "train_months": "3", "test_months": "1", "total_features": "150",
}  # fmt: skip
# A trainer run as `python -m trainer train` logs it on the built-in sample (30 params with the
# comma-separated `feature_names`, 37 latest metrics, 9 tags, ~3.8 kB as search_runs returns
# it): the runs a watcher over a trading universe reads. Hyperparameters vary per run.
FEATURE_NAMES = ",".join(
    [f"ret_lag_{i}" for i in range(1, 25)]
    + [
        f"{f}_{w}"
        for w in (3, 6, 12)
        for f in ("ret_sum", "close_sma_ratio", "close_ema_ratio", "close_zscore", "volatility",
                  "range_mean", "volume_z", "volume_ratio", "stoch_pos")
    ][:26]
)  # fmt: skip
TRAINER_PARAMS = {
    "symbol": "SAMPLE", "train_months": "3", "test_months": "1", "window": "rolling",
    "min_test_rows": "372", "folds_skipped": "0", "bar_interval": "1h",
    "data_source": "builtin:sample(seed=2024)", "data_mode": "ohlcv", "target": "next_return",
    "time_column": "timestamp", "data_rows": "17374", "dropped_constant_features": "0",
    "dropped_empty_features": "0", "prices_filled": "0", "sweep_seed": "42",
    "objective": "reg:squarederror", "tree_method": "hist", "max_bin": "64",
    "feature_names": FEATURE_NAMES, "total_features": "150",
}  # fmt: skip
TRAINER_HYPERPARAMETERS = ("colsample_bytree", "learning_rate", "max_depth", "min_child_weight",
                           "n_estimators", "reg_alpha", "reg_lambda", "subsample", "trial_seed")  # fmt: skip
TRAINER_METRICS = (
    "avg_test_mae", "avg_test_rmse", "avg_train_mae", "avg_train_r2", "avg_train_rmse",
    "importance_max", "importance_mean", "importance_median", "importance_min",
    "test_mae", "test_r2", "test_rmse", "train_mae", "train_r2", "train_rmse",
    *(f"importance_{f}" for f in (
        "bar_body", "close_ema_ratio_3", "close_sma_ratio_3", "close_zscore_3", "day_of_month",
        "hour_sin", "ret_lag_1", "ret_lag_18", "ret_lag_19", "ret_lag_2", "ret_lag_6",
        "ret_skew_120", "stoch_pos_48", "volatility_168", "volume_ratio_12", "volume_ratio_120",
        "volume_ratio_24", "volume_ratio_48", "volume_z_120", "volume_z_24")),
)  # fmt: skip
TRAINER_TAGS = {"mlflow.source.name": "trainer/__main__.py", "mlflow.source.type": "LOCAL",
                "mlflow.source.git.commit": "5f9d51d6fbb01c8cb15e08f2cb27ae8a74e99730",
                "mlflow.source.git.branch": "main", "data_mode": "ohlcv"}  # fmt: skip
PROFILES = ("bench", "trainer")
# Every filled value of the ranked metric lies in [0, MAX_FILLED): a new run above it leads,
# one below MIN_FILLED stays off any board.
MIN_FILLED, MAX_FILLED = 0.1, 0.8


@dataclass(frozen=True)
class FilledExperiment:
    experiment_id: str
    name: str
    n_runs: int


def _rows(
    exp_id: int, artifact_location: str, n_runs: int, rng: random.Random, t_end: int, profile: str = "bench"
) -> dict[str, list[tuple]]:
    runs: list[tuple] = []
    tags: list[tuple] = []
    params: list[tuple] = []
    metrics: list[tuple] = []
    latest: list[tuple] = []
    for i in range(n_runs):
        run_id = uuid.uuid4().hex
        name = f"trial_{i:05d}"
        # Runs ended one second apart, the last one a minute before t_end.
        end = t_end - 60_000 - (n_runs - i) * 1000
        start = end - 30_000
        runs.append((run_id, name, "LOCAL", "bench", "", "bench", "FINISHED", start, end, None, "",
                     "active", f"{artifact_location}/{run_id}/artifacts", exp_id))  # fmt: skip
        tags.append(("mlflow.runName", name, run_id))
        tags.append(("mlflow.user", "bench", run_id))
        values = {METRIC: rng.uniform(MIN_FILLED, MAX_FILLED), "num_folds": 5.0}
        if profile == "trainer":
            tags.extend((k, v, run_id) for k, v in TRAINER_TAGS.items())
            tags.extend((("sweep_id", f"{exp_id:012x}", run_id), ("trial_index", str(i), run_id)))
            params.extend((k, v, run_id) for k, v in TRAINER_PARAMS.items())
            params.extend((k, f"{rng.uniform(0.001, 10):.4g}", run_id) for k in TRAINER_HYPERPARAMETERS)
            other: Sequence[str] = TRAINER_METRICS
        else:
            params.extend((k, v, run_id) for k, v in PARAMS.items())
            other = OTHER_METRICS
        for key in other:
            values.setdefault(key, rng.random())
        for key, value in values.items():
            row = (key, value, end, 0, False, run_id)
            metrics.append(row)
            latest.append(row)
    return {"runs": runs, "tags": tags, "params": params, "metrics": metrics, "latest_metrics": latest}


_COLUMNS = {
    "runs": ("run_uuid", "name", "source_type", "source_name", "entry_point_name", "user_id", "status",
             "start_time", "end_time", "deleted_time", "source_version", "lifecycle_stage",
             "artifact_uri", "experiment_id"),
    "tags": ("key", "value", "run_uuid"),
    "params": ("key", "value", "run_uuid"),
    "metrics": ("key", "value", "timestamp", "step", "is_nan", "run_uuid"),
    "latest_metrics": ("key", "value", "timestamp", "step", "is_nan", "run_uuid"),
}  # fmt: skip


def _pg_text(value: object) -> str:
    """COPY text format; filled values never contain tabs, newlines or backslashes."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)


def _insert(engine: sa.Engine, table: str, rows: Sequence[tuple]) -> None:
    cols = _COLUMNS[table]
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        if engine.dialect.name == "postgresql":
            # One text buffer per table: psycopg's per-row write_row costs more than the COPY.
            text = "".join("\t".join(_pg_text(v) for v in row) + "\n" for row in rows)
            with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                copy.write(text)
        else:
            marks = ", ".join("?" for _ in cols)
            cur.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", rows)
        raw.commit()
    finally:
        raw.close()


def fill(
    client: MlflowClient,
    db_uri: str,
    sizes: Iterable[tuple[str, int]],
    *,
    seed: int = 0,
    profile: str = "bench",
    workers: int = 4,
) -> list[FilledExperiment]:
    """Create one experiment per (name, n_runs) through `client` and bulk-insert its finished runs
    (``profile``: "bench", a light run, or "trainer", a run as the trainer logs it); ``workers``
    experiments are created at once (1: their ids follow the order of ``sizes``)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    rng = random.Random(seed)
    engine = sa.create_engine(db_uri)
    t_end = int(time.time() * 1000)
    filled = []
    try:
        batch: dict[str, list[tuple]] = {t: [] for t in _COLUMNS}
        sizes = list(sizes)

        def create(name: str) -> tuple[str, str]:
            exp_id = client.create_experiment(name)
            return exp_id, client.get_experiment(exp_id).artifact_location

        # Thousands of experiments: the server's calls go out four at a time.
        with ThreadPoolExecutor(workers) as pool:
            created = list(pool.map(create, [name for name, _ in sizes]))
        for (name, n_runs), (exp_id, location) in zip(sizes, created, strict=True):
            for table, rows in _rows(int(exp_id), location, n_runs, rng, t_end, profile).items():
                batch[table].extend(rows)
            filled.append(FilledExperiment(exp_id, name, n_runs))
        for table in _COLUMNS:  # runs first: the other tables reference them
            _insert(engine, table, batch[table])
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                conn.execute(sa.text("ANALYZE"))
                conn.commit()
    finally:
        engine.dispose()
    return filled
