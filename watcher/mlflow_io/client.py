"""MLflow tracking calls: experiments, runs, their tags, metric history, artifacts.

Every call goes through :meth:`MlflowTracking._call`, which counts it (pass summary, Prometheus
``TRACKING_CALLS``) and turns MLflow's exceptions into :class:`TrackingError`
(:class:`TrackingNotFound` when MLflow says the object does not exist or was deleted).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import structlog
from mlflow.entities import Experiment, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.store.entities.paged_list import PagedList
from mlflow.tracking import MlflowClient

from watcher import metrics
from watcher.errors import ConfigError, TrackingError, TrackingNotFound
from watcher.model import ExperimentRecord, RunRecord
from watcher.settings import redact_uri

log = structlog.get_logger("watcher")

# The server rejects larger pages (SEARCH_MAX_RESULTS_THRESHOLD).
MAX_PAGE = 50_000
# Experiments per batch search (``experiment_id IN (...)``): a universe of 1,000 is one batch
# (one search over 1,000 experiments answers faster than ten of 100; BENCHMARKS.md, "Batch
# searches").
EXPERIMENT_BATCH = 1000

# Told of every experiment tag this process wrote (value) or deleted (None), once MLflow took it.
TagListener = Callable[[str, str, str | None], None]

# MLflow's client retries a failing request 7 times with minutes of back-off by default; a
# daemon pass must fail fast and try again on the next tick instead. MLflow reads these at
# each request.
CLIENT_ENVIRONMENT = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def lower_client_retries() -> None:
    """Set :data:`CLIENT_ENVIRONMENT` for this process, keeping any value already set; the
    CLI calls it at start, before the first tracking call."""
    for name, value in CLIENT_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def _missing(e: MlflowException) -> bool:
    """MLflow answered that the object (experiment, run, tag, registered model, version,
    alias) does not exist, or is deleted."""
    code = getattr(e, "error_code", "")
    text = str(e.message).lower()
    return code == "RESOURCE_DOES_NOT_EXIST" or (
        code == "INVALID_PARAMETER_VALUE" and any(w in text for w in ("active", "deleted", "not found"))
    )


def _is_duplicate_key(e: MlflowException) -> bool:
    """The server's store refused an insert on a unique key (sqlite, PostgreSQL, MySQL)."""
    text = str(e.message)
    return any(m in text for m in ("UNIQUE constraint failed", "duplicate key value", "Duplicate entry"))


def _is_stale_update(e: MlflowException) -> bool:
    """The server's store updated a row that another client deleted after it was read."""
    text = str(e.message)
    return "expected to update" in text and "0 were matched" in text


