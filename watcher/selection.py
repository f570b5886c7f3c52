"""Honest selection: is the leader of a board real, or the luckiest of many noisy runs?

Pure code (numpy and arch; no I/O, no MLflow, no clock). The input is the board in rank order
with each run's per-fold values of one metric; the output is a :class:`Selection`:

- **PBO**, the probability of backtest overfitting by combinatorially symmetric cross-validation
  (Bailey, Borwein, López de Prado & Zhu, 2017). The T folds, in time order, are cut into S
  contiguous blocks (sizes as ``numpy.array_split``). For each of the C(S, S/2) choices of half
  the blocks, the run with the best mean over the chosen folds (ties: board order) is ranked
  among all N runs by its mean over the other folds (average ranks for ties, rank N the best);
  ω = rank/(N+1), λ = ln(ω/(1−ω)), and PBO is the share of choices with λ ≤ 0.
- **Tied with the leader**: the model confidence set (Hansen, Lunde & Nason, 2011) at ``alpha``
  over the per-fold losses (the negated value where higher is better), computed by
  ``arch.bootstrap.MCS`` with its default T_R statistic (the largest standardized difference
  between two runs) and a fixed seed.

Runs whose number of folds differs from the board's most common one, or with a missing value
in a fold the other runs have, are left out and counted with the reason.
"""

from __future__ import annotations

import itertools
import json
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from watcher import sharpe
from watcher.model import SelectionRule, SelectionSummary

DEFAULT_BLOCKS = 8
DEFAULT_ALPHA = 0.10
# The bootstrap behind the confidence set: the same seed and number of draws on every pass, so
# the same board gives the same set.
MCS_SEED = 20110301
MCS_REPS = 1000
# The confidence set is computed over at most this many runs, the best by mean. T_R compares
# runs in pairs, so the procedure over the candidates is the procedure over the whole board once
# the runs outside them are eliminated, and it eliminates the clearly worse runs first (the
# bootstrap draws depend only on the number of folds). When every candidate stays in the set, the
# board is too noisy to tell, and the result says "at least" that many. The cost grows with the
# cube of the runs covered (T_R keeps every pair's bootstrap: ~0.3 s at 50 runs, ~2 s at 100).
# T_max is linear but has little power when one run is far ahead of many equal ones (it
# standardizes each run against the set's average, which the many equal runs hold).
MCS_CANDIDATES = 50
# C(20, 10) = 184,756 splits; beyond that the splits outgrow what a pass should spend.
MAX_BLOCKS = 20
# Splits whose ranks are computed in one numpy step: bounds memory to ~chunk x runs floats.
_SPLIT_CHUNK = 512


@dataclass(frozen=True)
class BoardRun:
    """One ranked run in board order, with its per-fold values (None: the run has none)."""

    run_id: str
    folds: Sequence[float | None] | None
    # The Deflated Sharpe Ratio's inputs (a rule with a sharpe_metric; None: the run has none).
    sharpe: sharpe.SharpeRun | None = None


@dataclass(frozen=True)
class LeftOut:
    run_id: str
    reason: str


@dataclass(frozen=True)
class Selection:
    """What the data says about a board's leader; see the module doc for the definitions."""

    folds: int
    runs: int
    blocks: int
    alpha: float
    splits: int = 0
    pbo: float | None = None
    # λ per split, in the order of itertools.combinations(range(blocks), blocks // 2).
    lambdas: tuple[float, ...] = ()
    # The runs of the leader's confidence set, in board order (empty when not computed).
    tied: tuple[str, ...] = ()
    # How many runs the confidence set was computed over (the best by mean, MCS_CANDIDATES).
    candidates: int = 0
    left_out: tuple[LeftOut, ...] = ()
    # Why there is no PBO / no confidence set (None when there is one).
    reason: str | None = None
    tied_reason: str | None = None
    # Folds every run left undefined (e.g. R² of a constant test window), not counted in `folds`.
    folds_dropped: int = 0
    # The leader's Deflated Sharpe Ratio (a rule with a sharpe_metric).
    deflated: sharpe.Deflated | None = None

    @property
    def tied_capped(self) -> bool:
        """Every candidate stayed in the set: the set holds at least this many runs."""
        return bool(self.tied) and len(self.tied) >= self.candidates and self.candidates < self.runs


