"""The watcher's HTTP API: health, Prometheus metrics and the guide's `POST /models/rank`.

The API's routes live in this module; the training dashboard (the page at `/` and its `/api/*`
routes, `watcher.dashboard`) is included beside them, behind the same token. The app is a
thin shell: ranking goes through `Watcher.rank_now`, the same code the scheduled passes use.
`serve_in_thread` runs it with uvicorn in a thread of the daemon, beside the scheduler.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import urlsplit

import structlog
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from watcher import dashboard, metrics
from watcher.errors import ConfigError, ExperimentNotFound, NoRankedRuns, TrackingError
from watcher.jobs import JobRunner
from watcher.model import MAX_TOP_N, iso_time

if TYPE_CHECKING:
    from watcher.model import ExperimentRecord, Leaderboard
    from watcher.service import Watcher
    from watcher.settings import HttpConfig

log = structlog.get_logger(__name__)

# The guide: "production_candidate: Only for top 3 models".
PRODUCTION_CANDIDATES = 3
STARTUP_TIMEOUT_S = 10.0
GRACEFUL_SHUTDOWN_S = 5

# Module level: with postponed annotations FastAPI resolves `Depends(_bearer)` in module globals.
_bearer = HTTPBearer(auto_error=False, description="Required on POST when http.token_env is set.")


# ---- response bodies: exactly the guide's JSON ---------------------------------------------------


class RankedModel(BaseModel):
    rank: int
    run_id: str
    metric: str
    value: float
    run_name: str | None


class RankSummary(BaseModel):
    best_value: float
    worst_value: float
    best_run_id: str


class RankResponse(BaseModel):
    experiment_name: str
    metric: str
    top_n: int
    total_ranked: int
    models: list[RankedModel]
    summary: RankSummary


class Health(BaseModel):
    status: Literal["ok", "starting", "unhealthy"]
    started_at: str | None
    last_pass_at: str | None
    last_pass_ok: bool | None
    last_success_at: str | None
    poll_interval_seconds: float


def rank_response(board: Leaderboard) -> RankResponse:
    """The guide's response for a leaderboard with at least one entry."""
    models = [
        RankedModel(rank=e.rank, run_id=e.run_id, metric=board.metric, value=e.value, run_name=e.run_name)
        for e in board.entries
    ]
    return RankResponse(
        experiment_name=board.experiment_name,
        metric=board.metric,
        top_n=board.top_n,
        total_ranked=len(models),
        models=models,
        summary=RankSummary(
            best_value=models[0].value, worst_value=models[-1].value, best_run_id=models[0].run_id
        ),
    )


def _netloc(host: str, scheme: str) -> str:
    """``host[:port]`` lower-cased, without the scheme's default port."""
    host = host.strip().lower()
    default = {"http": ":80", "https": ":443"}.get(scheme, "")
    return host[: -len(default)] if default and host.endswith(default) else host


def foreign_origin(headers: Mapping[str, str], scheme: str) -> str | None:
    """Why a POST comes from a page of another origin, or None when it does not.

    Browsers name the page's origin in ``Origin`` on every POST (even ``mode: "no-cors"``,
    which needs no CORS preflight), or at least ``Sec-Fetch-Site``; curl and scripts send
    neither and are let through (the token, when set, still applies).
    """
    host = _netloc(headers.get("host", ""), scheme)
    origin = headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin.strip())
        if origin.strip() == "null" or not parts.netloc or _netloc(parts.netloc, parts.scheme) != host:
            return f"Origin {origin[:100]!r} is not this server ({host})"
        return None
    if headers.get("sec-fetch-site", "").lower() == "cross-site":
        return "Sec-Fetch-Site: cross-site"
    return None


# ---- the app -------------------------------------------------------------------------------------


