"""Which held-out rows a permuted column can change the prediction of, decided exactly.

A tree sends a row down one path; the row's prediction depends on a feature only through the
splits on that feature along its paths. So when column ``j`` is permuted, a row whose every
``j``-split (in every tree) sends the new value the same way as the old one keeps its leaves,
hence its prediction, bit for bit (XGBoost sums each row's leaves on its own). Only the other
rows need predicting.

The split conditions come from the booster's JSON (shortest float32 spellings, read back
exactly) and XGBoost's rule is applied as it does: missing (NaN) goes the default way, else
left when ``value < condition``. Before use, the rule is checked against the paths XGBoost
itself reports (``pred_leaf``) for every row and every split: any disagreement, or a model this
does not cover (not ``gbtree``, categorical splits, several targets), and ``build`` returns
None so the caller predicts every row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import xgboost as xgb

ROOT_PARENT = 2147483647  # XGBoost's "no parent" in the JSON model
# Above this many (row, split) pairs the bookkeeping would cost more memory than it saves.
MAX_PAIRS = 8_000_000
# Below this many rows predicting all of them is cheaper than reading the trees.
MIN_ROWS = 64


@dataclass(frozen=True)
class _FeatureSplits:
    """Every (row, split on this feature) pair met on the rows' paths."""

    rows: np.ndarray
    conditions: np.ndarray  # float32
    default_left: np.ndarray
    went_left: np.ndarray


class SplitPaths:
    def __init__(self, by_feature: dict[int, _FeatureSplits], n_rows: int) -> None:
        self._by_feature = by_feature
        self.n_rows = n_rows

    def changed(self, data: np.ndarray, perms: np.ndarray, column: int, repeats: np.ndarray) -> np.ndarray:
        """Rows whose path changes when ``column`` is permuted, one mask per repeat.

        ``data[perms[r], column]`` is the permuted column of repeat ``r``; the result has shape
        ``(len(repeats), n_rows)``.
        """
        mask = np.zeros((len(repeats), self.n_rows), dtype=bool)
        splits = self._by_feature.get(column)
        if splits is None:
            return mask
        values = data[perms[repeats][:, splits.rows], column]  # (repeats, pairs)
        goes_left = np.where(np.isnan(values), splits.default_left, values < splits.conditions)
        which, pair = np.nonzero(goes_left != splits.went_left)
        mask[which, splits.rows[pair]] = True
        return mask


def parse_float32(spelling: str) -> np.float32:
    """The float32 nearest to a decimal spelling (ties to even), without double rounding."""
    value = np.float32(float(spelling))
    exact = Fraction(spelling)
    best = value
    for neighbour in (np.nextafter(value, np.float32(-np.inf)), np.nextafter(value, np.float32(np.inf))):
        if not np.isfinite(neighbour):
            continue
        gap, best_gap = abs(Fraction(float(neighbour)) - exact), abs(Fraction(float(best)) - exact)
        if gap < best_gap or (gap == best_gap and int(neighbour.view(np.uint32)) % 2 == 0):
            best = neighbour
    return np.float32(best)


def parse_conditions(spellings: list[str]) -> np.ndarray:
    values = np.array([float(s) for s in spellings], dtype=np.float64)
    rounded = values.astype(np.float32)
    # Only a decimal that lands exactly between two float32 values after the (double) parse can
    # round the wrong way; settle those few exactly.
    widened = rounded.astype(np.float64)
    up = np.nextafter(rounded, np.float32(np.inf)).astype(np.float64)
    down = np.nextafter(rounded, np.float32(-np.inf)).astype(np.float64)
    ties = (values == (widened + up) / 2) | (values == (widened + down) / 2)
    for index in np.flatnonzero(ties):
        rounded[index] = parse_float32(spellings[index])
    return rounded


def build(booster: xgb.Booster, data: np.ndarray) -> SplitPaths | None:
    """The split paths of ``data``'s rows through ``booster``, or None if not exactly known."""
    if data.shape[0] < MIN_ROWS:
        return None
    model = json.loads(bytes(booster.save_raw("json")), parse_float=str)
    learner = model["learner"]
    if learner["gradient_booster"].get("name") != "gbtree":
        return None
    params = learner["learner_model_param"]
    if params.get("num_target", "1") != "1" or params.get("num_class", "0") not in ("0", "1"):
        return None
    trees = learner["gradient_booster"]["model"]["trees"]
    n_rows = data.shape[0]
    if not trees or n_rows * sum(len(t["left_children"]) for t in trees) > MAX_PAIRS * 4:
        return None
    if any(any(kind != 0 for kind in t["split_type"]) for t in trees):
        return None
    leaves = booster.predict(xgb.DMatrix(data), pred_leaf=True, validate_features=False)
    leaves = np.asarray(leaves, dtype=np.int64).reshape(n_rows, -1)
    if leaves.shape[1] != len(trees):
        return None

    sizes = np.array([len(t["left_children"]) for t in trees])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    left = np.concatenate([np.asarray(t["left_children"], dtype=np.int64) for t in trees])
    parent = np.concatenate([np.asarray(t["parents"], dtype=np.int64) for t in trees])
    tree_of = np.repeat(np.arange(len(trees)), sizes)
    is_root = parent == ROOT_PARENT
    left = np.where(left >= 0, left + offsets[tree_of], -1)
    parent = np.where(is_root, -1, parent + offsets[tree_of])
    feature = np.concatenate([np.asarray(t["split_indices"], dtype=np.int64) for t in trees])
    condition = parse_conditions([s for t in trees for s in t["split_conditions"]])
    default_left = np.concatenate([np.asarray(t["default_left"], dtype=bool) for t in trees])

    # Walk every (row, tree) path from its leaf up to the root, one level per step.
    node = (leaves + offsets[np.newaxis, :]).ravel()
    row = np.repeat(np.arange(n_rows), len(trees))
    rows, splits, lefts = [], [], []
    total = 0
    while len(node):
        up = parent[node]
        keep = up >= 0
        node, row, up = node[keep], row[keep], up[keep]
        rows.append(row)
        splits.append(up)
        lefts.append(left[up] == node)
        total += len(up)
        if total > MAX_PAIRS:
            return None
        node = up
    pair_rows = np.concatenate(rows)
    pair_splits = np.concatenate(splits)
    pair_left = np.concatenate(lefts)
    if len(pair_splits) == 0:  # only single-leaf trees: no row depends on any feature
        return SplitPaths({}, n_rows)

    # XGBoost's own paths must follow from our reading of its splits, or we do not use it.
    values = data[pair_rows, feature[pair_splits]]
    ours = np.where(np.isnan(values), default_left[pair_splits], values < condition[pair_splits])
    if not np.array_equal(ours, pair_left):
        return None

    pair_features = feature[pair_splits]
    if pair_features.max() < np.iinfo(np.uint16).max:
        pair_features = pair_features.astype(np.uint16)  # a stable sort of 16-bit keys is a radix sort
    order = np.argsort(pair_features, kind="stable")
    sorted_features = pair_features[order].astype(np.int64)
    by_feature: dict[int, _FeatureSplits] = {}
    for j in np.unique(sorted_features):
        lo, hi = np.searchsorted(sorted_features, [j, j + 1])
        sel = order[lo:hi]
        by_feature[int(j)] = _FeatureSplits(
            rows=pair_rows[sel],
            conditions=condition[pair_splits[sel]],
            default_left=default_left[pair_splits[sel]],
            went_left=pair_left[sel],
        )
    return SplitPaths(by_feature, n_rows)
