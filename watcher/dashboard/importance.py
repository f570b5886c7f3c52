"""Feature importance for the dashboard (pure): a run's ``feature_importance.csv``, the features
across an experiment's leaders, and the checks of a retrain request."""

from __future__ import annotations

import collections
import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from watcher.dashboard.board import finite, short
from watcher.dashboard.models import FeatureRow, RetrainRequest

IMPORTANCE_CSV = "feature_importance.csv"


def read_importance(path: Path) -> list[FeatureRow]:
    """Rows of a ``feature_importance.csv`` in its rank order; ValueError on a malformed file."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"feature", "importance_mean"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{IMPORTANCE_CSV} has no feature and importance_mean columns")
        rows = []
        for i, row in enumerate(reader, start=1):
            rows.append(
                FeatureRow(
                    rank=parse_int(row.get("rank")) or i,
                    feature=row["feature"],
                    importance_mean=_float(row.get("importance_mean")),
                    importance_std=_float(row.get("importance_std")),
                    shap_importance=_float(row.get("shap_importance")),
                )
            )
    return sorted(rows, key=lambda r: r.rank)


def _float(text: str | None) -> float | None:
    try:
        return finite(float(text)) if text not in (None, "") else None
    except ValueError:
        return None


def parse_int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def across_leaders(per_run: Sequence[Sequence[FeatureRow]]) -> list[dict[str, Any]]:
    """Features ranked by mean permutation importance over the given runs (those that have them).

    ``mean_rank`` is the mean of the feature's rank in each run; ``runs`` how many runs have it.
    """
    sums: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
    for rows in per_run:
        for row in rows:
            acc = sums[row.feature]
            acc[0] += row.importance_mean or 0.0
            acc[1] += row.rank
            acc[2] += 1
    order = sorted(sums, key=lambda n: (-sums[n][0] / sums[n][2], sums[n][1] / sums[n][2], n))
    return [
        {
            "feature": name,
            "mean_importance": sums[name][0] / sums[name][2],
            "mean_rank": sums[name][1] / sums[name][2],
            "runs": int(sums[name][2]),
        }
        for name in order
    ]


def check_retrain(
    request: RetrainRequest, rows: Sequence[FeatureRow]
) -> tuple[list[str] | None, float | None]:
    """What to pass to ``trainer retrain``; ValueError (HTTP 400) saying what is wrong."""
    if (request.exclude is None) == (request.drop_below is None):
        raise ValueError("give exactly one of exclude (a list of features) and drop_below (a number)")
    features = [r.feature for r in rows]
    if request.exclude is not None:
        if not request.exclude:
            raise ValueError("exclude: name at least one feature to drop")
        known = set(features)
        unknown = [name for name in request.exclude if name not in known]
        if unknown:
            raise ValueError(f"exclude: run {request.run_id} has no feature {short(unknown[0])!r}")
        if set(request.exclude) >= known:
            raise ValueError(f"exclude: dropping all {len(known)} features leaves nothing to train on")
        awkward = [name for name in request.exclude if "," in name or name != name.strip()]
        if awkward:
            raise ValueError(
                f"exclude: feature {short(awkward[0])!r} cannot be passed to the trainer's --exclude "
                "(a comma or surrounding spaces); use drop_below instead"
            )
        return list(dict.fromkeys(request.exclude)), None
    threshold = request.drop_below
    assert threshold is not None
    if not math.isfinite(threshold):
        raise ValueError(f"drop_below must be a finite number, not {threshold}")
    below = [r for r in rows if r.importance_mean is not None and r.importance_mean < threshold]
    if not below:
        raise ValueError(f"drop_below: no feature of run {request.run_id} has importance below {threshold:g}")
    if len(below) >= len(rows):
        raise ValueError(
            f"drop_below: every feature of run {request.run_id} is below {threshold:g}; nothing left to train on"
        )
    return None, threshold