def create_app(
    watcher: Watcher,
    *,
    token: str | None = None,
    clock: Callable[[], float] = time.time,
    jobs: JobRunner | None = None,
) -> FastAPI:
    """The FastAPI app over one `Watcher`. With `token`, POST routes need `Authorization: Bearer`.

    `jobs` runs the dashboard's retrain jobs (default: a runner on the watcher's tracking URI);
    it is kept in `app.state.jobs`, and `ApiServer.stop()` stops it.
    """
    app = FastAPI(
        title="Podium watcher",
        summary="Leaderboards of MLflow experiments, kept current by the Podium sidecar.",
        version="0.1.0",
    )

    @app.middleware("http")
    async def same_origin_posts(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """A page on another site must not rank or retrain through a visitor's browser."""
        if request.method == "POST":
            why = foreign_origin(request.headers, request.url.scheme)
            if why is not None:
                log.warning("api_cross_origin_refused", path=request.url.path, reason=why)
                return JSONResponse(
                    {"detail": f"cross-origin POST refused: {why}"}, status_code=status.HTTP_403_FORBIDDEN
                )
        return await call_next(request)

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if token is None:
            return
        if credentials is None or not secrets.compare_digest(
            credentials.credentials.encode(), token.encode()
        ):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="missing or wrong bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    def healthz() -> JSONResponse:
        """200 while a pass succeeded within three poll intervals, or, "starting", the watcher
        started within three poll intervals and no pass succeeded yet; else 503."""
        health = watcher.health
        state = health.status(clock())
        body = Health(
            status=state,
            started_at=iso_time(health.started_at),
            last_pass_at=iso_time(health.last_pass_at),
            last_pass_ok=health.last_ok,
            last_success_at=iso_time(health.last_success_at),
            poll_interval_seconds=health.poll_interval_seconds,
        )
        return JSONResponse(body.model_dump(), status_code=503 if state == "unhealthy" else 200)

    @app.get("/metrics", response_class=Response)
    def prometheus_metrics() -> Response:
        """Prometheus text exposition of the watcher's counters."""
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/models/rank",
        response_model=RankResponse,
        dependencies=[Depends(require_token)],
        responses={
            401: {"description": "Missing or wrong bearer token"},
            404: {"description": "Unknown experiment, or no run has the metric"},
            503: {"description": "The tracking server failed"},
        },
    )
    def rank_models(
        experiment_name: Annotated[str, Query(min_length=1, description="MLflow experiment name")],
        metric: Annotated[str, Query(min_length=1, description="Metric to rank by")] = "avg_test_r2",
        # At most the kept board's size: a larger top_n could not be tagged.
        top_n: Annotated[int, Query(ge=1, le=MAX_TOP_N, description="Number of top models to tag")] = 10,
        ascending: Annotated[bool, Query(description="Sort direction; false: higher is better")] = False,
    ) -> RankResponse:
        """Rank the experiment's finished runs by `metric` now and tag the top `top_n`."""
        try:
            board = watcher.rank_now(
                experiment_name,
                metric,
                top_n,
                ascending,
                production_candidates=min(PRODUCTION_CANDIDATES, top_n),
            )
        except ExperimentNotFound as e:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(e)) from e
        except NoRankedRuns as e:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(e)) from e
        except TrackingError as e:
            # The details (URLs, server messages) go to the log, not to the HTTP client.
            log.error("api_rank_failed", experiment_name=experiment_name, error=str(e))
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                detail="the MLflow tracking server failed; see the watcher's log (api_rank_failed)",
            ) from e
        if not board.entries:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                detail=f"experiment {experiment_name!r}: no finished run has a finite {metric!r}",
            )
        log.info("api_ranked", experiment_name=experiment_name, metric=metric, top_n=top_n)
        query.ranked_on_demand()  # the experiments table looks for on-demand boards again
        return rank_response(board)

    if jobs is None:
        jobs = JobRunner(watcher.tracking.tracking_uri).start()
    app.state.jobs = jobs
    query = dashboard.DashboardQuery(
        watcher.tracking, watcher.settings, jobs, watcher.selection_view, kept=kept_listing(watcher)
    )
    dashboard.install(app, query, require_token)
    return app


