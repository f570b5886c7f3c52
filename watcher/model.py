"""Plain values shared by the pure core, the adapters and the shells (no I/O here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol, overload

# Run tags of the MLflow contract (DESIGN.md, "The MLflow contract").
MODEL_RANK = "model_rank"
PRODUCTION_CANDIDATE = "production_candidate"
TRUE = "true"
# On the ranked runs the data cannot tell apart from the best (the leader's model confidence
# set), when the rule has a `selection` key (watcher/selection.py).
TIED_WITH_LEADER = "tied_with_leader"
# The largest top_n a rule or POST /models/rank may ask for: the watcher keeps the board (the
# top N and runners-up) in one experiment tag of at most 20,000 characters, 200 runs at most.
MAX_TOP_N = 200
# The rule name of boards made on demand by POST /models/rank (any experiment, no webhooks).
ON_DEMAND_RULE = "api"
# Seconds between sweeps of an experiment: its top_{N}/production_candidate holders searched
# (two calls per batch swept) and its board re-read from the kept cutoff (one threshold search).
# Hand-set tags on runs without model_rank, and a run whose end time was older than the
# watermark when it appeared, are put right within this time even when nothing finishes. When
# an experiment was swept is kept in its podium.state, so `--once` and a restarted daemon keep
# the schedule; at most max_rankings_per_pass experiments are swept per pass, oldest first.
SWEEP_SECONDS = 900.0


AlertKind = Literal["failed", "stalled"]
Trigger = Literal["experiment_finished", "run_finished"]
# How a webhook's document is written: the JSON event, or a Slack message.
WebhookFormat = Literal["json", "slack"]


class RegistryTarget(Protocol):
    """Where a rule promotes its leader: a registered model and the alias to move."""

    @property
    def model_name(self) -> str: ...

    @property
    def alias(self) -> str: ...


class SelectionRule(Protocol):
    """A rule's ``selection`` key: how the statistics are computed, and the gate."""

    @property
    def fold_metric(self) -> str: ...

    @property
    def blocks(self) -> int: ...

    @property
    def alpha(self) -> float: ...

    @property
    def max_pbo(self) -> float | None: ...

    @property
    def sharpe_metric(self) -> str | None: ...

    @property
    def min_dsr(self) -> float | None: ...


class Rule(Protocol):
    """What the engine and the handlers read of a rule (``settings.RuleConfig`` is one).

    A protocol, so that plain values and handlers never depend on the config loader.
    """

    @property
    def name(self) -> str: ...

    @property
    def experiments(self) -> Sequence[str]: ...

    @property
    def metric(self) -> str: ...

    @property
    def ascending(self) -> bool: ...

    @property
    def top_n(self) -> int: ...

    @property
    def production_candidates(self) -> int: ...

    @property
    def filter(self) -> str | None: ...

    @property
    def trigger(self) -> Trigger: ...

    @property
    def registry(self) -> RegistryTarget | None: ...

    @property
    def notify(self) -> Sequence[str]: ...

    @property
    def alerts(self) -> Sequence[AlertKind]: ...

    @property
    def stalled_after_minutes(self) -> int: ...

    @property
    def selection(self) -> SelectionRule | None: ...


def top_tag(top_n: int) -> str:
    """The run tag that marks the top N runs, e.g. ``top_10``."""
    return f"top_{top_n}"


def is_top_tag(key: str) -> bool:
    """True for ``top_{N}`` keys the watcher owns (``top_10``), not for e.g. ``top_feature``."""
    return key.startswith("top_") and key[4:].isdigit()


def is_podium_run_tag(key: str) -> bool:
    """True for every run tag key the watcher writes."""
    return key in (MODEL_RANK, PRODUCTION_CANDIDATE) or is_top_tag(key)


@dataclass(frozen=True)
class RankedRun:
    """One entry of a leaderboard; ``rank`` starts at 1."""

    rank: int
    run_id: str
    run_name: str
    value: float


@dataclass(frozen=True)
class Leaderboard:
    """The top ``top_n`` runs of one experiment under one rule (``rule`` is the rule's name)."""

    experiment_id: str
    experiment_name: str
    rule: str
    metric: str
    ascending: bool
    top_n: int
    production_candidates: int
    entries: tuple[RankedRun, ...]
    ranked_runs: int
    unranked_runs: int

    @property
    def leader(self) -> RankedRun | None:
        return self.entries[0] if self.entries else None


@dataclass(frozen=True)
class SelectionSummary:
    """What the selection statistics say about a board, as summaries show it.

    ``pbo``/``tied_with_leader`` are None when not computable (``line`` says why);
    ``held_back`` says why production tags and the registry alias did not move (None: they may).
    """

    pbo: float | None
    tied_with_leader: int | None
    folds: int
    runs: int
    line: str
    held_back: str | None = None
    dsr: float | None = None  # the leader's Deflated Sharpe Ratio (a rule with a sharpe_metric)


