"""What the dashboard's routes answer and take: pydantic models (and the importance file's row)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat

# The experiment states the page filters by and counts in its header.
State = Literal["all", "ranked", "not_ranked", "gated", "needs_attention"]
STATES: tuple[State, ...] = ("all", "ranked", "not_ranked", "gated", "needs_attention")
# The gate's verdict on an experiment's leader: production tags held back, let through, or the
# rule has no gate.
Gate = Literal["held", "passed", "none"]


@dataclass(frozen=True)
class FeatureRow:
    """One row of a run's ``feature_importance.csv``."""

    rank: int
    feature: str
    importance_mean: float | None
    importance_std: float | None
    shap_importance: float | None


class RetrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(min_length=1, max_length=64)
    exclude: list[str] | None = None
    drop_below: StrictFloat | None = None  # strict: ``true`` is not the number 1


class Leader(BaseModel):
    run_id: str
    run_name: str | None
    value: float
    url: str | None


class ExperimentView(BaseModel):
    experiment_id: str
    experiment_name: str
    rule: str | None
    metric: str | None
    ascending: bool | None
    top_n: int | None
    ranked_runs: int
    unranked_runs: int
    leader: Leader | None
    ranked_at: str | None
    # From the selection statistics (``podium.selection``), null without them.
    pbo: float | None = None
    dsr: float | None = None
    tied_with_leader: int | None = None
    gate: Gate = "none"
    # Why the experiment needs a look: not ranked yet, stalled runs.
    attention: list[str] = []


class StateCounts(BaseModel):
    """Experiments per state, over those the name and rule filters leave."""

    all: int
    ranked: int
    not_ranked: int
    gated: int
    needs_attention: int


# What ``GET /api/experiments`` answers beside its body (the list of experiments): the paging,
# the sort applied, the counts per state and where the table came from, as response headers
# (name: (OpenAPI type, description)).
TABLE_HEADERS: dict[str, tuple[str, str]] = {
    "X-Total-Count": ("integer", "Experiments that pass every filter"),
    "X-Page": ("integer", "This page, from 1 (1 without paging)"),
    "X-Page-Size": ("integer", "Experiments per page (without paging: the number listed)"),
    "X-Pages": ("integer", "Pages at this size (1 without paging)"),
    "X-Podium-Sort": ("string", "The sort key applied: name, value, pbo, dsr, tied or ranked_at"),
    "X-Podium-Order": ("string", "The order applied: asc or desc"),
    "X-Podium-Counts": (
        "string",
        "Compact JSON {all, ranked, not_ranked, gated, needs_attention}: experiments per state "
        "over those the name and rule filters leave",
    ),
    "X-Podium-Rules": ("string", "JSON list: the rules of the experiments listed, for the rule filter"),
    "X-Podium-Source": (
        "string",
        "kept: computed from the daemon's kept listing; listed: from a listing made for the request",
    ),
}


class UniverseRow(BaseModel):
    """One experiment of a rule in the universe view (and one line of its CSV)."""

    experiment_id: str
    experiment_name: str
    leader_run_id: str | None
    leader_run_name: str | None
    metric: str | None
    ascending: bool | None  # the direction the board was ranked in (lower is better: true)
    value: float | None
    pbo: float | None
    tied_with_leader: int | None
    gate: Gate
    dsr: float | None
    avg_test_ic: float | None
    oos_sharpe: float | None
    ranked_at: str | None
    url: str | None


class UniverseView(BaseModel):
    rule: str
    metric: str | None
    ascending: bool | None
    sort: str
    order: Literal["asc", "desc"]
    rows: list[UniverseRow]


class ModelRow(BaseModel):
    rank: int
    run_id: str
    run_name: str
    value: float
    production_candidate: bool
    url: str | None
    params: dict[str, str]
    total_features: int | None
    retrained_from: str | None
    # In the leader's model confidence set (a rule with a `selection` key).
    tied_with_leader: bool = False


class LeaderboardView(BaseModel):
    experiment_id: str
    experiment_name: str
    rule: str
    metric: str | None
    ascending: bool | None
    top_n: int
    ranked_runs: int
    unranked_runs: int
    ranked_at: str | None
    metric_keys: list[str]
    models: list[ModelRow]


class MetricKeys(BaseModel):
    experiment_id: str
    metric_keys: list[str]


class RunImportance(BaseModel):
    run_id: str
    run_name: str
    experiment_id: str
    status: str
    total_features: int
    retrained_from: str | None
    url: str | None
    metrics: dict[str, float | None]
    features: list[FeatureRow]


class LeadersFeature(BaseModel):
    feature: str
    mean_importance: float
    mean_rank: float
    runs: int


class ExperimentImportance(BaseModel):
    experiment_id: str
    experiment_name: str
    top_n: int
    runs: list[str]
    features: list[LeadersFeature]


class JobView(BaseModel):
    job_id: str
    status: str
    run_id: str
    new_run_id: str | None
    new_run_url: str | None
    exclude: list[str] | None
    drop_below: float | None
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    exit_code: int | None
    error: str | None
    log_tail: str