def kept_listing(watcher: Watcher) -> Callable[[], list[ExperimentRecord] | None]:
    """What the dashboard's experiments table reads: the watched experiments the daemon's last
    pass kept (read at each call), or None before its first listing (the table lists itself)."""

    def kept() -> list[ExperimentRecord] | None:
        listing = watcher.memory.listing  # replaced whole after each pass: read at each call
        return listing.records() if listing.listed_at is not None else None

    return kept


# ---- serving it inside the daemon ----------------------------------------------------------------


def resolve_token(http: HttpConfig, environ: Mapping[str, str] = os.environ) -> str | None:
    """The bearer token named by `http.token_env`; None when unset. Never logged."""
    if not http.token_env:
        return None
    token = environ.get(http.token_env, "")
    if not token:
        raise ConfigError(
            f"http.token_env: environment variable {http.token_env} is not set or empty; "
            "set it to the bearer token the API must require"
        )
    return token


def is_loopback(host: str) -> bool:
    """True when every address `host` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_bind(http: HttpConfig, token: str | None) -> None:
    """Refuse an API open to the network without a token unless the config insists."""
    if token is None and not http.allow_insecure_bind and not is_loopback(http.host):
        raise ConfigError(
            f"http.host: {http.host} is not a loopback address and no bearer token is set; "
            "set http.token_env (and that variable), bind 127.0.0.1, or set "
            "http.allow_insecure_bind: true to expose POST /models/rank without a token"
        )


def bind_socket(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket, so bind errors surface in the caller's thread."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise ConfigError(f"http.host: cannot resolve {host!r}: {e}") from e
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise ConfigError(f"http: cannot listen on {host}:{port}: {e.strerror or e}") from e
    sock.set_inheritable(True)
    return sock


@dataclass
class ApiServer:
    """uvicorn serving the app in a daemon thread; `stop()` ends it within a few seconds."""

    server: uvicorn.Server
    thread: threading.Thread
    host: str
    port: int
    jobs: JobRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = GRACEFUL_SHUTDOWN_S + 2) -> None:
        """End a running retrain job (its run ends KILLED), then stop serving; idempotent."""
        if self.jobs is not None:
            self.jobs.stop()
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():  # connections that outlived the graceful window
            self.server.force_exit = True
            self.thread.join(2)
        log.info("api_stopped", url=self.url)


def serve_in_thread(
    watcher: Watcher,
    http: HttpConfig,
    *,
    environ: Mapping[str, str] = os.environ,
    clock: Callable[[], float] = time.time,
) -> ApiServer:
    """Check the bind, bind, and serve `create_app(watcher)` until `ApiServer.stop()`.

    Raises `ConfigError` for a network bind without a token, a missing token variable, or an
    address that cannot be bound; the daemon turns that into exit code 2 before any pass.
    """
    token = resolve_token(http, environ)
    check_bind(http, token)
    sock = bind_socket(http.host, http.port)
    api = run_in_thread(create_app(watcher, token=token, clock=clock), sock)
    log.info("api_started", url=api.url, token_required=token is not None)
    return api


def run_in_thread(app: FastAPI, sock: socket.socket) -> ApiServer:
    """Serve `app` with uvicorn on a bound socket in a daemon thread; return once it listens."""
    config = uvicorn.Config(
        app,
        log_config=None,  # keep the daemon's logging (structlog) as it is
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="podium-api", daemon=True)
    host, port = sock.getsockname()[:2]
    api = ApiServer(server, thread, str(host), int(port), getattr(app.state, "jobs", None))
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            api.stop()
            sock.close()
            raise ConfigError(f"http: the API on {api.host}:{api.port} did not start")
        time.sleep(0.02)
    return api