def blocks_problem(blocks: int) -> str | None:
    """What is wrong with a number of blocks, or None (the settings and compute check it)."""
    return (
        None
        if 2 <= blocks <= MAX_BLOCKS and blocks % 2 == 0
        else f"must be an even number from 2 to {MAX_BLOCKS}"
    )


def alpha_problem(alpha: float) -> str | None:
    return None if 0 < alpha < 1 else "must be between 0 and 1, both excluded"


def max_pbo_problem(max_pbo: float | None) -> str | None:
    return None if max_pbo is None or 0 <= max_pbo <= 1 else "must be between 0 and 1"


def compute(
    board: Sequence[BoardRun],
    *,
    higher_is_better: bool,
    blocks: int = DEFAULT_BLOCKS,
    alpha: float = DEFAULT_ALPHA,
    sharpe_metric: str | None = None,
) -> Selection:
    """PBO and the leader's confidence set over the board's runs (board order, best first), and
    with a ``sharpe_metric`` the leader's Deflated Sharpe Ratio (``watcher.sharpe``)."""
    for name, problem in (("blocks", blocks_problem(blocks)), ("alpha", alpha_problem(alpha))):
        if problem:
            raise ValueError(f"{name} {problem} (got {blocks if name == 'blocks' else alpha})")
    run_ids, values, left_out, dropped = _matrix(board)
    n_runs, n_folds = values.shape
    base = Selection(
        folds=n_folds,
        runs=n_runs,
        blocks=blocks,
        alpha=alpha,
        left_out=tuple(left_out),
        folds_dropped=dropped,
        deflated=None if sharpe_metric is None else sharpe.deflated([r.sharpe for r in board], sharpe_metric),
    )
    if n_runs < 2:
        why = f"{n_runs} ranked run(s) with values for the same folds (at least 2 are needed)"
        return replace(base, reason=why, tied_reason=why)
    scores = values if higher_is_better else -values
    pbo_part: dict[str, Any]
    if n_folds < blocks:
        pbo_part = {"reason": f"{n_folds} folds, fewer than the {blocks} blocks (needs at least {blocks})"}
    else:
        lambdas = cscv_lambdas(scores, blocks)
        pbo_part = {
            "splits": len(lambdas),
            "pbo": float(np.mean(lambdas <= 0)),
            "lambdas": tuple(float(x) for x in lambdas),
        }
    if n_folds < 2:
        tied_part: dict[str, Any] = {"tied_reason": "1 fold (at least 2 are needed)"}
    else:
        tied_part = _confidence_set(run_ids, -scores, alpha)
    return replace(base, **pbo_part, **tied_part)


def _matrix(board: Sequence[BoardRun]) -> tuple[list[str], np.ndarray, list[LeftOut], int]:
    """The (runs x folds) values of the runs that share the board's most common fold count."""
    left_out: list[LeftOut] = []
    rows: list[tuple[str, np.ndarray]] = []
    for run in board:
        if not run.folds:
            left_out.append(LeftOut(run.run_id, "no per-fold values"))
            continue
        rows.append((run.run_id, np.asarray(run.folds, dtype=float)))  # None is NaN
    if not rows:
        return [], np.zeros((0, 0)), left_out, 0
    # Counter keeps first-seen order among equal counts: a tie goes to the count seen first in
    # board order (the leader's side).
    n_folds = Counter(len(v) for _, v in rows).most_common(1)[0][0]
    kept = [(rid, v) for rid, v in rows if len(v) == n_folds]
    left_out += [LeftOut(rid, f"{len(v)} folds, not {n_folds}") for rid, v in rows if len(v) != n_folds]
    matrix = np.array([v for _, v in kept], dtype=float).reshape(len(kept), n_folds)
    # Folds no run has a value for (R² of a constant test window) say nothing about anyone.
    defined = ~np.all(~np.isfinite(matrix), axis=0)
    matrix = matrix[:, defined]
    complete = np.all(np.isfinite(matrix), axis=1)
    for (rid, _), ok, row in zip(kept, complete, matrix, strict=True):
        if not ok:
            fold = int(np.flatnonzero(~np.isfinite(row))[0])
            left_out.append(LeftOut(rid, f"no finite value for fold {fold}"))
    run_ids = [rid for (rid, _), ok in zip(kept, complete, strict=True) if ok]
    return run_ids, matrix[complete], left_out, int((~defined).sum())


