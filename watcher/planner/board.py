"""Finding the board with threshold searches: the cutoffs to try, what a search proves,
the rows grouped by experiment."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from watcher.model import PRODUCTION_CANDIDATE, Rule, RunRecord, top_tag
from watcher.planner.types import BoardSearch
from watcher.ranking import Candidate, finite_value, order, sort_key, split_ranked
from watcher.state import ExperimentState

# The page a first ranking starts from (the runs that ended last): it estimates the cutoff of
# the board. Its best value admits about 1/50 of the experiment to the first ordered threshold
# search, which MLflow sorts on the server and answers with ``keep + 1`` runs.
SAMPLE_SIZE = 50


# Ranks within the sample tried as cutoffs, best first; each try is one threshold search.
SAMPLE_RANKS = (1, 4, 16, 64)


def sample_cutoffs(sample: Iterable[RunRecord], metric: str, ascending: bool, keep: int) -> list[float]:
    """Cutoffs to try, tightest first, from an unordered page of the experiment's runs.

    The r-th best value of the sample has at least r runs at or before it in the whole
    experiment, so the last cutoff (rank ``keep``, or the sample's worst) always finds a full
    board unless runs vanished meanwhile.
    """
    ordered = order(split_ranked(sample, metric)[0], ascending)
    if not ordered:
        return []
    ranks = sorted({min(r, keep, len(ordered)) for r in (*SAMPLE_RANKS, keep)})
    return [ordered[r - 1].value for r in ranks]


def board_from_search(found: BoardSearch, rule: Rule, keep: int) -> tuple[list[Candidate], bool] | None:
    """The board prefix a search proves, and whether it is complete; None when the search
    holds fewer than ``top_n`` runs ahead of every unseen run (the caller widens)."""
    candidates, _ = split_ranked(found.runs, rule.metric)
    ordered = order(candidates, rule.ascending)
    if found.everything:
        return ordered[:keep], len(ordered) <= keep
    if found.cutoff is None:
        return None
    limit = sort_key(Candidate("", "", found.cutoff, None), rule.ascending)[0]
    ordered = [c for c in ordered if sort_key(c, rule.ascending)[0] <= limit]
    if len(ordered) < min(keep, rule.top_n):
        return None
    return ordered[:keep], False


def ordered_search_proof(
    rows: Sequence[RunRecord], rule: Rule, cutoff: float, limit: int
) -> BoardSearch | None:
    """What a threshold search ordered best first and cut at ``limit`` rows proves.

    Fewer rows than ``limit``: every run at or before ``cutoff``. Else MLflow stopped at its
    limit: the runs strictly ahead of the last row's value are all there (runs tied with it
    may go on past the limit), so the proof reaches the worst of those. None when no
    rankable run is strictly ahead (the caller searches without a limit).
    """
    raw = rows[-1].metrics.get(rule.metric) if rows else None
    if len(rows) < limit or raw is None or math.isnan(raw):
        return BoardSearch(tuple(rows), cutoff, False)  # MLflow orders NaN and missing last
    last = finite_value(rows[-1], rule.metric)
    if last is None:
        return None  # an infinite value at the limit: leave it to the unlimited search
    ahead = [
        c
        for c in split_ranked(rows, rule.metric)[0]
        if (c.value > last if not rule.ascending else c.value < last)
    ]
    if not ahead:
        return None
    worst = order(ahead, rule.ascending)[-1]
    return BoardSearch(tuple(rows), worst.value, False)


def kept_cutoff(state: ExperimentState | None, rule: Rule, fp: str) -> float | None:
    """The value a re-rank's threshold search starts from: the kept board's last entry."""
    if state is None or state.fingerprint != fp or state.complete or not state.board:
        return None
    return state.board[-1].value


def by_experiment(runs: Iterable[RunRecord]) -> dict[str, tuple[RunRecord, ...]]:
    """Rows of a batch search grouped by experiment id (the last row of a run wins)."""
    grouped: dict[str, dict[str, RunRecord]] = {}
    for run in runs:
        grouped.setdefault(run.experiment_id, {})[run.run_id] = run
    return {exp_id: tuple(rows.values()) for exp_id, rows in grouped.items()}


def orphan_tag_keys(rule: Rule, states: Iterable[ExperimentState | None]) -> list[str]:
    """The tags the orphan-tag searches look for (one search each): ``top_{N}`` of the rule
    and of every kept board, and ``production_candidate``."""
    keys = {top_tag(rule.top_n), PRODUCTION_CANDIDATE}
    keys |= {top_tag(s.top_n) for s in states if s is not None}
    return sorted(keys)
