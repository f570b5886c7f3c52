"""The training dashboard: the page at ``GET /`` and the JSON routes it uses.

The page (``watcher/static``: HTML, CSS and JS, no build step, nothing fetched from elsewhere)
shows the watched experiments, an experiment's leaderboard, a run's feature importance, the
features that matter across an experiment's leaders, and the guide's two dialogs: "Rank Top
Models" (the guide's ``POST /models/rank``) and "Retrain Existing Model" (``POST /api/retrain``,
a job running ``python -m trainer retrain``, see :mod:`watcher.jobs`).

Leaderboards come from the board the watcher keeps in MLflow (read by :func:`kept_board` only),
so the experiments and leaderboard routes make a few tracking calls whatever an experiment's
size. Importance comes from each run's ``feature_importance.csv``, cached (artifacts of a run
do not change).
"""

from __future__ import annotations

import collections
import csv
import math
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, ValidationError

from watcher.errors import TrackingError
from watcher.jobs import Job, JobRunner, QueueFull
from watcher.mlflow_io import EXPERIMENT_BATCH, MlflowTracking
from watcher.model import MAX_TOP_N, ON_DEMAND_RULE, TIED_WITH_LEADER, TRUE, ExperimentRecord, RunRecord
from watcher.selection import SELECTION_TAG, stored
from watcher.settings import WatcherSettings
from watcher.state import STATE_TAG, UNRANKED, ExperimentState, fingerprint

log = structlog.get_logger("watcher")

