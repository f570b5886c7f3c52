"""CSCV as Bailey, Borwein, López de Prado & Zhu state it, one split at a time: the reference
the watcher's vectorized code (watcher/selection.py) is checked against. Shares no code with it."""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.stats import rankdata


def straightforward_cscv(values: np.ndarray, blocks: int, higher_is_better: bool) -> list[float]:
    """λ per split; ``values`` is (runs x folds) in board order (ties in sample: the earlier run)."""
    runs, folds = values.shape
    score = values if higher_is_better else -values
    parts = np.array_split(np.arange(folds), blocks)
    lambdas = []
    for chosen in itertools.combinations(range(blocks), blocks // 2):
        inside = np.concatenate([parts[b] for b in chosen])
        outside = np.concatenate([parts[b] for b in range(blocks) if b not in chosen])
        in_means = [np.mean(score[r, inside]) for r in range(runs)]
        best = max(range(runs), key=lambda r: (in_means[r], -r))
        out_ranks = rankdata([np.mean(score[r, outside]) for r in range(runs)], method="average")
        omega = out_ranks[best] / (runs + 1)
        lambdas.append(math.log(omega / (1 - omega)))
    return lambdas


def pbo(values: np.ndarray, blocks: int, higher_is_better: bool = True) -> float:
    return float(np.mean(np.array(straightforward_cscv(values, blocks, higher_is_better)) <= 0))