def block_bounds(n_folds: int, blocks: int) -> list[tuple[int, int]]:
    """[start, stop) of each contiguous block of folds, sized as numpy.array_split sizes them."""
    sizes = [len(part) for part in np.array_split(np.arange(n_folds), blocks)]
    stops = list(itertools.accumulate(sizes))
    return [(stop - size, stop) for size, stop in zip(sizes, stops, strict=True)]


def cscv_lambdas(scores: np.ndarray, blocks: int) -> np.ndarray:
    """λ for every choice of half the blocks; ``scores`` is (runs x folds), higher is better.

    Within one choice every run's mean has the same number of folds, so runs are compared by
    their sums. A choice is a subset of the first half of the blocks joined with a subset of the
    second half, so its sum is one precomputed sum from each half: two reads per run and choice
    instead of one per block (the same for the other half of the blocks). Sums are added in the same order for every run, so identical runs
    get identical sums and tie exactly.
    """
    n_runs, n_folds = scores.shape
    bounds = block_bounds(n_folds, blocks)
    block_sums = np.stack([scores[:, a:b].sum(axis=1) for a, b in bounds])  # (blocks, runs)
    half = blocks // 2
    low_sums, high_sums = _subset_sums(block_sums[:half]), _subset_sums(block_sums[half:])
    chosen = list(itertools.combinations(range(blocks), half))
    low_masks = np.array([sum(1 << b for b in c if b < half) for c in chosen], dtype=np.intp)
    high_masks = np.array([sum(1 << (b - half) for b in c if b >= half) for c in chosen], dtype=np.intp)
    low_full, high_full = (1 << half) - 1, (1 << (blocks - half)) - 1
    lambdas = np.empty(len(chosen))
    for start in range(0, len(chosen), _SPLIT_CHUNK):
        stop = start + _SPLIT_CHUNK
        low, high = low_masks[start:stop], high_masks[start:stop]
        in_sum = low_sums[low] + high_sums[high]  # (splits, runs)
        # Not total - in_sum: that cancels, and runs whose other folds are equal would not tie.
        out_sum = low_sums[low ^ low_full] + high_sums[high ^ high_full]
        best = np.argmax(in_sum, axis=1)  # the first of equal maxima: board order
        its_out = out_sum[np.arange(len(best)), best][:, None]
        below = np.count_nonzero(out_sum < its_out, axis=1)
        below_or_equal = np.count_nonzero(out_sum <= its_out, axis=1)
        rank = (below + below_or_equal + 1) / 2  # the average of the ranks equal runs share
        omega = rank / (n_runs + 1)
        lambdas[start:stop] = np.log(omega / (1 - omega))
    return lambdas


def _subset_sums(block_sums: np.ndarray) -> np.ndarray:
    """Row m is the sum of the blocks whose bits are set in m (blocks added in index order)."""
    sums = np.zeros((1 << len(block_sums), block_sums.shape[1]))
    for mask in range(1, len(sums)):
        top = mask.bit_length() - 1
        sums[mask] = sums[mask ^ (1 << top)] + block_sums[top]
    return sums


def _confidence_set(run_ids: list[str], losses: np.ndarray, alpha: float) -> dict[str, Any]:
    """The model confidence set over the best ``MCS_CANDIDATES`` runs by mean loss.

    ``losses`` is (runs x folds), lower is better. Two cases the procedure cannot handle (its
    loss-difference variances would be zero: arch warns, and can loop forever) are settled
    before it runs, as the data settles them:
    - runs with identical losses in every fold are one model: all in the set, or none;
    - a run whose losses are another's plus the same amount in every fold is worse in every
      fold, without noise: it is out of the set, and only the better one goes in.
    """
    mean_loss = losses.mean(axis=1)
    # Stable: among equal means the earlier run in board order is the better candidate.
    candidates = np.argsort(mean_loss, kind="stable")[:MCS_CANDIDATES]
    distinct, model_of = np.unique(losses[candidates], axis=0, return_inverse=True)
    model_of = np.asarray(model_of).reshape(-1)
    distinct_mean = distinct.mean(axis=1)
    _, shape_of = np.unique(distinct - distinct_mean[:, None], axis=0, return_inverse=True)
    shape_of = np.asarray(shape_of).reshape(-1)
    # Of models with the same shape (shifted copies of one another), the lowest mean loss.
    best_of_shape: dict[int, int] = {}
    for model in np.argsort(distinct_mean, kind="stable").tolist():
        best_of_shape.setdefault(int(shape_of[model]), model)
    models = sorted(best_of_shape.values())
    # Imported here: arch brings pandas and scipy, which a watcher without a selection rule
    # (and the config check) never needs.
    from arch.bootstrap import MCS

    if len(models) == 1:
        kept = set(models)
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)
                mcs = MCS(distinct[models].T, size=alpha, reps=MCS_REPS, method="R", seed=MCS_SEED)
                mcs.compute()
                kept = {models[i] for i in _in_set(mcs.pvalues["Pvalue"], alpha)}
        except RuntimeWarning:
            # Left: a run equal to a mix of others plus a constant, which the set cannot rank.
            return {
                "candidates": len(candidates),
                "tied_reason": "the confidence set is not defined for this board (a loss difference "
                "between runs has no variance)",
            }
    in_set = sorted(int(candidates[i]) for i, model in enumerate(model_of.tolist()) if model in kept)
    return {"candidates": len(candidates), "tied": tuple(run_ids[i] for i in in_set)}


