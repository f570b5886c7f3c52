"""The dashboard's routes, at module level over one query object (:mod:`watcher.dashboard.query`).

Leaderboards come from the board the watcher keeps in MLflow (:func:`~watcher.dashboard.board.kept_board`),
so the leaderboard routes make a few tracking calls whatever an experiment's size; the
experiments table and the universe view come from the daemon's kept listing
(:mod:`watcher.dashboard.universe`). Bad parameters answer 400 naming the parameter; tracking
failures answer 503 through the one handler, :func:`tracking_failed`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from importlib import resources
from typing import Any, Literal

import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import FileResponse, JSONResponse, Response

from watcher.dashboard import retrain
from watcher.dashboard.board import finite, kept_board, ranking_of, sorted_metric_keys
from watcher.dashboard.importance import IMPORTANCE_CSV, across_leaders, parse_int
from watcher.dashboard.models import (
    TABLE_HEADERS,
    ExperimentImportance,
    ExperimentView,
    FeatureRow,
    LeaderboardView,
    LeadersFeature,
    MetricKeys,
    ModelRow,
    RunImportance,
    UniverseView,
)
from watcher.dashboard.query import Dashboard, DashboardQuery
from watcher.dashboard.universe import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    UNIVERSE_ORDER,
    BadParameter,
    Table,
    TableQuery,
    csv_text,
    experiment_view,
    overviews,
    sorted_by,
    table,
    table_query,
    universe_row,
    universe_sort_key,
)
from watcher.errors import TrackingError
from watcher.hyperparameters import view as hyperparameters_view
from watcher.model import MAX_TOP_N, TIED_WITH_LEADER, TRUE, iso_time_ms
from watcher.selection import SELECTION_TAG, stored

log = structlog.get_logger("watcher")

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


router = APIRouter()


def install(app: FastAPI, query: DashboardQuery, require_token: Callable[..., None]) -> None:
    """Serve the dashboard from ``app``: its routes over ``query``, POSTs behind the token."""
    app.state.dashboard = query
    app.add_exception_handler(TrackingError, dashboard_error)
    app.add_exception_handler(BadParameter, dashboard_error)
    app.include_router(router)
    app.include_router(retrain.jobs)
    app.include_router(retrain.actions, dependencies=[Depends(require_token)])


async def dashboard_error(request: Request, exc: Exception) -> JSONResponse:
    """The one error handler: a bad parameter is 400 naming it; a tracking failure 503, its
    details (URLs, server messages) to the log only."""
    if isinstance(exc, BadParameter):
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_400_BAD_REQUEST)
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


@router.get(
    "/api/experiments",
    tags=["dashboard"],
    response_model=list[ExperimentView],
    responses={
        200: {
            "description": "The experiments (one page with page or page_size); paging, sort and counts in headers",
            "headers": {
                name: {"description": text, "schema": {"type": kind}}
                for name, (kind, text) in TABLE_HEADERS.items()
            },
        },
        400: {"description": "A bad parameter (named), or a page past the last"},
    },
)
def experiments(
    response: Response,
    q: Dashboard,
    page: int | None = Query(default=None, description="The page, from 1 (default: no paging)"),
    page_size: int | None = Query(
        default=None,
        description=f"Experiments per page, 1 to {MAX_PAGE_SIZE} "
        f"(default: every experiment; {DEFAULT_PAGE_SIZE} when only page is given)",
    ),
    sort: str = Query(default="name", description="name, value, pbo, dsr, tied or ranked_at"),
    order: str | None = Query(default=None, description="asc or desc (default: the best first)"),
    search: str = Query(default="", alias="q", description="A part of the experiment's name"),
    rule: str | None = Query(default=None, description="Only the experiments of this rule"),
    state: str = Query(default="all", description="all, ranked, not_ranked, gated or needs_attention"),
) -> list[ExperimentView]:
    """The experiments a rule watches or that were ranked on demand, with their leaders,
    selection statistics and the gate's verdict: every one that passes the filters, or a page
    of them. The paging, the sort applied and the counts per state come as headers
    (``X-Total-Count``, ``X-Podium-Counts``, ...). Computed from the daemon's kept listing: no
    listing call while it has one."""
    wanted = table_query(
        page=page,
        page_size=page_size,
        sort=sort,
        order=order,
        q=search,
        rule=rule,
        state=state,
        known_rules=(r.name for r in q.settings.rules),
    )
    records, from_kept = q.experiments()
    shown = table(overviews(records, q.settings), wanted)
    leaders = q.leader_infos(shown.rows)
    response.headers.update(table_headers(shown, wanted, "kept" if from_kept else "listed"))
    return [
        experiment_view(o, leaders.get(o.leader[0]) if o.leader else None, q.ui_base_url) for o in shown.rows
    ]


def table_headers(shown: Table, wanted: TableQuery, source: str) -> dict[str, str]:
    """The experiments table's headers (:data:`TABLE_HEADERS`), readable by a page of another
    origin too (``Access-Control-Expose-Headers``)."""
    values = {
        "X-Total-Count": str(shown.total),
        "X-Page": str(wanted.page),
        "X-Page-Size": str(wanted.page_size or len(shown.rows)),
        "X-Pages": str(shown.pages),
        "X-Podium-Sort": wanted.sort,
        "X-Podium-Order": wanted.order,
        "X-Podium-Counts": shown.counts.model_dump_json(),
        # ASCII-only JSON: header values are Latin-1.
        "X-Podium-Rules": json.dumps(shown.rules, separators=(",", ":")),
        "X-Podium-Source": source,
    }
    return {**values, "Access-Control-Expose-Headers": ", ".join(values)}


@router.get(
    "/api/rules/{rule}/leaders",
    tags=["dashboard"],
    response_model=UniverseView,
    responses={
        200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with format=csv"},
        400: {"description": "A bad parameter (named)"},
        404: {"description": "No rule of that name"},
    },
)
def rule_leaders(
    rule: str,
    q: Dashboard,
    format: Literal["json", "csv"] = Query(default="json", description="json or csv"),
    sort: str = Query(
        default="value",
        description="a column: name, value, pbo, dsr, tied, ranked_at, avg_test_ic, oos_sharpe",
    ),
    order: str | None = Query(default=None, description="asc or desc (default: the best first)"),
) -> Response | UniverseView:
    """The universe view: every experiment of a rule with its leader, value, PBO, tied count,
    the gate's verdict and the leader's trading scores; as JSON or as a CSV download."""
    known = {r.name for r in q.settings.rules}
    if rule not in known | {"api"}:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no rule named {rule[:100]!r}")
    wanted = table_query(
        page=1, page_size=1, sort=sort, order=order, q="", rule=rule, state="all",
        known_rules=known, orders=UNIVERSE_ORDER,
    )  # fmt: skip
    records, _ = q.experiments()
    rows = [o for o in overviews(records, q.settings) if rule in o.rules]
    leaders = q.leader_infos(rows)
    view = [universe_row(o, leaders.get(o.leader[0]) if o.leader else None, q.ui_base_url) for o in rows]
    view = sorted_by(view, universe_sort_key(wanted.sort, rows), wanted.order)
    if format == "csv":
        filename = re.sub(r"[^A-Za-z0-9_.-]", "_", rule)[:60] or "rule"
        return Response(
            csv_text(view),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="podium-{filename}-leaders.csv"'},
        )
    owner = next((r for r in q.settings.rules if r.name == rule), None)
    return UniverseView(
        rule=rule,
        metric=owner.metric if owner else None,
        ascending=owner.ascending if owner else None,
        sort=wanted.sort,
        order=wanted.order,
        rows=view,
    )


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
                total_features=parse_int(run.params.get("total_features")),
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
        ranked_at=iso_time_ms(board.seen_ms),
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


@router.get("/api/experiments/{experiment_id}/hyperparameters", tags=["dashboard"])
def hyperparameters(experiment_id: str, q: Dashboard) -> dict[str, Any]:
    """Which hyperparameters mattered: the trainer's ``podium.hyperparameters`` tag (fANOVA
    shares summing to 1, largest first, and each one's range among the best runs) with the
    experiment, or ``reason`` saying why there is none (no sweep wrote it yet, too few runs)."""
    exp = q.experiment(experiment_id)
    return hyperparameters_view(experiment_id, exp.name, exp.tags)


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
        total_features=parse_int(run.params.get("total_features")) or len(rows),
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