IMPORTANCE_CSV = "feature_importance.csv"
# The hyperparameters a leaderboard row shows (the trainer's search space), in this order.
MAIN_PARAMS = (
    "n_estimators",
    "max_depth",
    "learning_rate",
    "subsample",
    "colsample_bytree",
    "min_child_weight",
    "reg_lambda",
    "reg_alpha",
    "gamma",
    "max_leaves",
)
CSV_CACHE_SIZE = 512
# Ids MLflow can look up: anything else is answered 404 here, before a tracking call (MLflow
# rejects ``²`` or a 5000-character id with a server error, and reads an Arabic-Indic one as 1).
EXPERIMENT_ID = re.compile(r"[0-9]{1,19}")
MAX_EXPERIMENT_ID = 2**63 - 1
RUN_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,63}")  # MLflow also wants an alphanumeric first
# POST /api/retrain bodies are a run id and a list of names: a megabyte is plenty.
MAX_BODY_BYTES = 1_000_000
# How much of a name from a request an error message repeats.
ECHO_CHARS = 100
# The newest finished runs whose metric keys the Rank dialog offers, beside the board's.
METRIC_KEY_RUNS = 100
STATIC = resources.files("watcher") / "static"
STATIC_FILES = {"app.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}
# Everything the page loads comes from this server; data is never run as code.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


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


def iso_ms(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def iso_s(ts: float | None) -> str | None:
    return None if ts is None else iso_ms(int(ts * 1000))


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


@dataclass(frozen=True)
class FeatureRow:
    rank: int
    feature: str
    importance_mean: float | None
    importance_std: float | None
    shap_importance: float | None


def read_importance(path: Path) -> list[FeatureRow]:
    """Rows of a ``feature_importance.csv`` in its rank order; ValueError on a malformed file."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"feature", "importance_mean"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{IMPORTANCE_CSV} has no feature and importance_mean columns")
        rows = []
        for i, row in enumerate(reader, start=1):
            rows.append(
                FeatureRow(
                    rank=_int(row.get("rank")) or i,
                    feature=row["feature"],
                    importance_mean=_float(row.get("importance_mean")),
                    importance_std=_float(row.get("importance_std")),
                    shap_importance=_float(row.get("shap_importance")),
                )
            )
    return sorted(rows, key=lambda r: r.rank)


def _float(text: str | None) -> float | None:
    try:
        return finite(float(text)) if text not in (None, "") else None
    except ValueError:
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def across_leaders(per_run: Sequence[Sequence[FeatureRow]]) -> list[dict[str, Any]]:
    """Features ranked by mean permutation importance over the given runs (those that have them).

    ``mean_rank`` is the mean of the feature's rank in each run; ``runs`` how many runs have it.
    """
    sums: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
    for rows in per_run:
        for row in rows:
            acc = sums[row.feature]
            acc[0] += row.importance_mean or 0.0
            acc[1] += row.rank
            acc[2] += 1
    order = sorted(sums, key=lambda n: (-sums[n][0] / sums[n][2], sums[n][1] / sums[n][2], n))
    return [
        {
            "feature": name,
            "mean_importance": sums[name][0] / sums[name][2],
            "mean_rank": sums[name][1] / sums[name][2],
            "runs": int(sums[name][2]),
        }
        for name in order
    ]


class RetrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(min_length=1, max_length=64)
    exclude: list[str] | None = None
    drop_below: StrictFloat | None = None  # strict: ``true`` is not the number 1


def check_retrain(
    request: RetrainRequest, rows: Sequence[FeatureRow]
) -> tuple[list[str] | None, float | None]:
    """What to pass to ``trainer retrain``; ValueError (HTTP 400) saying what is wrong."""
    if (request.exclude is None) == (request.drop_below is None):
        raise ValueError("give exactly one of exclude (a list of features) and drop_below (a number)")
    features = [r.feature for r in rows]
    if request.exclude is not None:
        if not request.exclude:
            raise ValueError("exclude: name at least one feature to drop")
        known = set(features)
        unknown = [name for name in request.exclude if name not in known]
        if unknown:
            raise ValueError(f"exclude: run {request.run_id} has no feature {short(unknown[0])!r}")
        if set(request.exclude) >= known:
            raise ValueError(f"exclude: dropping all {len(known)} features leaves nothing to train on")
        awkward = [name for name in request.exclude if "," in name or name != name.strip()]
        if awkward:
            raise ValueError(
                f"exclude: feature {short(awkward[0])!r} cannot be passed to the trainer's --exclude "
                "(a comma or surrounding spaces); use drop_below instead"
            )
        return list(dict.fromkeys(request.exclude)), None
    threshold = request.drop_below
    assert threshold is not None
    if not math.isfinite(threshold):
        raise ValueError(f"drop_below must be a finite number, not {threshold}")
    below = [r for r in rows if r.importance_mean is not None and r.importance_mean < threshold]
    if not below:
        raise ValueError(f"drop_below: no feature of run {request.run_id} has importance below {threshold:g}")
    if len(below) >= len(rows):
        raise ValueError(
            f"drop_below: every feature of run {request.run_id} is below {threshold:g}; nothing left to train on"
        )
    return None, threshold


# ---- what the routes answer ----------------------------------------------------------------------


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


def job_view(job: Job, ui_base_url: str | None) -> JobView:
    experiment_id = job.experiment_id
    return JobView(
        job_id=job.job_id,
        status=job.status,
        run_id=job.run_id,
        new_run_id=job.new_run_id,
        new_run_url=run_url(ui_base_url, experiment_id, job.new_run_id)
        if job.new_run_id and experiment_id
        else None,
        exclude=list(job.exclude) if job.exclude is not None else None,
        drop_below=job.drop_below,
        created_at=iso_s(job.created_at),
        started_at=iso_s(job.started_at),
        ended_at=iso_s(job.ended_at),
        exit_code=job.exit_code,
        error=job.error,
        log_tail=job.log_tail(),
    )


# ---- the query object: everything the routes read ---------------------------------------------------


class _CsvCache:
    """Parsed ``feature_importance.csv`` per run id (a run's artifacts do not change)."""

    def __init__(self, tracking: MlflowTracking, size: int = CSV_CACHE_SIZE) -> None:
        self._tracking = tracking
        self._size = size
        self._rows: collections.OrderedDict[str, list[FeatureRow]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_id: str) -> list[FeatureRow] | None:
        with self._lock:
            if run_id in self._rows:
                self._rows.move_to_end(run_id)
                return self._rows[run_id]
        with tempfile.TemporaryDirectory(prefix="podium-dashboard-") as tmp:
            local = self._tracking.download_run_file(run_id, IMPORTANCE_CSV, tmp)
            if local is None:
                return None
            try:
                rows = read_importance(Path(local))
            except (ValueError, KeyError, UnicodeDecodeError) as e:
                log.warning("importance_unreadable", run_id=run_id, error=str(e))
                return None
        with self._lock:
            self._rows[run_id] = rows
            while len(self._rows) > self._size:
                self._rows.popitem(last=False)
        return rows


class DashboardQuery:
    """What the dashboard's routes read: the watcher's tracking adapter and settings, the
    retrain jobs, and the cache of parsed importance files. Lookups by id answer 404 naming
    the id (checked before MLflow sees it); tracking failures raise :class:`TrackingError`,
    answered 503 by the app's one handler (:func:`tracking_failed`)."""

    def __init__(
        self,
        tracking: MlflowTracking,
        settings: WatcherSettings,
        jobs: JobRunner,
        selection_of: Callable[[str], dict[str, Any] | None] = lambda _: None,
    ) -> None:
        # The selection statistics this daemon last computed for an experiment (with λ).
        self.selection_of = selection_of
        self.tracking = tracking
        self.settings = settings
        self.jobs = jobs
        self.ui_base_url = settings.ui_base_url
        self.importance = _CsvCache(tracking)

    def experiment(self, experiment_id: str) -> ExperimentRecord:
        """The active experiment, or 404."""
        exp = self.tracking.get_experiment(experiment_id) if valid_experiment_id(experiment_id) else None
        if exp is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, detail=f"no experiment with id {short(experiment_id)!r}"
            )
        return exp

    def run(self, run_id: str) -> RunRecord:
        """The active run, or 404."""
        run = self.tracking.get_run(run_id) if valid_run_id(run_id) else None
        if run is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no run with id {short(run_id)!r}")
        return run

    def ranked_board(self, exp: ExperimentRecord) -> KeptBoard:
        """The experiment's kept board, or 404 when it has not been ranked yet."""
        board = kept_board(exp.tags)
        if board is None or not board.entries:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                detail=f"experiment {exp.name!r} has not been ranked yet (no leaderboard)",
            )
        return board

    def board_runs(self, experiment_id: str, board: KeptBoard) -> dict[str, RunRecord]:
        """The kept board's runs still active, by id (one search)."""
        found = self.tracking.search_runs(
            [experiment_id], f"attributes.run_id IN ({quote_all(i for i, _ in board.entries)})"
        )
        return {r.run_id: r for r in found}

    def leaders(self, boards: Mapping[str, KeptBoard]) -> dict[str, RunRecord]:
        """The leaders of the boards (by experiment id), by run id: one search per batch."""
        leader_ids = {b.entries[0][0]: exp_id for exp_id, b in boards.items() if b.entries}
        leaders: dict[str, RunRecord] = {}
        items = sorted(leader_ids.items(), key=lambda kv: kv[1])
        for start in range(0, len(items), EXPERIMENT_BATCH):
            chunk = items[start : start + EXPERIMENT_BATCH]
            found = self.tracking.search_runs(
                sorted({exp_id for _, exp_id in chunk}),
                f"attributes.run_id IN ({quote_all(run_id for run_id, _ in chunk)})",
            )
            leaders.update({r.run_id: r for r in found})
        return leaders

    def url(self, experiment_id: str, run_id: str) -> str | None:
        return run_url(self.ui_base_url, experiment_id, run_id)


def dashboard_query(request: Request) -> DashboardQuery:
    query: DashboardQuery = request.app.state.dashboard
    return query


Dashboard = Annotated[DashboardQuery, Depends(dashboard_query)]

# GET routes, and the POST routes that the app puts behind the API's token.
router = APIRouter()
actions = APIRouter()


def install(app: FastAPI, query: DashboardQuery, require_token: Callable[..., None]) -> None:
    """Serve the dashboard from ``app``: its routes over ``query``, POSTs behind the token."""
    app.state.dashboard = query
    app.add_exception_handler(TrackingError, tracking_failed)
    app.include_router(router)
    app.include_router(actions, dependencies=[Depends(require_token)])


async def tracking_failed(request: Request, exc: Exception) -> JSONResponse:
    """A tracking failure: 503, the details (URLs, server messages) to the log only."""
    route = request.scope.get("route")
    log.error("dashboard_tracking_failed", route=getattr(route, "name", request.url.path), error=str(exc))
    return JSONResponse(
        {"detail": "the MLflow tracking server failed; see the watcher's log (dashboard_tracking_failed)"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
    )


# ---- the page ----------------------------------------------------------------------------------------


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
def page() -> Response:
    return Response(
        (STATIC / "index.html").read_bytes(), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS
    )


@router.get("/static/{name}", include_in_schema=False)
def static_file(name: str) -> Response:
    if name not in STATIC_FILES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no static file {name!r}")
    with resources.as_file(STATIC / name) as path:
        return FileResponse(path, media_type=STATIC_FILES[name], headers=PAGE_HEADERS)


# ---- experiments and leaderboards ----------------------------------------------------------------------


@router.get("/api/experiments", tags=["dashboard"])
def experiments(q: Dashboard) -> list[ExperimentView]:
    """Every experiment a rule watches now or that was ranked on demand, with its leader and counts."""
    shown = []
    for exp in sorted(q.tracking.search_experiments(), key=lambda e: e.name):
        board = kept_board(exp.tags)
        rule = q.settings.rule_for(exp.name)
        # A board a rule left behind (the experiment was renamed out of it) is not listed.
        if rule is None and (board is None or board.rule != ON_DEMAND_RULE):
            continue
        shown.append((exp, rule, board))
    leaders = q.leaders({e.experiment_id: b for e, _, b in shown if b is not None})
    out = []
    for exp, rule, board in shown:
        leader_run = leaders.get(board.entries[0][0]) if board and board.entries else None
        ranking = ranking_of(board, q.settings, leader_run, exp.name) if board else None
        metric, ascending = ranking if ranking else (rule.metric, rule.ascending) if rule else (None, None)
        leader = None
        if board and board.entries:
            run_id, value = board.entries[0]
            leader = Leader(
                run_id=run_id,
                run_name=leader_run.run_name if leader_run else None,
                value=value,
                url=q.url(exp.experiment_id, run_id),
            )
        out.append(
            ExperimentView(
                experiment_id=exp.experiment_id,
                experiment_name=exp.name,
                rule=board.rule if board else rule.name if rule else None,
                metric=metric,
                ascending=ascending,
                top_n=board.top_n if board else rule.top_n if rule else None,
                ranked_runs=board.ranked_runs if board else 0,
                unranked_runs=board.unranked_runs if board else 0,
                leader=leader,
                ranked_at=iso_ms(board.seen_ms) if board else None,
            )
        )
    return out


@router.get("/api/experiments/{experiment_id}/leaderboard", tags=["dashboard"])
def leaderboard(experiment_id: str, q: Dashboard) -> LeaderboardView:
    """The experiment's kept board: rank, run, value, production candidate, main hyperparameters."""
    exp = q.experiment(experiment_id)
    board = q.ranked_board(exp)
    runs = q.board_runs(experiment_id, board)
    ranking = ranking_of(board, q.settings, runs.get(board.entries[0][0]), exp.name)
    models = []
    keys: set[str] = set()
    for rank, (run_id, value) in enumerate(board.entries, start=1):
        run = runs.get(run_id)
        if run is None:  # deleted since the last ranking; the next pass puts the board right
            continue
        keys.update(run.metrics)
        models.append(
            ModelRow(
                rank=rank,
                run_id=run_id,
                run_name=run.run_name,
                value=value,
                production_candidate=rank <= board.production_candidates,
                url=q.url(experiment_id, run_id),
                params={k: run.params[k] for k in MAIN_PARAMS if k in run.params},
                total_features=_int(run.params.get("total_features")),
                retrained_from=run.tags.get("retrained_from"),
                tied_with_leader=run.tags.get(TIED_WITH_LEADER) == TRUE,
            )
        )
    return LeaderboardView(
        experiment_id=experiment_id,
        experiment_name=exp.name,
        rule=board.rule,
        metric=ranking[0] if ranking else None,
        ascending=ranking[1] if ranking else None,
        top_n=board.top_n,
        ranked_runs=board.ranked_runs,
        unranked_runs=board.unranked_runs,
        ranked_at=iso_ms(board.seen_ms),
        metric_keys=sorted_metric_keys(keys),
        models=models,
    )


@router.get("/api/experiments/{experiment_id}/selection", tags=["dashboard"])
def selection(experiment_id: str, q: Dashboard) -> dict[str, Any]:
    """Whether the leader is real: the ``podium.selection`` JSON plus λ per split and the tied
    and left-out runs, as this daemon last computed them. Computed by another process (or
    before a restart), the tag's JSON alone, with ``lambdas`` null."""
    exp = q.experiment(experiment_id)
    view = q.selection_of(experiment_id)
    if view is not None:
        return view
    kept = stored(exp.tags.get(SELECTION_TAG))
    if kept is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"experiment {exp.name!r} has no selection statistics (no rule with a 'selection' key ranked it)",
        )
    return {**kept, "lambdas": None}


@router.get("/api/experiments/{experiment_id}/metric-keys", tags=["dashboard"])
def metric_keys(experiment_id: str, q: Dashboard) -> MetricKeys:
    """The metric keys the Rank dialog offers: those of the kept board's runs and of the
    newest finished runs (at most three tracking calls whatever the experiment's size)."""
    exp = q.experiment(experiment_id)
    board = kept_board(exp.tags)
    keys: set[str] = set()
    if board is not None and board.entries:
        for run in q.board_runs(experiment_id, board).values():
            keys.update(run.metrics)
    # MLflow's default order is newest first: one page, no ordered scan.
    for run in q.tracking.search_runs(
        [experiment_id], "attributes.status = 'FINISHED'", limit=METRIC_KEY_RUNS
    ):
        keys.update(run.metrics)
    return MetricKeys(experiment_id=experiment_id, metric_keys=sorted_metric_keys(keys))


# ---- importance ----------------------------------------------------------------------------------------


@router.get("/api/runs/{run_id}/importance", tags=["dashboard"])
def run_importance(run_id: str, q: Dashboard) -> RunImportance:
    """A run's features from its feature_importance.csv: permutation mean and std, SHAP."""
    run = q.run(run_id)
    rows = q.importance.get(run_id)
    if rows is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"run {run_id} has no {IMPORTANCE_CSV} artifact"
        )
    return RunImportance(
        run_id=run_id,
        run_name=run.run_name,
        experiment_id=run.experiment_id,
        status=run.status,
        total_features=_int(run.params.get("total_features")) or len(rows),
        retrained_from=run.tags.get("retrained_from"),
        url=q.url(run.experiment_id, run_id),
        metrics={k: finite(v) for k, v in run.metrics.items() if k.startswith("avg_")},
        features=rows,
    )


