"""What a trial logs of its importance: one record per feature, the metrics and params, and
the five artifact files (JSON, two CSVs, two bar charts). :mod:`trainer.importance` computes
the numbers."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from trainer import keys, plots

TOP_METRICS = 20
FEATURE_NAMES_PARAM_COUNT = 50

Holdout = Literal["latest", "pooled"]
Scoring = Literal["r2", "roc_auc"]
SCORING_LABELS: dict[str, str] = {"r2": "R²", "roc_auc": "ROC AUC"}

PERMUTATION_JSON = "permutation_importance.json"
IMPORTANCE_CSV = "feature_importance.csv"
IMPORTANCE_PNG = "feature_importance.png"
SHAP_CSV = "shap_importance.csv"
SHAP_PNG = "shap_importance.png"
IMPORTANCE_CSV_COLUMNS = ("rank", "feature", "importance_mean", "importance_std", "shap_importance")


@dataclass(frozen=True)
class FeatureImportance:
    rank: int
    feature: str  # the original name, as in the data
    metric_key: str  # its MLflow metric key (logged only for the top 20)
    importance_mean: float
    importance_std: float
    shap_importance: float
    importances: tuple[float, ...]  # every repeat's decrease in the score (R² or ROC AUC)


@dataclass(frozen=True, eq=False)
class ImportanceReport:
    """Importance of every feature of one model, and how it is shown in MLflow."""

    feature_names: tuple[str, ...]
    importances: np.ndarray  # raw decrease in the score, (n_features, n_repeats * n_evaluated_models)
    shap: np.ndarray  # mean |SHAP| per feature
    baseline_scores: tuple[float, ...]  # the score of each evaluated model on its rows, unpermuted
    n_rows: int
    n_repeats: int
    seed: int
    holdout: Holdout = "latest"
    scoring: Scoring = "r2"
    metric_names: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metric_names", keys.metric_names(self.feature_names))

    @property
    def importances_mean(self) -> np.ndarray:
        return np.asarray(self.importances.mean(axis=1))

    @property
    def importances_std(self) -> np.ndarray:
        return np.asarray(self.importances.std(axis=1))

    def order(self) -> np.ndarray:
        """Feature indices, most important first; ties by SHAP, then by column order."""
        index = np.arange(len(self.feature_names))
        return np.lexsort((index, -self.shap, -self.importances_mean))

    def shap_order(self) -> np.ndarray:
        index = np.arange(len(self.feature_names))
        return np.lexsort((index, -self.importances_mean, -self.shap))

    def params(self) -> dict[str, str]:
        return feature_params(self.feature_names)

    def metrics(self) -> dict[str, float]:
        means = self.importances_mean
        result = {
            keys.metric_key(self.metric_names[self.feature_names[i]]): float(means[i])
            for i in self.order()[:TOP_METRICS]
        }
        result.update(
            {
                "importance_max": float(means.max()),
                "importance_mean": float(means.mean()),
                "importance_median": float(np.median(means)),
                "importance_min": float(means.min()),
            }
        )
        return result

    def rows(self) -> list[FeatureImportance]:
        """One record per feature, ranked; the original feature names."""
        means, stds = self.importances_mean, self.importances_std
        return [
            FeatureImportance(
                rank=rank,
                feature=self.feature_names[i],
                metric_key=keys.metric_key(self.metric_names[self.feature_names[i]]),
                importance_mean=float(means[i]),
                importance_std=float(stds[i]),
                shap_importance=float(self.shap[i]),
                importances=tuple(float(v) for v in self.importances[i]),
            )
            for rank, i in enumerate(self.order(), start=1)
        ]

    def write_artifacts(self, directory: Path) -> list[Path]:
        """Write the five artifact files into ``directory``; returns their paths."""
        return self.write_tables(directory) + self.write_charts(directory)

    def write_tables(self, directory: Path) -> list[Path]:
        """The JSON and the two CSV files."""
        directory.mkdir(parents=True, exist_ok=True)
        rows = self.rows()
        return [
            self._write_json(directory / PERMUTATION_JSON, rows),
            self._write_importance_csv(directory / IMPORTANCE_CSV, rows),
            self._write_shap_csv(directory / SHAP_CSV),
        ]

    def write_charts(self, directory: Path) -> list[Path]:
        """The two bar charts of the top 20 (PNG)."""
        directory.mkdir(parents=True, exist_ok=True)
        names, total, rows = self.feature_names, len(self.feature_names), self._rows_label()
        top, shap_top = self.order()[:TOP_METRICS], self.shap_order()[:TOP_METRICS]
        return [
            plots.importance_bars(
                directory / IMPORTANCE_PNG,
                labels=[names[i] for i in top],
                values=self.importances_mean[top].tolist(),
                errors=self.importances_std[top].tolist(),
                title=f"Permutation importance, top {len(top)} of {total} features",
                xlabel=f"mean decrease in {SCORING_LABELS[self.scoring]} ({self.n_repeats} repeats, {rows})",
            ),
            plots.importance_bars(
                directory / SHAP_PNG,
                labels=[names[i] for i in shap_top],
                values=self.shap[shap_top].tolist(),
                errors=None,
                title=f"SHAP importance, top {len(shap_top)} of {total} features",
                xlabel=f"mean |SHAP value| ({rows})",
            ),
        ]

    def _rows_label(self) -> str:
        where = "latest test window" if self.holdout == "latest" else "each fold's test window"
        return f"{self.n_rows} held-out rows, {where}"

    def _write_json(self, path: Path, rows: list[FeatureImportance]) -> Path:
        document = {
            "scoring": self.scoring,
            "n_repeats": self.n_repeats,
            "random_state": self.seed,
            "holdout": self.holdout,
            "n_rows": self.n_rows,
            "baseline_scores": list(self.baseline_scores),
            "total_features": len(self.feature_names),
            "features": [asdict(row) for row in rows],
        }
        path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @staticmethod
    def _write_importance_csv(path: Path, rows: list[FeatureImportance]) -> Path:
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=IMPORTANCE_CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(asdict(row) for row in rows)
        return path

    def _write_shap_csv(self, path: Path) -> Path:
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["rank", "feature", "shap_importance"])
            for rank, i in enumerate(self.shap_order(), start=1):
                writer.writerow([rank, self.feature_names[i], float(self.shap[i])])
        return path


def feature_params(feature_names: Sequence[str]) -> dict[str, str]:
    """``feature_names`` (the first 50, comma-separated, in column order) and ``total_features``."""
    listed = ""
    for name in feature_names[:FEATURE_NAMES_PARAM_COUNT]:
        candidate = f"{listed},{name}" if listed else name
        if len(candidate) > keys.MAX_PARAM_LENGTH:
            break
        listed = candidate
    return {"feature_names": listed, "total_features": str(len(feature_names))}
