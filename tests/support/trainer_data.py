"""Small data files for trainer tests in --target mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def write_linear_csv(path: Path, periods: int, freq: str, seed: int = 0) -> Path:
    """``periods`` rows ``freq`` apart from 2024-01-01: features x0..x3, target y = x0 + a little noise."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=periods, freq=freq)})
    for i in range(4):
        frame[f"x{i}"] = rng.normal(size=periods)
    frame["y"] = frame["x0"] + rng.normal(scale=0.1, size=periods)
    frame.to_csv(path, index=False)
    return path
