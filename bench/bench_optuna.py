"""Podium against what a user would pick instead: Optuna with optuna-integration's MLflowCallback.

Optuna's side is the objective a user writes with ``MLflowCallback`` and ``track_in_mlflow``:
the same walk-forward folds, one ``XGBRegressor.fit`` per fold, sklearn's
``permutation_importance`` on the latest fold's test window, SHAP from XGBoost's own
``pred_contribs``, the same content logged (per-fold metrics with ``step`` = fold via
``mlflow.log_metrics``, averages, the ``importance_*`` metrics, the importance files and bar
charts, the model with signature and input example). Podium's sampled hyperparameters are
enqueued (``study.enqueue_trial``) so both sides train the same models, and their metrics are
compared trial by trial. Both log to one `mlflow server` through the counting proxy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import mlflow.xgboost
import numpy as np
import optuna
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.models import infer_signature
from optuna_integration.mlflow import MLflowCallback
from sklearn.inspection import permutation_importance

from bench import common
from bench.bench_trainer import compare, latest_metrics
from bench.common import Calls, log
from bench.plain_loop import TOP_FEATURES, _model, _scores
from bench.servers import running_server
from tests.support.proxy import Proxy
from trainer import data, keys
from trainer.config import Choice, IntRange, TrainerConfig, load_config, sample_trial
from trainer.data import Dataset
from trainer.splits import latest_window, walk_forward_splits


def _suggest(trial: optuna.Trial, config: TrainerConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in sorted(config.search_space):
        dist = config.search_space[name]
        if isinstance(dist, Choice):
            out[name] = trial.suggest_categorical(name, dist.values)
        elif isinstance(dist, IntRange):
            out[name] = trial.suggest_int(name, dist.low, dist.high, log=dist.log)
        else:
            out[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    return out


def _bars(path: Path, names: Sequence[str], values: np.ndarray, title: str) -> None:
    order = np.argsort(-values, kind="stable")[:TOP_FEATURES][::-1]
    fig = Figure(figsize=(8, 7))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.barh([names[i] for i in order], values[order])
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def objective_for(config: TrainerConfig, ds: Dataset, callback: MLflowCallback) -> Any:
    wf = config.walk_forward
    folds = walk_forward_splits(ds.times, wf.train_months, wf.test_months, wf.window)
    final = latest_window(ds.times, wf.train_months, wf.window)
    metric_names = keys.metric_names(ds.feature_names)

    @callback.track_in_mlflow()
    def objective(trial: optuna.Trial) -> float:
        hp = _suggest(trial, config)
        seed = config.seed + trial.number
        mlflow.log_params(
            {"symbol": config.symbol, "train_months": wf.train_months, "test_months": wf.test_months,
             "data_source": ds.source, "total_features": ds.n_features,
             "feature_names": ",".join(ds.feature_names[:50])}
        )  # fmt: skip
        per_fold: dict[str, list[float]] = {}
        last = None
        for fold in folds:
            model = _model(config, hp, seed).fit(ds.X[fold.train], ds.y[fold.train])
            step: dict[str, float] = {}
            for part, rows in (("train", fold.train), ("test", fold.test)):
                pred = model.predict(ds.X[rows]).astype("float64")
                for name, value in _scores(ds.y[rows], pred).items():
                    step[f"{part}_{name}"] = value
                    per_fold.setdefault(f"avg_{part}_{name}", []).append(value)
            mlflow.log_metrics(step, step=fold.index)
            last = (model, ds.X[fold.test], ds.y[fold.test])
        averages = {k: float(np.mean(v)) for k, v in per_fold.items()}
        averages["num_folds"] = float(len(folds))
        mlflow.log_metrics(averages)
        assert last is not None
        model, X_hold, y_hold = last
        imp = config.importance
        result = permutation_importance(
            model, X_hold, y_hold, scoring="r2", n_repeats=imp.n_repeats, random_state=imp.seed
        )
        means = np.asarray(result.importances_mean)
        shap = np.abs(model.get_booster().predict(__import__("xgboost").DMatrix(X_hold), pred_contribs=True))
        shap_mean = shap[:, :-1].mean(axis=0)
        importance = {
            keys.metric_key(metric_names[ds.feature_names[i]]): float(means[i])
            for i in np.argsort(-means, kind="stable")[:TOP_FEATURES]
        }
        for stat, fn in (("max", np.max), ("mean", np.mean), ("median", np.median), ("min", np.min)):
            importance[f"importance_{stat}"] = float(fn(means))
        mlflow.log_metrics(importance)
        table = pd.DataFrame(
            {"feature": ds.feature_names, "importance_mean": means, "importance_std": result.importances_std,
             "shap_importance": shap_mean}
        ).sort_values("importance_mean", ascending=False)  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            table.to_csv(tmp / "feature_importance.csv", index=False)
            (tmp / "permutation_importance.json").write_text(json.dumps(table.to_dict("records")))
            table[["feature", "shap_importance"]].to_csv(tmp / "shap_importance.csv", index=False)
            _bars(tmp / "feature_importance.png", ds.feature_names, means, "permutation importance")
            _bars(tmp / "shap_importance.png", ds.feature_names, shap_mean, "mean |SHAP|")
            mlflow.log_artifacts(str(tmp))
        deployable = _model(config, hp, seed).fit(ds.X[final], ds.y[final])
        example = pd.DataFrame(ds.X[final][-5:], columns=ds.feature_names)
        signature = infer_signature(example, deployable.predict(example))
        mlflow.xgboost.log_model(deployable, name="model", signature=signature, input_example=example)
        return averages["avg_test_r2"]

    return objective


def run_optuna(config: TrainerConfig, ds: Dataset, tracking_uri: str, experiment: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    callback = MLflowCallback(tracking_uri=tracking_uri, metric_name="avg_test_r2_objective")
    study = optuna.create_study(study_name=experiment, direction="maximize")
    for index in range(config.trials):
        study.enqueue_trial(sample_trial(config.search_space, config.seed, index))
    study.optimize(objective_for(config, ds, callback), n_trials=config.trials, callbacks=[callback])


def _cpu_seconds(server_pid: int | None) -> float:
    """CPU time of this process, its finished children (worker pools) and the server's tree."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # includes servers only once they exit
    total = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    if server_pid is not None:
        tick = os.sysconf("SC_CLK_TCK")
        for pid in [server_pid, *_children(server_pid)]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--jobs", default="1,2", help="Podium --jobs values to measure")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--out", default="optuna")
    args = parser.parse_args(argv)
    common.quiet_logs()
    results: dict[str, Any] = {
        "machine": common.machine(),
        "trials": args.trials,
        "optuna": optuna.__version__,
        "sweeps": [],
    }
    ds = data.load(None)
    podium = [("podium", int(j)) for j in args.jobs.split(",")]
    # alternate: Optuna, Podium..., then Podium... and Optuna again when --reps 2
    sides = [("optuna", 1), *podium]
    if args.reps > 1:
        sides += [*podium[::-1], ("optuna", 1)]
    with running_server("sqlite") as server:
        proxy = Proxy(server.url)
        proxy.timeout = 600.0
        try:
            server_pid = server.handle.proc.pid if server.handle.proc else None
            for i, (side, jobs) in enumerate(sides):
                name = f"bench_optuna_{side}_j{jobs}_{i}"
                config = load_config(None, {"trials": args.trials, "jobs": jobs, "experiment": name})
                proxy.reset()
                load_before = os.getloadavg()[0]
                cpu0 = _cpu_seconds(server_pid)
                started = time.perf_counter()
                if side == "optuna":
                    run_optuna(config, ds, proxy.url, name)
                else:
                    from trainer.sweep import run_sweep

                    summary = run_sweep(config, tracking_uri=proxy.url, progress=False)
                    if summary.failed:
                        raise RuntimeError(f"{name}: {summary.failed[0].error}")
                seconds = time.perf_counter() - started
                cpu = _cpu_seconds(server_pid) - cpu0
                calls = Calls.of(proxy.tracking_calls())
                sweep_calls = sum(v for k, v in calls.by_endpoint.items() if " experiments/" in k)
                row = {
                    "side": side,
                    "jobs": jobs,
                    "experiment": name,
                    "seconds": seconds,
                    "trials_per_minute": args.trials / seconds * 60,
                    "cpu_seconds": cpu,
                    "trials_per_cpu_minute": args.trials / cpu * 60,
                    "load_average_before": load_before,
                    "load_average_after": os.getloadavg()[0],
                    "calls": calls.as_dict(),
                    "sweep_calls": sweep_calls,
                    "per_trial_calls": (calls.total - sweep_calls) / args.trials,
                    "artifact_requests": len(proxy.requests) - calls.total,
                }
                results["sweeps"].append(row)
                log(
                    f"{side} jobs={jobs}: {row['trials_per_minute']:.2f} trials/min, "
                    f"{row['trials_per_cpu_minute']:.2f} per CPU-minute, "
                    f"{row['per_trial_calls']:.1f} calls per trial (+{sweep_calls})"
                )
        finally:
            proxy.close()
        client = MlflowClient(server.url)
        optuna_runs = latest_metrics(client, "bench_optuna_optuna_j1_0")
        checks = []
        for row in results["sweeps"]:
            if row["side"] != "podium":
                continue
            podium = latest_metrics(client, row["experiment"])
            for index in range(args.trials):
                theirs = {k: v for k, v in optuna_runs[str(index)].items() if k != "avg_test_r2_objective"}
                check = compare(podium[f"trial_{index}"], theirs)
                checks.append({"experiment": row["experiment"], "trial": index, **check})
        results["checks"] = checks
        log(f"same metrics: {all(c['same'] for c in checks)} ({len(checks)} trials compared)")
    log(f"wrote {common.save(args.out, results)}")


if __name__ == "__main__":
    main()