@router.get("/api/experiments/{experiment_id}/importance", tags=["dashboard"])
def experiment_importance(
    experiment_id: str,
    q: Dashboard,
    top_n: int = Query(default=10, ge=1, le=MAX_TOP_N, description="How many leaders to read"),
) -> ExperimentImportance:
    """The features that matter across the top N runs: mean importance and mean rank."""
    exp = q.experiment(experiment_id)
    board = q.ranked_board(exp)
    used: list[str] = []
    per_run: list[list[FeatureRow]] = []
    for run_id, _ in board.entries[:top_n]:
        rows = q.importance.get(run_id)
        if rows is not None:
            used.append(run_id)
            per_run.append(rows)
    return ExperimentImportance(
        experiment_id=experiment_id,
        experiment_name=exp.name,
        top_n=top_n,
        runs=used,
        features=[LeadersFeature(**f) for f in across_leaders(per_run)],
    )


# ---- retraining ------------------------------------------------------------------------------------------


@actions.post(
    "/api/retrain",
    tags=["dashboard"],
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobView,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": RetrainRequest.model_json_schema()}},
        }
    },
    responses={
        400: {"description": "Bad body, unknown feature, nothing or everything to drop"},
        401: {"description": "Missing or wrong bearer token"},
        404: {"description": "Unknown run"},
        413: {"description": "The body is larger than a megabyte"},
        415: {"description": "The body is not declared as JSON"},
        429: {"description": "The job queue is full"},
    },
)
async def retrain(request: Request, q: Dashboard) -> JSONResponse:
    """Queue ``python -m trainer retrain`` for a run, without the features named or below a threshold."""
    # A page of another site can POST text/plain here without asking (no CORS preflight);
    # application/json it cannot, so a watcher without a token is not retrained from afar.
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            detail="the body must be JSON (Content-Type: application/json)",
        )
    raw = await _read_bounded(request, MAX_BODY_BYTES)
    try:
        body = RetrainRequest.model_validate_json(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=f"{where}: {first.get('msg')}") from e
    return await _run_sync(lambda: _queue_retrain(q, body))


