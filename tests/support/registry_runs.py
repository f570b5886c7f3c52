"""Trainer-like runs for the registry tests: a metric and an XGBoost model whose prediction
tells which run's model was loaded."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import numpy as np
import xgboost as xgb
from mlflow.models import infer_signature

X = np.random.default_rng(0).random((64, 3))
# Given, as the trainer gives its own: left to infer them, MLflow loads the model in a new Python
# process to see what it imports, several seconds per logged model.
REQUIREMENTS = [f"xgboost=={xgb.__version__}", "numpy"]


def log_run(
    experiment_id: str, value: float, *, scale: float | None = None, how: str = "logged_model"
) -> str:
    """A finished run like the trainer's: a metric and (unless how="none") an XGBoost model.

    The model predicts `scale * x0`, so a prediction tells which run's model was loaded.
    how="artifacts" logs the model as plain run artifacts, the way pre-3.0 clients did.
    """
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metric("avg_test_r2", value)
        if how != "none":
            model = xgb.XGBRegressor(n_estimators=8, max_depth=2, random_state=0)
            model.fit(X, X[:, 0] * (scale if scale is not None else value))
            signature = infer_signature(X, model.predict(X))
            if how == "logged_model":
                mlflow.xgboost.log_model(
                    model, name="model", signature=signature, pip_requirements=REQUIREMENTS
                )
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    mlflow.xgboost.save_model(
                        model, Path(tmp, "model"), signature=signature, pip_requirements=REQUIREMENTS
                    )
                    mlflow.log_artifacts(str(Path(tmp, "model")), "model")
    return run.info.run_id


def predict(uri: str) -> float:
    return float(mlflow.pyfunc.load_model(uri).predict(X[:1])[0])