class MlflowTracking:
    """Adapter over :class:`MlflowClient`; counts calls in ``calls_by_method`` and the run
    tag changes that reached MLflow in ``tag_writes`` (and per experiment). Every experiment
    tag it writes or deletes is told to ``tag_listeners`` (the watcher's kept listing), shared
    with its :meth:`twin`."""

    def __init__(
        self, tracking_uri: str | None = None, tag_listeners: list[TagListener] | None = None
    ) -> None:
        try:
            self._client = MlflowClient(tracking_uri=tracking_uri)
        except MlflowException as e:
            # MLflow builds the store at once: a scheme it does not know (``htp://``) or a store
            # it refuses (``file:``) is the user's URI, not a failed pass.
            uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "(MLflow's default)"
            first = (str(e.message).strip().splitlines() or [""])[0].replace(uri, redact_uri(uri))
            raise ConfigError(f"tracking URI {redact_uri(uri)!r} cannot be used: {first}") from e
        self.calls_by_method: Counter[str] = Counter()
        # Run tag changes MLflow accepted (a pass reports the difference, not what it planned),
        # in all and per experiment (a pass writes several experiments at once).
        self.tag_writes = 0
        self.tag_writes_by_experiment: Counter[str] = Counter()
        self._counts = threading.Lock()
        self.tag_listeners: list[TagListener] = tag_listeners if tag_listeners is not None else []

    def twin(self) -> MlflowTracking:
        """An adapter of its own (its calls counted apart, e.g. the delivery worker's) to the
        same server, whose experiment tag writes reach the same listeners."""
        return MlflowTracking(self.tracking_uri, tag_listeners=self.tag_listeners)

    def _told(self, experiment_id: str, key: str, value: str | None) -> None:
        for listener in list(self.tag_listeners):
            listener(experiment_id, key, value)

    @property
    def tracking_uri(self) -> str:
        return str(self._client.tracking_uri)

    @property
    def calls(self) -> int:
        return sum(self.calls_by_method.values())

    def _call(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        with self._counts:
            self.calls_by_method[name] += 1
        metrics.TRACKING_CALLS.labels(call=name).inc()
        try:
            return fn(*args, **kwargs)
        except MlflowException as e:
            error = TrackingNotFound if _missing(e) else TrackingError
            raise error(f"{name} failed: {e.message}") from e
        except Exception as e:  # connection errors, timeouts, malformed answers
            raise TrackingError(f"{name} failed: {type(e).__name__}: {e}") from e

    # -- experiments -------------------------------------------------------------------------

    def search_experiments(
        self, filter_string: str | None = None, *, deleted_too: bool = False
    ) -> list[ExperimentRecord]:
        """Active experiments (with their tags) matching an MLflow experiment filter; with
        ``deleted_too`` the deleted ones as well (``deleted`` set)."""
        found: list[ExperimentRecord] = []
        token: str | None = None
        while True:
            page = self._call(
                "search_experiments",
                self._client.search_experiments,
                view_type=ViewType.ALL if deleted_too else ViewType.ACTIVE_ONLY,
                max_results=MAX_PAGE,
                filter_string=filter_string,
                page_token=token,
            )
            found.extend(_experiment(e) for e in page)
            token = page.token
            if not token:
                return found

    def get_experiment_by_name(self, name: str) -> ExperimentRecord | None:
        exp = self._call("get_experiment_by_name", self._client.get_experiment_by_name, name)
        if exp is None or exp.lifecycle_stage != "active":
            return None
        return _experiment(exp)

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        try:
            self._call("set_experiment_tag", self._client.set_experiment_tag, experiment_id, key, value)
        except TrackingError as e:
            # The server sets an experiment tag by a read, then an insert or an update: two
            # writers creating one tag at once (replicas: their podium.state and outbox tags are
            # the same) make one fail on the unique key, and a tag deleted between the read and
            # the update (a replica that delivered an outbox entry, a state deleted by hand)
            # makes the update match no row. A second try updates, or inserts, it.
            cause = e.__cause__
            if not (
                isinstance(cause, MlflowException) and (_is_duplicate_key(cause) or _is_stale_update(cause))
            ):
                raise
            self._call("set_experiment_tag", self._client.set_experiment_tag, experiment_id, key, value)
        self._told(experiment_id, key, value)

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None:
        """Delete an experiment tag; a tag that is already gone is not an error."""
        with contextlib.suppress(TrackingNotFound):
            self._call("delete_experiment_tag", self._client.delete_experiment_tag, experiment_id, key)
        self._told(experiment_id, key, None)

    # -- runs --------------------------------------------------------------------------------

    def search_runs(
        self,
        experiment_ids: Sequence[str],
        filter_string: str = "",
        *,
        order_by: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        """Active runs matching the filter, following page tokens up to ``limit`` runs."""
        return list(self.iter_runs(experiment_ids, filter_string, order_by=order_by, limit=limit))

    def iter_runs(
        self,
        experiment_ids: Sequence[str],
        filter_string: str = "",
        *,
        order_by: Sequence[str] | None = None,
        limit: int | None = None,
        page_size: int = MAX_PAGE,
    ) -> Iterator[RunRecord]:
        """Like :meth:`search_runs`, page by page, so a caller can stop early."""
        if not experiment_ids:
            return
        seen = 0
        token: str | None = None
        while True:
            size = page_size if limit is None else max(1, min(page_size, limit - seen))
            page = self._search_runs(experiment_ids, filter_string, size, token, order_by)
            for run in page:
                yield _run(run)
                seen += 1
            token = page.token
            if not token or (limit is not None and seen >= limit):
                return

    def search_page(
        self,
        experiment_ids: Sequence[str],
        filter_string: str,
        page_size: int,
        token: str | None = None,
        *,
        order_by: Sequence[str] | None = None,
    ) -> tuple[list[RunRecord], str | None]:
        """One page of a search (MLflow's default order unless ``order_by``) and the token of
        the next page (None: the last)."""
        if not experiment_ids:
            return [], None
        page = self._search_runs(experiment_ids, filter_string, page_size, token, order_by)
        return [_run(r) for r in page], page.token or None

    def _search_runs(
        self,
        experiment_ids: Sequence[str],
        filter_string: str,
        max_results: int,
        token: str | None,
        order_by: Sequence[str] | None,
    ) -> PagedList[Run]:
        """One ``search_runs`` call over the active runs."""
        page: PagedList[Run] = self._call(
            "search_runs",
            self._client.search_runs,
            experiment_ids=list(experiment_ids),
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=max_results,
            order_by=list(order_by) if order_by else None,
            page_token=token,
        )
        return page

    def set_run_tags(self, run_id: str, tags: Mapping[str, str], *, experiment_id: str = "") -> bool:
        """Set several tags of one run in one ``log_batch``; False if the run is gone. Accepted
        tags count in ``tag_writes`` (and ``experiment_id``'s count) at once."""
        try:
            self._call(
                "log_batch",
                self._client.log_batch,
                run_id,
                tags=[RunTag(k, v) for k, v in tags.items()],
            )
        except TrackingNotFound:
            return False
        self._accepted(experiment_id, len(tags))
        return True

    def delete_run_tag(self, run_id: str, key: str, *, experiment_id: str = "") -> bool:
        """Delete one run tag; False (not an error) if the tag or the run is already gone. An
        accepted deletion counts like :meth:`set_run_tags`'s tags."""
        try:
            self._call("delete_tag", self._client.delete_tag, run_id, key)
        except TrackingNotFound:
            return False
        self._accepted(experiment_id, 1)
        return True

    def _accepted(self, experiment_id: str, n: int) -> None:
        with self._counts:
            self.tag_writes += n
            self.tag_writes_by_experiment[experiment_id] += n

    def fold_history(self, run_id: str, key: str) -> list[float | None]:
        """A run's values of a metric logged once per fold (step = fold), in step order; a step
        logged more than once keeps its latest value, a step never logged is None."""
        history = self._call("get_metric_history", self._client.get_metric_history, run_id, key)
        latest: dict[int, tuple[int, float]] = {}
        for m in history:
            if m.step not in latest or m.timestamp >= latest[m.step][0]:
                latest[m.step] = (m.timestamp, float(m.value))
        if not latest:
            return []
        return [latest[s][1] if s in latest else None for s in range(min(latest), max(latest) + 1)]

    # -- training dashboard: reads (watcher.dashboard) ---------------------------------------
    # Kept in one block; each call goes through _call, so it is counted like the others.

    def get_experiment(self, experiment_id: str) -> ExperimentRecord | None:
        """An active experiment by id, with its tags; None when unknown or deleted."""
        try:
            exp = self._call("get_experiment", self._client.get_experiment, experiment_id)
        except TrackingNotFound:
            return None
        if exp is None or exp.lifecycle_stage != "active":
            return None
        return _experiment(exp)

    def get_run(self, run_id: str) -> RunRecord | None:
        """One run by id (any status); None when no active run has that id."""
        try:
            run = self._call("get_run", self._client.get_run, run_id)
        except TrackingNotFound:
            return None
        if run.info.lifecycle_stage != "active":
            return None
        return _run(run)

    def download_run_file(self, run_id: str, name: str, dst_dir: str) -> str | None:
        """Download a top-level artifact file of a run into ``dst_dir``; None if it has none."""
        listing = self._call("list_artifacts", self._client.list_artifacts, run_id)
        if name not in {a.path for a in listing if not a.is_dir}:
            return None
        return str(self._call("download_artifacts", self._client.download_artifacts, run_id, name, dst_dir))


def _experiment(exp: Experiment) -> ExperimentRecord:
    return ExperimentRecord(
        experiment_id=str(exp.experiment_id),
        name=exp.name,
        tags=dict(exp.tags or {}),
        last_update_time=int(exp.last_update_time or 0),
        deleted=exp.lifecycle_stage != "active",
    )


def _run(run: Run) -> RunRecord:
    info = run.info
    return RunRecord(
        run_id=info.run_id,
        run_name=info.run_name or "",
        experiment_id=str(info.experiment_id),
        status=str(info.status),
        start_time=info.start_time,
        end_time=info.end_time,
        metrics=dict(run.data.metrics),
        params=dict(run.data.params),
        tags=dict(run.data.tags),
        last_activity=max((m.timestamp for m in run.data._metric_objs if m.timestamp), default=None),
    )
