"""The planner's values: what a pass asks (:class:`Agenda`), what it read
(:class:`ExperimentRead`), what it must read next (:class:`ToRead`) and what it decided
(:class:`Triage`, :class:`ExperimentPlan`, :class:`BatchDecision`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from watcher import selection as stats
from watcher.model import Leaderboard, LeaderboardChanged, RunAlert, RunRecord, SelectionSummary, TagChange
from watcher.ranking import Candidate
from watcher.state import ExperimentState

Action = Literal["idle", "advance", "pending", "count", "rerank", "full"]


RANKING: frozenset[Action] = frozenset({"rerank", "full"})


@dataclass(frozen=True)
class Agenda:
    """What one pass (or one API ranking) does, decided before it reads a run.

    ``holder_checks``, ``sweep``: the experiments whose ``model_rank`` holders the batch
    search reads, and whose ``top_{N}``/``production_candidate`` holders it searches (each
    re-ranked from its kept cutoff); ``admit`` (None: every one) the experiments a first
    ranking may start for; ``reranks`` (None: no bound) the re-ranks of the whole pass;
    ``stall_checks`` the rules that look for stalled runs this pass; ``floors`` (None: not a
    daemon pass, which searches from the watermarks and keeps nothing) where each
    experiment's batch search may start; ``listed``: the experiments' tags come from the
    listing kept between passes (a plan that writes state asks to read them afresh);
    ``force_rank`` ranks every experiment (the API).
    """

    now_ms: int
    # The watcher's clock (seconds) when the pass started: the schedules kept in memory.
    now: float = 0.0
    holder_checks: frozenset[str] = frozenset()
    sweep: frozenset[str] = frozenset()
    admit: frozenset[str] | None = None
    reranks: int | None = None
    stall_checks: frozenset[str] = frozenset()
    floors: Mapping[str, int] | None = None
    listed: bool = False
    force_rank: bool = False
    # First rankings and holder checks due that wait for the passes that follow at once.
    rankings_deferred: int = 0
    holder_checks_deferred: int = 0
    # Seconds the longest-waiting holder check waited, to be said now (None: nothing to
    # say), and whether the checks are behind after this agenda (said once until they catch up).
    holder_checks_behind: float | None = None
    checks_falling_behind: bool = False
    # The holder check interval (for what the pass says when the checks fall behind).
    holder_check_seconds: float = 0.0

    @classmethod
    def on_demand(cls, now: float, experiment_id: str) -> Agenda:
        """An API ranking: one experiment, ranked whatever its state, its holders read."""
        return cls(int(now * 1000), now, holder_checks=frozenset({experiment_id}), force_rank=True)


@dataclass(frozen=True)
class Experiment:
    """The experiment a plan is for, as the pass's listing named it."""

    experiment_id: str
    name: str


@dataclass(frozen=True)
class Observed:
    """What the pass's batch searches returned for one experiment.

    ``ended``: runs that ended after the experiment's watermark (any status; FINISHED ones
    match the rule's filter). ``holders``: runs carrying ``model_rank`` now (None: not read this pass). ``running``: the
    RUNNING runs, or None when the pass did not search them. ``advance_to``: set when the
    batch search returned many runs the watermark already covers (the largest end time seen).
    """

    ended: tuple[RunRecord, ...] = ()
    # None: the holder check is not due this pass (the holders are read only to rank).
    holders: tuple[RunRecord, ...] | None = ()
    running: tuple[RunRecord, ...] | None = None
    advance_to: int | None = None
    # Runs carrying ``top_{N}`` or ``production_candidate`` (None: not searched this pass).
    orphans: tuple[RunRecord, ...] | None = None
    # Alerts the outbox has room for (None: no bound); the rest wait for a later pass.
    alert_room: int | None = None
    # The latest end time of FINISHED runs after the watermark that the rule's filter leaves
    # out (0: none). The batch search drops the filter when failed runs are announced; the
    # watermark moves past these runs too, or every later pass would search them again.
    filtered_out: int = 0


