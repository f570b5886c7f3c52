"""Small data files for trainer tests in --target mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# A small, fast sweep: three 6-month folds on the sample, shallow short trees, one permutation repeat.
SMALL_SWEEP: dict[str, Any] = {
    "trials": 2,
    "jobs": 1,
    "walk_forward": {"train_months": 6, "test_months": 6},
    "importance": {"n_repeats": 1},
    "search_space": {
        "n_estimators": {"type": "int", "low": 40, "high": 60},
        "max_depth": {"type": "int", "low": 3, "high": 4},
        "learning_rate": {"type": "float", "low": 0.08, "high": 0.15},
    },
}


def write_linear_csv(path: Path, periods: int, freq: str, seed: int = 0) -> Path:
    """``periods`` rows ``freq`` apart from 2024-01-01: features x0..x3, target y = x0 + a little noise."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=periods, freq=freq)})
    for i in range(4):
        frame[f"x{i}"] = rng.normal(size=periods)
    frame["y"] = frame["x0"] + rng.normal(scale=0.1, size=periods)
    frame.to_csv(path, index=False)
    return path
