"""Retrain a logged trial without its weak features.

``python -m trainer retrain --run-id R [--drop-below X] [--exclude F1,F2,...]`` reads run R's
hyperparameters and data settings (its params), its ``feature_importance.csv`` and the
importance settings in ``permutation_importance.json``; drops the features whose permutation
importance (``importance_mean``) is below X and the named ones; and trains one new trial in the
same experiment with the same hyperparameters and seed. The new run carries tag
``retrained_from`` = R, a smaller ``total_features``, param ``dropped_features`` and the
artifact ``dropped_features.csv`` (every dropped feature, why, and its importance).

Deciding what to drop (``plan_drop``) is pure; everything a user can get wrong is an
``InputError`` (exit 2) before a run is created.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import difflib
import json
import math
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from trainer import sample
from trainer.config import HYPERPARAMETERS, TrainerConfig, load_config
from trainer.errors import InputError
from trainer.executor import ExecutorFactory, ExecutorSession, local_executor
from trainer.importance import SKIPPED_TAG
from trainer.importance_report import IMPORTANCE_CSV, PERMUTATION_JSON
from trainer.prepare import prepare, static_params
from trainer.tracking import LoggedRun, Tracking, quiet_mlflow
from trainer.worker import TrialTask, WorkerContext, execute, init_worker, mark_ended

log = structlog.get_logger(__name__)

DROPPED_CSV = "dropped_features.csv"
RETRAINED_FROM_TAG = "retrained_from"
# Params a trial run must carry to be retrained (besides its hyperparameters).
REQUIRED_PARAMS = ("symbol", "train_months", "test_months", "data_source", "data_mode", "trial_seed")


@dataclass(frozen=True)
class DropPlan:
    kept: tuple[str, ...]  # in the model's column order
    dropped: tuple[tuple[str, str], ...]  # (feature, reason), in the model's column order


@dataclass(frozen=True)
class RetrainResult:
    source: LoggedRun
    run_id: str
    status: str
    plan: DropPlan
    metrics: dict[str, float]
    error: str | None
    config: TrainerConfig


# ---------------------------------------------------------------------------------------------
# Pure parts
# ---------------------------------------------------------------------------------------------


def parse_exclude(text: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    if not text:
        return []
    return [name.strip() for name in text.split(",") if name.strip()]


def read_importance_csv(path: Path, run_id: str) -> dict[str, float]:
    """Feature -> importance_mean from a run's ``feature_importance.csv`` (original names)."""
    where = f"{IMPORTANCE_CSV} of run {run_id}"
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"feature", "importance_mean"} - set(reader.fieldnames or ())
        if missing:
            raise InputError(f"{where} has no column(s) {', '.join(sorted(missing))}")
        scores: dict[str, float] = {}
        for line, row in enumerate(reader, start=2):
            try:
                scores[row["feature"]] = float(row["importance_mean"])
            except (TypeError, ValueError):
                raise InputError(
                    f"{where}, line {line}: importance_mean {row['importance_mean']!r} is not a number"
                ) from None
    if not scores:
        raise InputError(f"{where} lists no features")
    return scores


def check_request(drop_below: float | None, exclude: Sequence[str]) -> None:
    """A retrain must drop something: a finite ``--drop-below`` and/or ``--exclude`` names."""
    if drop_below is None and not exclude:
        raise InputError("retrain needs --drop-below X and/or --exclude F1,F2: nothing to drop")
    if drop_below is not None and not math.isfinite(drop_below):
        raise InputError(f"--drop-below must be a finite number, not {drop_below}")