@dataclass(frozen=True)
class Triage:
    """What one experiment needs this pass, before any ranking search.

    ``action``: "idle" (nothing to do), "advance" (only the watermark moves), "pending" (new
    runs wait for a RUNNING one), "count" (only the paged count goes on), "rerank" (merge the
    kept board with a threshold search), "full" (find the board from scratch). ``reason``
    says why it ranks (``news``, ``holders``, ``reshaped``, ``settled``, ``first``, ``rule``).
    """

    action: Action
    reason: str
    seen: int
    new_ranked: int = 0
    new_unranked: int = 0
    alerts: tuple[RunAlert, ...] = ()
    alerted: tuple[str, ...] = ()
    stalled: tuple[str, ...] = ()
    old_alerts_skipped: int = 0
    # Alerts due but left for a later pass (no room in the outbox, or the state's alerted list
    # is full): not remembered (failed runs wait behind ``alert_cursor``), so a later pass
    # announces them.
    alerts_held: int = 0
    # Failed runs beyond MAX_FAILED_WAITING waiting for the outbox: not announced.
    alerts_lost: int = 0
    first_seen: int | None = None
    # (end_time, run_id) of the first failed run due but not queued (None: all are queued).
    alert_cursor: tuple[int, str] | None = None
    # What the decision rests on, for what it asks to read: a run (any status) ended after the
    # kept watermark, so the plan writes the state; a stalled run the rule would announce; the
    # running runs decide whether it waits (an ``experiment_finished`` rule with news or a
    # ranking to make).
    ended_since: bool = False
    stalls_to_announce: bool = False
    waits_for_running: bool = False


@dataclass(frozen=True)
class ExperimentPlan:
    """The pass's decision for one experiment, applied by the one writer (unless dry run).

    ``changes``: run tag changes, in a safe order; ``state``: the ``podium.state`` to write
    (None: leave it); ``event``/``alerts``: what the handlers get once the plan is applied.
    """

    experiment_id: str
    experiment_name: str
    rule: str
    action: Action
    reason: str = ""
    changes: tuple[TagChange, ...] = ()
    state: ExperimentState | None = None
    event: LeaderboardChanged | None = None
    board: Leaderboard | None = None
    alerts: tuple[RunAlert, ...] = ()
    stalled: tuple[str, ...] = ()
    # The selection statistics computed this pass, and the podium.selection tag to write.
    selection: stats.Selection | None = None
    selection_tag: str | None = None


@dataclass(frozen=True)
class BoardSearch:
    """What the ranking searches found: the runs at or before ``cutoff`` (all FINISHED runs
    matching the rule when ``cutoff`` is None, ``everything`` then true)."""

    runs: tuple[RunRecord, ...]
    cutoff: float | None
    everything: bool


@dataclass(frozen=True)
class Counts:
    """Ranked and unranked runs known for the new state, and the paged count's progress."""

    ranked: int
    unranked: int
    counting: bool
    token: str | None
    upto: int


@dataclass(frozen=True)
class Gate:
    """What the selection statistics change in a ranking's plan.

    ``held``: no ``production_candidate`` (the rule's max_pbo); ``tied``: the runs to carry
    ``tied_with_leader`` (None: not computed this pass, those tags stay as they are);
    ``selection``/``tag``/``summary``: the statistics, the ``podium.selection`` tag to write
    and what the summaries say. The default is a rule without a ``selection`` key.
    """

    held: bool = False
    tied: tuple[str, ...] | None = None
    selection: stats.Selection | None = None
    tag: str | None = None
    summary: SelectionSummary | None = None


@dataclass(frozen=True)
class BoardFound:
    """What a ranking's searches proved: the runs they returned, the board prefix, and
    whether that prefix holds every ranked run."""

    search: BoardSearch
    board: tuple[Candidate, ...]
    complete: bool