def _queue_retrain(q: DashboardQuery, body: RetrainRequest) -> JSONResponse:
    run = q.run(body.run_id)
    rows = q.importance.get(body.run_id)
    if rows is None:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            detail=f"run {body.run_id} has no {IMPORTANCE_CSV} artifact, so nothing to retrain by",
        )
    try:
        exclude, drop_below = check_retrain(body, rows)
    except ValueError as e:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(e)) from e
    try:
        job = q.jobs.submit(
            body.run_id, exclude=exclude, drop_below=drop_below, experiment_id=run.experiment_id
        )
    except QueueFull as e:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, detail=str(e)) from e
    log.info("api_retrain_queued", job_id=job.job_id, run_id=body.run_id)
    return JSONResponse(job_view(job, q.ui_base_url).model_dump(), status_code=status.HTTP_202_ACCEPTED)


@router.get("/api/jobs/{job_id}", tags=["dashboard"])
def get_job(job_id: str, q: Dashboard) -> JobView:
    """One retrain job: status, the new run once known, and the tail of its log."""
    job = q.jobs.get(job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job with id {job_id!r}")
    return job_view(job, q.ui_base_url)


@router.get("/api/jobs", tags=["dashboard"])
def list_jobs(q: Dashboard) -> list[JobView]:
    """Recent retrain jobs, newest first."""
    return [job_view(j, q.ui_base_url) for j in q.jobs.recent()]


async def _read_bounded(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it (or its declared length) exceeds ``limit`` bytes."""
    too_large = HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE, detail=f"the body must be at most {limit} bytes"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _run_sync(fn: Callable[[], JSONResponse]) -> JSONResponse:
    """Run blocking tracking calls off the event loop (as FastAPI does for sync routes)."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn)
