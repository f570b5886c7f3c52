"""The board the watcher keeps in an experiment's tags, read for the dashboard (pure), and the
small helpers the routes share: run links and id checks."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from watcher.model import RunRecord
from watcher.settings import WatcherSettings
from watcher.state import STATE_TAG, UNRANKED, ExperimentState, fingerprint

# Ids MLflow can look up: anything else is answered 404 here, before a tracking call (MLflow
# rejects ``²`` or a 5000-character id with a server error, and reads an Arabic-Indic one as 1).
EXPERIMENT_ID = re.compile(r"[0-9]{1,19}")
MAX_EXPERIMENT_ID = 2**63 - 1
RUN_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,63}")  # MLflow also wants an alphanumeric first
# How much of a name from a request an error message repeats.
ECHO_CHARS = 100


# ---- the kept board (the one place that reads the watcher's state) ------------------------------


@dataclass(frozen=True)
class KeptBoard:
    """What the watcher's last ranking of an experiment left in its experiment tags."""

    rule: str
    fingerprint: str
    top_n: int
    production_candidates: int
    entries: tuple[tuple[str, float], ...]  # (run_id, value) of the tagged top N, best first
    ranked_runs: int
    unranked_runs: int
    seen_ms: int  # end time of the newest run the ranking accounts for
    # What the ranking ranked by, as its state records it (None in states written before).
    metric: str | None = None
    ascending: bool | None = None


def kept_board(tags: Mapping[str, str]) -> KeptBoard | None:
    """The kept board from an experiment's tags; None when it was never ranked (no state, or
    the state a pass keeps while the experiment waits for its first ranking)."""
    state = ExperimentState.from_tag(tags.get(STATE_TAG))
    if state is None or state.fingerprint == UNRANKED:
        return None
    return KeptBoard(
        rule=state.rule,
        fingerprint=state.fingerprint,
        top_n=state.top_n,
        # The selection gate held them back: the holders carry no production_candidate.
        production_candidates=0 if state.held else state.production_candidates,
        entries=tuple((c.run_id, c.value) for c in state.holders()),
        ranked_runs=state.ranked_runs,
        unranked_runs=state.unranked_runs,
        seen_ms=state.seen,
        metric=state.metric,
        ascending=state.ascending,
    )


# ---- pure helpers ----------------------------------------------------------------------------------


def ranking_of(
    board: KeptBoard, settings: WatcherSettings, leader: RunRecord | None, experiment_name: str
) -> tuple[str, bool] | None:
    """The metric and direction the board was ranked by, as its state records them.

    A state written before they were recorded has them only as a fingerprint (with the rule's
    filter): try the rule that owns the experiment first, then every metric the leader carries
    with the board's value, both directions, with and without each rule's filter.
    """
    if board.metric is not None and board.ascending is not None:
        return board.metric, board.ascending
    owner = settings.rule_for(experiment_name)
    filters: list[str | None] = [owner.filter if owner else None, None, *(r.filter for r in settings.rules)]
    candidates: list[str] = [owner.metric] if owner else []
    if leader is not None and board.entries:
        value = board.entries[0][1]
        candidates += sorted(k for k, v in leader.metrics.items() if v == value)
    candidates += [r.metric for r in settings.rules]
    for metric in dict.fromkeys(candidates):
        for ascending in (False, True):
            for filter_string in dict.fromkeys(filters):
                if fingerprint(metric, ascending, filter_string) == board.fingerprint:
                    return metric, ascending
    return None


def sorted_metric_keys(keys: Iterable[str]) -> list[str]:
    """Averages first (what one ranks by), then the rest, each alphabetical."""
    unique = set(keys)
    return sorted(unique, key=lambda k: (not k.startswith("avg_"), k.startswith("importance_"), k))


def run_url(ui_base_url: str | None, experiment_id: str, run_id: str) -> str | None:
    if not ui_base_url:
        return None
    return f"{ui_base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def short(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` as an error message may repeat it: at most ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def valid_experiment_id(experiment_id: str) -> bool:
    """ASCII digits within MLflow's 64-bit ids (``str.isdigit`` also takes superscripts and Arabic-Indic digits)."""
    return bool(EXPERIMENT_ID.fullmatch(experiment_id)) and int(experiment_id) <= MAX_EXPERIMENT_ID


def valid_run_id(run_id: str) -> bool:
    return bool(RUN_ID.fullmatch(run_id))


def quote_all(values: Iterable[str]) -> str:
    """A list for MLflow's ``IN (...)``: ids are hex, but quote safely anyway."""
    return ", ".join("'" + v.replace("'", "") + "'" for v in values)