@dataclass(frozen=True)
class CountPage:
    """One page of the paged count and the token of the next (None: the count is done)."""

    runs: tuple[RunRecord, ...]
    token: str | None


@dataclass(frozen=True)
class ExperimentRead:
    """What MLflow holds for one experiment of a batch, as the pass read it.

    ``observed`` is the batch searches' answer (read for every experiment). The rest is read
    when :func:`decide_batch` asks for it (None: not read): ``orphans``, the
    ``top_{N}``/``production_candidate`` holders of an experiment to rank that the sweep did
    not search; ``board``, the ranking searches' answer; ``count_pages``, the paged count's
    pages read this pass; ``since_ranking``, the runs that ended after a first ranking's
    watermark (one search over the batch's first rankings).
    """

    experiment: Experiment
    state: ExperimentState | None
    observed: Observed
    orphans: tuple[RunRecord, ...] | None = None
    board: BoardFound | None = None
    count_pages: tuple[CountPage, ...] | None = None
    since_ranking: tuple[RunRecord, ...] | None = None
    # The experiment's podium.selection tag as listed (rules with a selection key).
    selection_tag: str | None = None
    # The selection statistics' input, read when decide_batch asks for it.
    selection_input: SelectionInput | None = None
    # The experiment's tags (its state) are the listing's kept between passes, not read afresh
    # this pass; ``filtered``: the FINISHED rows of ``observed.ended`` are the rule's filter's.
    from_listing: bool = False
    filtered: bool = False

    @property
    def experiment_id(self) -> str:
        return self.experiment.experiment_id


@dataclass(frozen=True)
class SelectionInput:
    """What the selection statistics read for one experiment: every ranked run in board order
    with its per-fold values, and the runs that carry ``tied_with_leader`` now."""

    board: tuple[stats.BoardRun, ...]
    tied_holders: tuple[RunRecord, ...]


@dataclass(frozen=True)
class BoardRequest:
    """Find an experiment's board: from ``cutoff`` (a re-rank's kept cutoff) or, when None,
    from cutoffs estimated on a sample; ``keep`` runs at most."""

    experiment_id: str
    cutoff: float | None
    keep: int


@dataclass(frozen=True)
class CountRequest:
    """Go on with an experiment's paged count over the runs ended by ``upto``, from ``token``."""

    experiment_id: str
    upto: int
    token: str | None


@dataclass(frozen=True)
class ToRead:
    """What :func:`decide_batch` must see before it can plan: the experiments to read
    ``afresh`` (their tags came from the kept listing and the plan would write their state),
    the FINISHED news of the ``filtered`` experiments searched again with the rule's filter
    (ended after ``filtered_since``), the RUNNING runs of ``running``, the ``model_rank`` holders of
    ``holders`` (experiments to rank when the pass made no holder check), the orphan-tag
    holders of ``orphans`` (experiment ids), the ``boards``, the ``counts``, for the first
    rankings ``firsts`` the runs that ended after ``since`` (their common watermark), and the
    per-fold values of the ``selections``."""

    afresh: tuple[str, ...] = ()
    filtered: tuple[str, ...] = ()
    filtered_since: int = 0
    running: tuple[str, ...] = ()
    holders: tuple[str, ...] = ()
    orphans: tuple[str, ...] = ()
    boards: tuple[BoardRequest, ...] = ()
    counts: tuple[CountRequest, ...] = ()
    firsts: tuple[str, ...] = ()
    since: int = 0
    # Experiments whose selection statistics are computed this pass (their board read first).
    selections: tuple[str, ...] = ()


@dataclass(frozen=True)
class BatchDecision:
    """Every experiment's triage and, once everything needed was read (``to_read`` None),
    its plan, in batch order; ``counts`` are the ranked experiments' counts."""

    triaged: Mapping[str, Triage]
    to_read: ToRead | None = None
    plans: tuple[ExperimentPlan, ...] = ()
    counts: Mapping[str, Counts] = field(default_factory=dict)