def plan_drop(
    features: Sequence[str],
    importance: dict[str, float],
    *,
    drop_below: float | None,
    exclude: Sequence[str],
    run_id: str,
) -> DropPlan:
    """Which of ``features`` (the model's columns, in order) to keep and which to drop, and why."""
    check_request(drop_below, exclude)
    known = set(features)
    for name in exclude:
        if name not in known:
            close = difflib.get_close_matches(name, features, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise InputError(f"--exclude: run {run_id} has no feature {name!r}{hint}")
    excluded = set(exclude)
    kept: list[str] = []
    dropped: list[tuple[str, str]] = []
    for name in features:
        value = importance[name]
        if name in excluded:
            dropped.append((name, "excluded"))
        elif drop_below is not None and value < drop_below:
            dropped.append((name, f"importance {value:.6g} < {drop_below:g}"))
        else:
            kept.append(name)
    if not dropped:
        lowest = min(features, key=lambda f: importance[f])
        raise InputError(
            f"nothing to drop: no feature of run {run_id} has importance below {drop_below:g} "
            f"(the lowest is {lowest!r} at {importance[lowest]:.6g})"
        )
    if not kept:
        raise InputError(
            f"dropping {len(dropped)} features would leave run {run_id} with none; "
            "lower --drop-below or exclude fewer features"
        )
    return DropPlan(tuple(kept), tuple(dropped))


def _value(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def hyperparameters_of(run: LoggedRun) -> dict[str, Any]:
    """The run's searched hyperparameters, typed back from their param strings."""
    found = {name: _value(value) for name, value in run.params.items() if name in HYPERPARAMETERS}
    if "n_estimators" not in found:
        raise InputError(f"run {run.run_id} is not a trainer trial: it has no param n_estimators")
    return found


def config_of(run: LoggedRun, importance_settings: dict[str, Any]) -> TrainerConfig:
    """A one-trial config that reproduces the run's data and walk-forward settings."""
    params = run.params
    missing = [p for p in REQUIRED_PARAMS if p not in params]
    if missing:
        raise InputError(f"run {run.run_id} is not a trainer trial: it has no param(s) {', '.join(missing)}")
    source = params["data_source"]
    if source.startswith("builtin:") and source != sample.SAMPLE_SOURCE:
        raise InputError(f"run {run.run_id} used {source}, which this trainer cannot regenerate")
    overrides: dict[str, Any] = {
        "symbol": params["symbol"],
        "trials": 1,
        "jobs": 1,
        "walk_forward.train_months": params["train_months"],
        "walk_forward.test_months": params["test_months"],
        "data.path": None if source.startswith("builtin:") else source,
        "data.target": params.get("target") if params["data_mode"] == "target" else None,
        "data.time_column": params.get("time_column"),
        "task": params.get("task", "regression"),  # runs from before the task param regressed
    }
    optional = {
        "window": "walk_forward.window",
        "min_test_rows": "walk_forward.min_test_rows",
        "horizon": "horizon",
        "embargo": "embargo",
        "cost_bps": "cost_bps",
        "sweep_seed": "seed",
        "tree_method": "xgboost.tree_method",
        "max_bin": "xgboost.max_bin",
    }
    overrides.update({dotted: params[name] for name, dotted in optional.items() if name in params})
    if overrides["task"] == "regression" and "objective" in params:  # a classifier's is binary:logistic
        overrides["xgboost.objective"] = params["objective"]
    for key, dotted in (("n_repeats", "n_repeats"), ("random_state", "seed"), ("holdout", "holdout")):
        if key in importance_settings:
            overrides[f"importance.{dotted}"] = importance_settings[key]
    try:
        return load_config(None, overrides)
    except InputError as e:
        raise InputError(f"run {run.run_id}'s params do not make a valid config: {e}") from e


def _write_dropped(path: Path, plan: DropPlan, importance: dict[str, float]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["feature", "reason", "importance_mean"])
        for name, reason in plan.dropped:
            writer.writerow([name, reason, importance[name]])
    return path


# ---------------------------------------------------------------------------------------------
# Retraining
# ---------------------------------------------------------------------------------------------


def _importance_of(tracking: Tracking, run: LoggedRun, tmp: Path) -> tuple[dict[str, float], dict[str, Any]]:
    csv_path = tracking.download_artifact(run.run_id, IMPORTANCE_CSV, tmp)
    if csv_path is None:
        skipped = run.tags.get(SKIPPED_TAG)
        if skipped:
            raise InputError(
                f"run {run.run_id} has no feature importance to retrain by: it was skipped ({skipped})"
            )
        raise InputError(
            f"run {run.run_id} has no {IMPORTANCE_CSV} artifact, so no feature importance to retrain by "
            "(not a trainer trial, or importance was disabled)"
        )
    scores = read_importance_csv(csv_path, run.run_id)
    settings: dict[str, Any] = {}
    json_path = tracking.download_artifact(run.run_id, PERMUTATION_JSON, tmp)
    if json_path is not None:
        try:
            document = json.loads(json_path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise InputError(f"{PERMUTATION_JSON} of run {run.run_id} is not valid JSON: {e}") from e
        settings = {k: document[k] for k in ("n_repeats", "random_state", "holdout") if k in document}
    return scores, settings


@contextlib.contextmanager
def _killed_on_sigterm(tracking: Tracking, run_id: str) -> Iterator[None]:
    """While the new run trains, SIGTERM ends it KILLED and exits at once (128 + 15).

    Raising KeyboardInterrupt from the signal instead could surface inside XGBoost's C++
    callbacks, which then fail the run or abort the process.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def end_killed(signum: int, frame: object) -> None:
        mark_ended(tracking, run_id, "KILLED")
        print(f"interrupted: run {run_id} ended KILLED", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, end_killed)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def retrain(
    run_id: str,
    *,
    drop_below: float | None,
    exclude: Sequence[str],
    tracking_uri: str | None = None,
    executor_factory: ExecutorFactory = local_executor,
) -> RetrainResult:
    """Train one new trial of run ``run_id``'s experiment without the dropped features."""
    check_request(drop_below, exclude)  # before any MLflow call
    quiet_mlflow()
    tracking = Tracking(tracking_uri)
    source = tracking.find_run(run_id)
    if source is None:
        raise InputError(f"run {run_id} not found at {tracking.uri}")
    hyperparameters = hyperparameters_of(source)
    with tempfile.TemporaryDirectory(prefix="podium-retrain-") as tmp_name:
        tmp = Path(tmp_name)
        scores, settings = _importance_of(tracking, source, tmp)
        config = config_of(source, settings)
        # a backend that can (Ray) starts its worker now, beside the data's reloading
        with ExecutorSession(executor_factory, 1, (init_worker.__module__,)) as session:
            try:
                inputs = prepare(config)
            except InputError as e:
                raise InputError(f"cannot reload the data of run {run_id}: {e}") from e
            dataset = inputs.dataset
            unknown = [name for name in scores if name not in set(dataset.feature_names)]
            if unknown:
                raise InputError(
                    f"the data of run {run_id} ({dataset.source}) no longer has its feature(s) "
                    f"{', '.join(repr(n) for n in unknown[:5])}"
                )
            features = [name for name in dataset.feature_names if name in scores]
            plan = plan_drop(features, scores, drop_below=drop_below, exclude=exclude, run_id=run_id)
            columns = [dataset.feature_names.index(name) for name in plan.kept]
            subset = dataclasses.replace(
                dataset, X=np.ascontiguousarray(dataset.X[:, columns]), feature_names=list(plan.kept)
            )
            params = static_params(config, dataclasses.replace(inputs, dataset=subset))
            params["dropped_features"] = ",".join(name for name, _ in plan.dropped)
            if drop_below is not None:
                params["drop_below"] = repr(drop_below)
            tags = {
                **tracking.context_tags(),
                RETRAINED_FROM_TAG: run_id,
                "data_mode": subset.mode,
            }
            run_name = f"{source.run_name or run_id[:8]}_retrained"
            new_run_id, artifact_uri = tracking.create_run(source.experiment_id, run_name, tags)
            print(f"new_run_id={new_run_id}", flush=True)  # machine-readable: the dashboard's jobs read it
            log.info(
                "retrain_started",
                source_run_id=run_id,
                run_id=new_run_id,
                features=len(plan.kept),
                dropped=len(plan.dropped),
            )
            try:
                with _killed_on_sigterm(tracking, new_run_id):
                    upload = tmp / "upload"
                    upload.mkdir()
                    _write_dropped(upload / DROPPED_CSV, plan, scores)
                    tracking.log_artifacts(artifact_uri, upload)
                    executor = session.start(
                        init_worker,
                        (
                            WorkerContext(
                                subset, config, tracking.uri, source.experiment_id, params, quiet=False
                            ),
                        ),
                        env={
                            "MLFLOW_TRACKING_URI": tracking.uri,
                            "PODIUM_EXPERIMENT_ID": source.experiment_id,
                        },
                    )
                    index = int(source.tags.get("trial_index", "0") or 0)
                    seed = int(source.params["trial_seed"])
                    try:
                        outcome = executor.submit(
                            execute, TrialTask(index, new_run_id, artifact_uri, hyperparameters, seed)
                        ).result()
                    finally:
                        session.shutdown()  # the trial ends before its run is marked below
            except BaseException as e:  # the trial itself marks its run; this is for what comes before it
                mark_ended(tracking, new_run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
                raise
    return RetrainResult(source, new_run_id, outcome.status, plan, outcome.metrics, outcome.error, config)
