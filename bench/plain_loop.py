"""The trainer's baseline: a plain loop, written the way a sweep script usually is.

Per trial: one `XGBRegressor.fit` per walk-forward fold, sklearn's `permutation_importance`,
one `mlflow.log_metric` call per value, the importance files as artifacts, then
`mlflow.xgboost.log_model`. Same data, folds, hyperparameters and seeds as Podium's trainer, so
both must produce the same metrics.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import mlflow.xgboost
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from sklearn.inspection import permutation_importance
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from xgboost import XGBRegressor

from trainer import keys
from trainer.config import TrainerConfig, sample_trial
from trainer.data import Dataset
from trainer.splits import latest_window, walk_forward_splits

TOP_FEATURES = 20


def _scores(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {
        "r2": float(r2_score(y, pred)),
        "rmse": float(np.sqrt(mean_squared_error(y, pred))),
        "mae": float(mean_absolute_error(y, pred)),
    }


def _model(config: TrainerConfig, hp: dict[str, Any], seed: int) -> XGBRegressor:
    xc = config.xgboost
    return XGBRegressor(
        **hp,
        objective=xc.objective,
        tree_method=xc.tree_method,
        max_bin=xc.max_bin,
        n_jobs=xc.nthread,
        random_state=seed,
    )


def run_trial(config: TrainerConfig, ds: Dataset, index: int, experiment_id: str) -> dict[str, float]:
    """One trial, logged value by value; returns every metric it logged (last value per key)."""
    wf = config.walk_forward
    hp = sample_trial(config.search_space, config.seed, index)
    seed = config.seed + index
    folds = walk_forward_splits(ds.times, wf.train_months, wf.test_months, wf.window, wf.min_test_rows)
    logged: dict[str, float] = {}

    def log_metric(key: str, value: float, step: int = 0) -> None:
        mlflow.log_metric(key, value, step=step)
        logged[key if step == 0 and not key.startswith(("train_", "test_")) else f"{key}@{step}"] = value

    with mlflow.start_run(experiment_id=experiment_id, run_name=f"trial_{index}"):
        mlflow.log_params({**{k: str(v) for k, v in hp.items()}, "symbol": config.resolved_symbol()})
        per_fold: dict[str, list[float]] = {}
        last: tuple[XGBRegressor, np.ndarray, np.ndarray] | None = None
        for fold in folds:
            model = _model(config, hp, seed).fit(ds.X[fold.train], ds.y[fold.train])
            for part, rows in (("train", fold.train), ("test", fold.test)):
                pred = model.predict(ds.X[rows]).astype("float64")
                for name, value in _scores(ds.y[rows], pred).items():
                    log_metric(f"{part}_{name}", value, step=fold.index)
                    per_fold.setdefault(f"avg_{part}_{name}", []).append(value)
            last = (model, ds.X[fold.test], ds.y[fold.test])
        for key, values in per_fold.items():
            log_metric(key, float(np.mean(values)))
        log_metric("num_folds", float(len(folds)))

        imp = config.importance
        assert last is not None
        model, X_hold, y_hold = last
        result = permutation_importance(
            model, X_hold, y_hold, scoring="r2", n_repeats=imp.n_repeats, random_state=imp.seed
        )
        means = np.asarray(result.importances_mean)
        names = keys.metric_names(ds.feature_names)
        for i in np.argsort(-means, kind="stable")[:TOP_FEATURES]:
            log_metric(keys.metric_key(names[ds.feature_names[i]]), float(means[i]))
        for stat, fn in (("max", np.max), ("mean", np.mean), ("median", np.median), ("min", np.min)):
            log_metric(f"importance_{stat}", float(fn(means)))
        table = pd.DataFrame(
            {"feature": ds.feature_names, "importance_mean": means, "importance_std": result.importances_std}
        ).sort_values("importance_mean", ascending=False)
        with tempfile.TemporaryDirectory() as tmp:
            table.to_csv(Path(tmp) / "feature_importance.csv", index=False)
            (Path(tmp) / "permutation_importance.json").write_text(json.dumps(table.to_dict("records")))
            mlflow.log_artifact(str(Path(tmp) / "feature_importance.csv"))
            mlflow.log_artifact(str(Path(tmp) / "permutation_importance.json"))

        final = latest_window(ds.times, wf.train_months, wf.window)
        deployable = _model(config, hp, seed).fit(ds.X[final], ds.y[final])
        example = pd.DataFrame(ds.X[final][-5:], columns=ds.feature_names)
        signature = infer_signature(example, deployable.predict(example))
        mlflow.xgboost.log_model(deployable, name="model", signature=signature, input_example=example)
    return logged


def run_sweep(
    config: TrainerConfig, ds: Dataset, tracking_uri: str, experiment: str
) -> list[dict[str, float]]:
    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = mlflow.set_experiment(experiment).experiment_id
    return [run_trial(config, ds, i, experiment_id) for i in range(config.trials)]