def _in_set(pvalues: Any, alpha: float) -> set[int]:
    """The models whose MCS p-value is above alpha, read from arch's p-value table.

    When several pairs share the largest statistic (runs with equal mean losses), arch
    eliminates them in one step and indexes that row by an array of models, which its own
    ``included`` cannot sort; every model in such a row has the row's p-value.
    """
    return {int(m) for model, p in pvalues.items() if p > alpha for m in np.atleast_1d(model)}


def selection_json(
    selection: Selection, *, metric: str, fold_metric: str, computed_at: str
) -> dict[str, Any]:
    """The ``podium.selection`` experiment tag: small whatever the board's size (no λ, no ids)."""
    reasons = Counter(left.reason for left in selection.left_out)
    return {
        "metric": metric,
        "fold_metric": fold_metric,
        "folds": selection.folds,
        "runs": selection.runs,
        "runs_left_out": len(selection.left_out),
        "left_out_reasons": dict(reasons.most_common(5)),
        "blocks": selection.blocks,
        "splits": selection.splits,
        "pbo": None if selection.pbo is None else round(selection.pbo, 4),
        "tied_with_leader": len(selection.tied) if selection.tied else None,
        "tied_at_least": selection.tied_capped,
        "alpha": selection.alpha,
        "reason": selection.reason,
        "tied_reason": selection.tied_reason,
        **({} if selection.deflated is None else selection.deflated.fields()),
        "computed_at": computed_at,
    }


def plain_line(selection: Selection, leader: str | None = None) -> str:
    """One sentence a trader reads in a chat line: what PBO and the tied set say about the leader."""
    if selection.pbo is None:
        first = f"No PBO: {selection.reason}"
    else:
        pbo = selection.pbo
        if pbo > 0.5:
            what = "the leader is more likely than not below the median out of sample"
        elif pbo == 0:
            what = "picking the best in sample never landed below the median out of sample"
        else:
            what = (
                f"picking the best in sample landed below the median out of sample in {pbo:.0%} of the splits"
            )
        first = f"PBO {pbo:.2f}: {what}"
    dsr = sharpe.phrase(selection.deflated)
    return f"{first}; {dsr + '; ' if dsr else ''}{tied_phrase(selection, leader)}"


def tied_phrase(selection: Selection, leader: str | None = None) -> str:
    if not selection.tied:
        return f"no confidence set ({selection.tied_reason})"
    others = sum(1 for run_id in selection.tied if run_id != leader) if leader else len(selection.tied) - 1
    at_least = "at least " if selection.tied_capped else ""
    if others == 0:
        return "no other run is tied with it"
    runs = "run cannot" if others == 1 and not at_least else "runs cannot"
    return f"{at_least}{others} {runs} be told apart from it"


FOLDS_TAG = "podium.folds"
SELECTION_TAG = "podium.selection"


def folds_from_tag(tags: Mapping[str, str], fold_metric: str) -> list[float | None] | None:
    """The run's per-fold values of ``fold_metric`` from its ``podium.folds`` tag, or None.

    The tag is compact JSON, ``{"test_r2": [0.01, null, ...], ...}`` in fold order; a tag that
    does not parse, or has no list of numbers for the metric, counts as no tag (the caller
    falls back to the metric's history).
    """
    text = tags.get(FOLDS_TAG)
    if not text:
        return None
    try:
        values = json.loads(text).get(fold_metric)
    except (ValueError, AttributeError):
        return None
    if not isinstance(values, list) or not all(
        v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in values
    ):
        return None
    return [None if v is None else float(v) for v in values]