@dataclass(frozen=True)
class LeaderboardChanged:
    """Emitted after the tags of a changed leaderboard were written.

    ``entered``/``left`` are run ids that joined/left the top ``top_n``; ``selection`` is set
    when the rule has a ``selection`` key. ``sequence`` numbers the rule's announced changes of
    the experiment (1 for the first), counted in its ``podium.state``: replicas that decide the
    same change from the same state give it the same number, a later identical change the next.
    """

    board: Leaderboard
    new_leader: bool
    entered: tuple[str, ...]
    left: tuple[str, ...]
    selection: SelectionSummary | None = None
    sequence: int = 1


@dataclass(frozen=True)
class RunAlert:
    """One failed or stalled run the rule should announce, decided by the pure core."""

    kind: AlertKind
    experiment_id: str
    experiment_name: str
    rule: str  # the rule's name
    run_id: str
    run_name: str
    status: str  # MLflow status now: FAILED, KILLED, RUNNING
    last_activity: int | None  # unix ms: the run's latest start / metric timestamp / end time


@dataclass(frozen=True)
class ModelSource:
    """Where a run's model lives: `models:/<model_id>` (MLflow 3) or `runs:/<run_id>/model`."""

    uri: str
    model_id: str | None = None


@dataclass(frozen=True)
class ModelVersionInfo:
    """A registered model version, as the adapter reports it (no MLflow types)."""

    name: str
    version: str
    run_id: str | None
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TagChange:
    """Set (``new`` is a string) or delete (``new`` is None) one run tag; ``old`` as last seen."""

    run_id: str
    key: str
    old: str | None
    new: str | None

    @property
    def is_delete(self) -> bool:
        return self.new is None


@dataclass(frozen=True)
class ExperimentRecord:
    """An MLflow experiment as listed: id, name and experiment tags; ``last_update_time`` (ms,
    the server's clock) moves when it is created, renamed, deleted or restored, not when a tag
    is written; ``deleted`` only in a listing that asked for deleted experiments too."""

    experiment_id: str
    name: str
    tags: Mapping[str, str] = field(default_factory=dict)
    last_update_time: int = 0
    deleted: bool = False


@dataclass(frozen=True)
class RunRecord:
    """An active MLflow run as searched (times in ms since the epoch, None while unset)."""

    run_id: str
    run_name: str
    experiment_id: str
    status: str
    start_time: int | None
    end_time: int | None
    metrics: Mapping[str, float] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    # The latest timestamp of the run's metrics (ms), None without metrics.
    last_activity: int | None = None


@dataclass(frozen=True)
class WatchedExperiment:
    """An experiment a rule matched in this pass, with its experiment tags as listed."""

    experiment_id: str
    name: str
    tags: Mapping[str, str] = field(default_factory=dict)
    rule: Rule | None = None


class Handler(Protocol):
    """Reacts to the events of a pass (registry alias, webhooks, the delivery worker).

    A handler subclasses this protocol and overrides the hooks it needs; the others do
    nothing. The watcher calls every hook through these methods, after the pass's tag plan
    was applied; a hook's exception is caught and logged per handler and never rolls
    anything back. A dry run calls no hook.
    """

    def on_pass_start(self) -> None:
        """Before every pass that is not a dry run, even when the last pass failed before its
        ``on_pass_end`` (so per-pass state is reset)."""
        return None

    def on_leaderboard_changed(self, event: LeaderboardChanged, rule: Rule) -> None:
        """A leaderboard changed; the tags were written."""
        return None

    def on_run_alert(self, alert: RunAlert, rule: Rule) -> None:
        """Once per alert after the pass's tag plan was applied (never twice per run)."""
        return None

    def on_pass_end(self, experiments: Sequence[WatchedExperiment]) -> None:
        """Every watched experiment of a successful pass (e.g. to retry pending webhook
        summaries), called even when no leaderboard changed."""
        return None

    def pass_report(self) -> Mapping[str, int]:
        """Read after ``on_pass_end``: counts (e.g. ``webhooks_failed``) for the pass summary
        (``PassResult.handler_report`` and the ``pass_finished`` log line)."""
        return {}


@overload
def iso_time(seconds: float) -> str: ...
@overload
def iso_time(seconds: None) -> None: ...
@overload
def iso_time(seconds: float | None) -> str | None: ...
def iso_time(seconds: float | None) -> str | None:
    """ISO-8601 UTC to the second (``2026-01-01T00:00:00Z``) of a time in seconds since the
    epoch; None stays None. Every time the watcher shows (API, dashboard, webhooks, tags)."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_time_ms(ms: int | None) -> str | None:
    """:func:`iso_time` of a time in milliseconds since the epoch (MLflow's run and metric
    times), where None and 0 mean "not set" and give None."""
    return iso_time(ms / 1000) if ms else None
