"""Pure planning: what a pass read about an experiment becomes one :class:`ExperimentPlan`.

No MLflow, no I/O, no clock (``now`` is passed in). The reader (:mod:`watcher.reader`)
gathers a batch's :class:`ExperimentRead` values; :func:`decide_batch` triages them and
either asks for what else it must read (:class:`ToRead`: experiments afresh, boards, orphan
tags, count pages, the first rankings' search) or returns every plan, which the one writer
applies. A dry run prints the plans instead. ``POST /models/rank`` plans with the same
functions and writes nothing when the answer is an error.

Everything is planned from what MLflow holds now: the holder check (the runs carrying
``model_rank``) is compared with the kept board, and any difference -- a hand-set tag, a
deleted or restored holder, a holder whose value or status changed, a replica's stale
write -- re-ranks the experiment from fresh threshold searches.

By concern: :mod:`.types` (the values), :mod:`.triage` (what one experiment needs),
:mod:`.alerts` (failed and stalled runs to announce), :mod:`.board` (the board from threshold
searches), :mod:`.plans` (one experiment's plan), :mod:`.batch` (one rule's batch).
"""

from watcher.planner.alerts import MAX_FAILED_WAITING
from watcher.planner.batch import decide_batch
from watcher.planner.board import (
    SAMPLE_SIZE,
    board_from_search,
    by_experiment,
    kept_cutoff,
    ordered_search_proof,
    orphan_tag_keys,
    sample_cutoffs,
)
from watcher.planner.plans import align_watermark, counts_after_ranking, plan_board, state_only
from watcher.planner.triage import drops_filter, is_tracked, triage, with_rule_filter
from watcher.planner.types import (
    RANKING,
    Action,
    Agenda,
    BatchDecision,
    BoardFound,
    BoardRequest,
    BoardSearch,
    CountPage,
    CountRequest,
    Experiment,
    ExperimentPlan,
    ExperimentRead,
    Observed,
    SelectionInput,
    ToRead,
    Triage,
)

__all__ = [
    "MAX_FAILED_WAITING",
    "RANKING",
    "SAMPLE_SIZE",
    "Action",
    "Agenda",
    "BatchDecision",
    "BoardFound",
    "BoardRequest",
    "BoardSearch",
    "CountPage",
    "CountRequest",
    "Experiment",
    "ExperimentPlan",
    "ExperimentRead",
    "Observed",
    "SelectionInput",
    "ToRead",
    "Triage",
    "align_watermark",
    "board_from_search",
    "by_experiment",
    "counts_after_ranking",
    "decide_batch",
    "drops_filter",
    "is_tracked",
    "kept_cutoff",
    "ordered_search_proof",
    "orphan_tag_keys",
    "plan_board",
    "sample_cutoffs",
    "state_only",
    "triage",
    "with_rule_filter",
]