def gate_reason(
    selection: Selection | None, max_pbo: float | None, min_dsr: float | None = None
) -> str | None:
    """Why production tags and the registry alias are held back (PBO above ``max_pbo``, DSR
    below ``min_dsr``, or either not computable), or None when they may move."""
    if selection is None:
        return _both(_gate(None, None, max_pbo), sharpe.gate(None, None, min_dsr))
    deflated = selection.deflated
    return _both(
        _gate(selection.pbo, selection.reason, max_pbo),
        sharpe.gate(deflated.dsr if deflated else None, deflated.reason if deflated else None, min_dsr),
    )


def _both(pbo: str | None, dsr: str | None) -> str | None:
    return "; ".join(r for r in (pbo, dsr) if r) or None


def _gate(pbo: float | None, why: str | None, max_pbo: float | None) -> str | None:
    if max_pbo is None:
        return None
    if pbo is None:
        return f"no PBO to check against max_pbo {max_pbo:g} ({why or 'no per-fold values were read'})"
    return f"PBO {pbo:.2f} is above max_pbo {max_pbo:g}" if pbo > max_pbo else None


def details(selection: Selection) -> dict[str, Any]:
    """What the API adds to the tag's JSON."""
    return {
        "lambdas": list(selection.lambdas),
        "tied_run_ids": list(selection.tied),
        "left_out": [{"run_id": left.run_id, "reason": left.reason} for left in selection.left_out],
        "candidates": selection.candidates,
        "folds_dropped": selection.folds_dropped,
        "line": plain_line(selection, selection.tied[0] if selection.tied else None),
    }


def stored(tag: str | None) -> dict[str, Any] | None:
    """The ``podium.selection`` tag as written by :func:`selection_json`, or None."""
    if not tag:
        return None
    try:
        data = json.loads(tag)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def unlogged_sharpe_metric(tag: str | None, sharpe_metric: str) -> bool:
    """True when an experiment's ``podium.selection`` was computed for ``sharpe_metric`` and
    no ranked run had it: most often a metric name the runs do not log (a typo in the rule)."""
    data = stored(tag)
    return data is not None and data.get("sharpe_metric") == sharpe_metric and data.get("trials") == 0


def same_settings(stored: Mapping[str, Any], metric: str, config: SelectionRule) -> bool:
    """The stored statistics were computed the way the rule asks now."""
    keys = (stored.get("metric"), stored.get("fold_metric"), stored.get("blocks"), stored.get("alpha"))
    return (
        keys == (metric, config.fold_metric, config.blocks, config.alpha)
        and stored.get("sharpe_metric") == config.sharpe_metric
    )


def gate_reason_of_tag(
    stored: Mapping[str, Any] | None, max_pbo: float | None, min_dsr: float | None = None
) -> str | None:
    """:func:`gate_reason` from the stored tag (the gate reads the PBO and the DSR only)."""
    tag = stored or {}
    pbo, dsr = tag.get("pbo"), tag.get("dsr")
    return _both(
        _gate(float(pbo) if isinstance(pbo, int | float) else None, tag.get("reason"), max_pbo),
        sharpe.gate(float(dsr) if isinstance(dsr, int | float) else None, tag.get("dsr_reason"), min_dsr),
    )


def summary(
    selection: Selection | None, max_pbo: float | None, leader: str | None, min_dsr: float | None = None
) -> SelectionSummary:
    """The summaries' view: the numbers, one plain line, and why production tags are held back."""
    held = gate_reason(selection, max_pbo, min_dsr)
    if selection is None:
        line = "No PBO: no per-fold values were read"
        return SelectionSummary(None, None, 0, 0, f"{line}; {held}" if held else line, held)
    line = plain_line(selection, leader)
    return SelectionSummary(
        pbo=selection.pbo,
        tied_with_leader=len(selection.tied) if selection.tied else None,
        folds=selection.folds,
        runs=selection.runs,
        line=f"{line}. Production tags held back: {held}" if held else line,
        held_back=held,
        dsr=selection.deflated.dsr if selection.deflated is not None else None,
    )
