"""Pure ranking core: order runs, merge a kept board with new candidates, plan tag changes.

No MLflow, no I/O, no clock. The tracking adapter feeds :class:`Candidate` values in and
applies the :class:`TagChange` list that :func:`plan` returns, in order.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from watcher.model import (
    MODEL_RANK,
    PRODUCTION_CANDIDATE,
    TIED_WITH_LEADER,
    TRUE,
    RankedRun,
    RunRecord,
    TagChange,
    is_podium_run_tag,
    top_tag,
)

FINISHED = "FINISHED"


@dataclass(frozen=True)
class Candidate:
    """A run that can be ranked: FINISHED, matching the rule's filter, finite metric value."""

    run_id: str
    run_name: str
    value: float
    end_time: int | None


# MLflow's stores keep +/-inf as +/-sys.float_info.max; those count as infinite too.
_INFINITY_STAND_IN = sys.float_info.max


def is_rankable(value: float | None) -> bool:
    """A value counts when it is a finite number and not MLflow's stand-in for infinity."""
    return value is not None and math.isfinite(value) and abs(value) < _INFINITY_STAND_IN


def finite_value(run: RunRecord, metric: str) -> float | None:
    """The run's latest value of ``metric`` if it is a finite number, else None."""
    value = run.metrics.get(metric)
    if value is None or not is_rankable(value):
        return None
    return float(value)


def split_ranked(runs: Iterable[RunRecord], metric: str) -> tuple[list[Candidate], int]:
    """FINISHED runs with a finite value as candidates, and how many FINISHED runs were not."""
    ranked: list[Candidate] = []
    unranked = 0
    for run in runs:
        if run.status != FINISHED:
            continue
        value = finite_value(run, metric)
        if value is None:
            unranked += 1
        else:
            ranked.append(Candidate(run.run_id, run.run_name, value, run.end_time))
    return ranked, unranked


def sort_key(c: Candidate, ascending: bool) -> tuple[float, float, str]:
    """Better first; ties by earlier end time (unknown last), then run id."""
    end = float(c.end_time) if c.end_time is not None else math.inf
    return (c.value if ascending else -c.value, end, c.run_id)


def order(candidates: Iterable[Candidate], ascending: bool) -> list[Candidate]:
    """Deduplicated by run id (the last occurrence wins), best first."""
    unique = {c.run_id: c for c in candidates}
    return sorted(unique.values(), key=lambda c: sort_key(c, ascending))


def leaderboard_entries(board: Sequence[Candidate], top_n: int) -> tuple[RankedRun, ...]:
    return tuple(
        RankedRun(rank=i + 1, run_id=c.run_id, run_name=c.run_name, value=c.value)
        for i, c in enumerate(board[:top_n])
    )


def desired_tags(
    entries: Sequence[RankedRun], top_n: int, production_candidates: int
) -> dict[str, dict[str, str]]:
    """The watcher's run tags for each entry of a leaderboard (the MLflow contract)."""
    desired: dict[str, dict[str, str]] = {}
    for entry in entries[:top_n]:
        tags = {MODEL_RANK: str(entry.rank), top_tag(top_n): TRUE}
        if entry.rank <= production_candidates:
            tags[PRODUCTION_CANDIDATE] = TRUE
        desired[entry.run_id] = tags
    return desired


def podium_tags(tags: Mapping[str, str], owned: Callable[[str], bool] = is_podium_run_tag) -> dict[str, str]:
    """Only the run tags the watcher owns (``model_rank``, ``top_{N}``, ``production_candidate``)."""
    return {k: v for k, v in tags.items() if owned(k)}


def with_tied(key: str) -> bool:
    """The ranking tags and ``tied_with_leader``: what a ranking with selection statistics owns."""
    return is_podium_run_tag(key) or key == TIED_WITH_LEADER


def plan(
    desired: Mapping[str, Mapping[str, str]],
    current: Mapping[str, Mapping[str, str]],
    owned: Callable[[str], bool] = is_podium_run_tag,
) -> list[TagChange]:
    """Tag changes that turn ``current`` into ``desired``, in a safe order to apply.

    ``current`` maps run ids to the watcher-owned tags they carry now (other keys are
    ignored); runs absent from ``desired`` must carry none. Order: all deletions first, a
    run's ``model_rank`` deleted last, so a run with any stale tag keeps its rank until it
    is clean; then the sets, grouped per run (one ``log_batch`` each), ordered so that no
    two runs ever carry the same ``model_rank``: a run takes rank r only after the run that
    held r moved away. Cycles of rank swaps are broken by deleting one run's rank first.
    Runs whose tags are already right get nothing. ``owned`` says which keys are the
    watcher's (the ranking tags; with selection statistics, ``tied_with_leader`` too).
    """
    deletes: list[TagChange] = []
    sets: dict[str, list[TagChange]] = {}
    rank_now: dict[str, str | None] = {}
    for run_id in sorted(set(current) | set(desired)):
        have = podium_tags(current.get(run_id, {}), owned)
        want = dict(desired.get(run_id, {}))
        stale = sorted(k for k in have if k not in want)
        stale.sort(key=lambda k: k == MODEL_RANK)  # model_rank last
        deletes.extend(TagChange(run_id, k, have[k], None) for k in stale)
        changed = [TagChange(run_id, k, have.get(k), v) for k, v in sorted(want.items()) if have.get(k) != v]
        if changed:
            sets[run_id] = changed
        if MODEL_RANK in have and MODEL_RANK in want:
            rank_now[run_id] = have[MODEL_RANK]

    # Which run holds each rank once deletions are done (rank_now excludes deleted ranks).
    holders: dict[str, set[str]] = {}
    for run_id, rank in rank_now.items():
        if rank is not None:
            holders.setdefault(rank, set()).add(run_id)
    target: dict[str, str] = {
        c.run_id: c.new
        for changes in sets.values()
        for c in changes
        if c.key == MODEL_RANK and c.new is not None
    }

    ordered: list[str] = []
    pending = set(sets)
    cycle_breaks: list[TagChange] = []
    while pending:
        ready = sorted(
            (r for r in pending if not (holders.get(target.get(r, ""), set()) - {r})),
            key=_rank_order(target),
        )
        if not ready:
            # Every pending run waits for another: a cycle. Free the best-ranked one's slot.
            victim = min((r for r in pending if r in target), key=_rank_order(target))
            old = rank_now.pop(victim)
            if old is not None:
                holders[old].discard(victim)
            cycle_breaks.append(TagChange(victim, MODEL_RANK, old, None))
            sets[victim] = [
                TagChange(c.run_id, c.key, None, c.new) if c.key == MODEL_RANK else c for c in sets[victim]
            ]
            continue
        for run_id in ready:
            pending.discard(run_id)
            ordered.append(run_id)
            old = rank_now.pop(run_id, None)
            if old is not None:
                holders[old].discard(run_id)
            if run_id in target:
                holders.setdefault(target[run_id], set()).add(run_id)
            break  # re-evaluate: this write may have freed a rank another run waits for

    changes = deletes + cycle_breaks
    for run_id in ordered:
        changes.extend(sets[run_id])
    return changes


def _rank_order(target: Mapping[str, str]) -> Callable[[str], tuple[int, str]]:
    def key(run_id: str) -> tuple[int, str]:
        rank = target.get(run_id)
        return (int(rank) if rank and rank.isdigit() else 0, run_id)

    return key
