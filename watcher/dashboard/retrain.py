"""Retraining from the dashboard: ``POST /api/retrain`` queues ``python -m trainer retrain`` for
a run (checked first: the run, its importance file, the features named or the threshold), and
``GET /api/jobs`` follows the jobs (:mod:`watcher.jobs`)."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from watcher.dashboard.board import run_url
from watcher.dashboard.importance import IMPORTANCE_CSV, check_retrain
from watcher.dashboard.models import JobView, RetrainRequest
from watcher.dashboard.query import Dashboard, DashboardQuery
from watcher.jobs import Job, QueueFull, TrainerMissing
from watcher.model import iso_time

log = structlog.get_logger("watcher")

# POST /api/retrain bodies are a run id and a list of names: a megabyte is plenty.
MAX_BODY_BYTES = 1_000_000

# The jobs' GET routes, and the POST route that the app puts behind the API's token.
jobs = APIRouter()
actions = APIRouter()


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
        created_at=iso_time(job.created_at),
        started_at=iso_time(job.started_at),
        ended_at=iso_time(job.ended_at),
        exit_code=job.exit_code,
        error=job.error,
        log_tail=job.log_tail(),
    )


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
        501: {"description": "This watcher has no trainer (the sidecar image): retrain needs the full image"},
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
    if q.jobs.missing:  # the sidecar image: no trainer to run, whatever the run
        raise HTTPException(status.HTTP_501_NOT_IMPLEMENTED, detail=str(TrainerMissing(q.jobs.missing)))
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


@jobs.get("/api/jobs/{job_id}", tags=["dashboard"])
def get_job(job_id: str, q: Dashboard) -> JobView:
    """One retrain job: status, the new run once known, and the tail of its log."""
    job = q.jobs.get(job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job with id {job_id!r}")
    return job_view(job, q.ui_base_url)


@jobs.get("/api/jobs", tags=["dashboard"])
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
    return await run_in_threadpool(fn)
