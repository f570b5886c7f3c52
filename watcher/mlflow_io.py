"""The only module of the watcher that talks to MLflow.

Every call goes through :class:`MlflowTracking`, which counts it (pass summary, Prometheus
``TRACKING_CALLS``) and turns MLflow's exceptions into :class:`TrackingError`. Its
:meth:`MlflowTracking.apply_plan` is the one writer of the watcher's run tags and state.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

# MLflow's client retries a failing request 7 times with minutes of back-off by default; a
# daemon pass must fail fast and try again on the next tick instead. Set before mlflow reads it.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

import structlog
from mlflow.entities import Experiment, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.search_utils import SearchUtils

from watcher import metrics
from watcher.errors import ConfigError, ExperimentGone, TrackingError
from watcher.model import ExperimentRecord, ModelSource, ModelVersionInfo, RunRecord, TagChange
from watcher.planner import ExperimentPlan
from watcher.selection import SELECTION_TAG
from watcher.settings import redact_uri
from watcher.state import STATE_TAG

log = structlog.get_logger("watcher")

# The server rejects larger pages (SEARCH_MAX_RESULTS_THRESHOLD).
MAX_PAGE = 50_000
# Experiments per batch search (``experiment_id IN (...)``). One idle search over 1,000
# experiments answers in 20-60 ms on sqlite and PostgreSQL, where ten searches of 100 took
# 160-460 ms, so a universe of 1,000 is one batch.
EXPERIMENT_BATCH = 1000

T = TypeVar("T")
# Told of every experiment tag this process wrote (value) or deleted (None), once MLflow took it.
TagListener = Callable[[str, str, str | None], None]


_COMPARATORS: dict[str, set[str]] = {
    "metric": set(SearchUtils.VALID_METRIC_COMPARATORS),
    "parameter": set(SearchUtils.VALID_PARAM_COMPARATORS),
    "tag": set(SearchUtils.VALID_TAG_COMPARATORS),
    "attribute": set(SearchUtils.VALID_STRING_ATTRIBUTE_COMPARATORS)
    | set(SearchUtils.VALID_NUMERIC_ATTRIBUTE_COMPARATORS),
    "dataset": set(SearchUtils.VALID_DATASET_COMPARATORS),
}


def check_run_filter(filter_string: str) -> None:
    """Parse a run filter with MLflow's own search grammar; ValueError says what is wrong."""
    try:
        clauses = SearchUtils.parse_search_filter(filter_string)
    except MlflowException as e:
        raise ValueError(f"not a valid MLflow run filter: {e.message}") from e
    except Exception as e:  # sqlparse raises assorted errors on odd input
        raise ValueError(f"not a valid MLflow run filter: {e}") from e
    # The parser lets some operators through (``>>=``) that the server rejects at query time,
    # which would fail every pass: check them here, as the server will.
    for clause in clauses:
        allowed = _COMPARATORS.get(clause.get("type", ""))
        comparator = str(clause.get("comparator", "")).upper()
        if allowed is not None and comparator not in allowed:
            raise ValueError(
                f"not a valid MLflow run filter: operator {clause.get('comparator')!r} is not "
                f"allowed for {clause['type']} {clause.get('key')!r} (use one of {', '.join(sorted(allowed))})"
            )


def glob_to_like(pattern: str) -> str | None:
    """A LIKE pattern that matches a superset of the glob, or None if none is safe.

    The caller re-checks names with :func:`fnmatch.fnmatchcase`, which also makes the result
    case-sensitive on every backend (sqlite's LIKE ignores case, PostgreSQL's does not).
    """
    if "'" in pattern or "\\" in pattern:
        return None
    # A set matches one character; fnmatch reads a ``]`` right after ``[`` or ``[!`` as a
    # member (``[]]`` is the set of ``]``), and a ``[`` with no closing ``]`` as itself.
    like = re.sub(r"\[!?+(?:\][^\]]*|[^\]]+)\]", "_", pattern)
    return like.replace("*", "%").replace("?", "_")


def _is_missing(e: MlflowException) -> bool:
    code = getattr(e, "error_code", "")
    text = str(e.message).lower()
    return code == "RESOURCE_DOES_NOT_EXIST" or (
        code == "INVALID_PARAMETER_VALUE" and ("active" in text or "deleted" in text)
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
    tag changes that reached MLflow in ``tag_writes``. Every experiment tag it writes or
    deletes is told to ``tag_listeners`` (the watcher's kept listing), shared with its
    :meth:`twin`."""

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
            raise TrackingError(f"{name} failed: {e.message}") from e
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
        try:
            self._call("delete_experiment_tag", self._client.delete_experiment_tag, experiment_id, key)
        except TrackingError as e:
            if not _not_found(e):
                raise
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
            page = self._call(
                "search_runs",
                self._client.search_runs,
                experiment_ids=list(experiment_ids),
                filter_string=filter_string,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=size,
                order_by=list(order_by) if order_by else None,
                page_token=token,
            )
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
        page = self._call(
            "search_runs",
            self._client.search_runs,
            experiment_ids=list(experiment_ids),
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=page_size,
            order_by=list(order_by) if order_by else None,
            page_token=token,
        )
        return [_run(r) for r in page], page.token or None

    def set_run_tags(self, run_id: str, tags: Mapping[str, str]) -> bool:
        """Set several tags of one run in one ``log_batch``; False if the run is gone."""
        try:
            self._call(
                "log_batch",
                self._client.log_batch,
                run_id,
                tags=[RunTag(k, v) for k, v in tags.items()],
            )
        except TrackingError as e:
            if isinstance(e.__cause__, MlflowException) and _is_missing(e.__cause__):
                return False
            raise
        return True

    def delete_run_tag(self, run_id: str, key: str) -> bool:
        """Delete one run tag; False (not an error) if the tag or the run is already gone."""
        try:
            self._call("delete_tag", self._client.delete_tag, run_id, key)
        except TrackingError as e:
            if isinstance(e.__cause__, MlflowException) and _is_missing(e.__cause__):
                return False
            raise
        return True

    # -- the one writer ----------------------------------------------------------------------

    def apply_plan(self, plan: ExperimentPlan, stored_state: str | None) -> int:
        """Write one experiment's plan: its tag changes in order, its selection statistics'
        tag (when computed), then its state tag.

        ``stored_state`` is the ``podium.state`` text as listed (an equal state is not
        written again). Returns the number of tag changes planned; ``tag_writes`` grows by
        the ones MLflow accepted, also when a later write raises. Raises
        :class:`ExperimentGone` when the experiment was deleted meanwhile (a run gone, then no
        active experiment; or its state refused): the rest of the plan is not written.
        """
        self.apply_changes(plan.changes, plan.experiment_id)
        try:
            if plan.selection_tag is not None:
                self.set_experiment_tag(plan.experiment_id, SELECTION_TAG, plan.selection_tag)
            if plan.state is not None:
                text = plan.state.to_tag()
                if text != stored_state:
                    self.set_experiment_tag(plan.experiment_id, STATE_TAG, text)
        except TrackingError as e:
            if isinstance(e.__cause__, MlflowException) and _is_missing(e.__cause__):
                raise ExperimentGone(f"experiment {plan.experiment_id} was deleted") from e
            raise
        return len(plan.changes)

    def _accepted(self, experiment_id: str, n: int) -> None:
        with self._counts:
            self.tag_writes += n
            self.tag_writes_by_experiment[experiment_id] += n

    def apply_changes(self, changes: Sequence[TagChange], experiment_id: str = "") -> None:
        """Deletions one call each, then one ``log_batch`` per run (changes come grouped).

        A tag already gone or a run deleted meanwhile is no write (a run gone whose
        experiment is gone too raises :class:`ExperimentGone`); each accepted call adds
        its changes to ``tag_writes`` (and the experiment's count) at once, so a failure part
        way leaves them exact."""
        i = 0
        while i < len(changes):
            change = changes[i]
            if change.is_delete:
                if self.delete_run_tag(change.run_id, change.key):
                    self._accepted(experiment_id, 1)
                else:
                    log.info("tag_already_gone", run_id=change.run_id, key=change.key)
                metrics.TAG_WRITES.inc()
                i += 1
                continue
            batch: dict[str, str] = {}
            while i < len(changes) and changes[i].run_id == change.run_id and not changes[i].is_delete:
                new = changes[i].new
                if new is not None:
                    batch[changes[i].key] = new
                i += 1
            if self.set_run_tags(change.run_id, batch):
                self._accepted(experiment_id, len(batch))
            elif experiment_id and self.get_experiment(experiment_id) is None:
                raise ExperimentGone(f"experiment {experiment_id} was deleted")
            else:
                log.warning("run_gone_before_tagging", run_id=change.run_id)
            metrics.TAG_WRITES.inc(len(batch))

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
        except TrackingError as e:
            if isinstance(e.__cause__, MlflowException) and _is_missing(e.__cause__):
                return None
            raise
        if exp is None or exp.lifecycle_stage != "active":
            return None
        return _experiment(exp)

    def get_run(self, run_id: str) -> RunRecord | None:
        """One run by id (any status); None when no active run has that id."""
        try:
            run = self._call("get_run", self._client.get_run, run_id)
        except TrackingError as e:
            if isinstance(e.__cause__, MlflowException) and _is_missing(e.__cause__):
                return None
            raise
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


# ============================================================================================
# Registry promotion and the handlers' pending work (watcher.registry, watcher.notify).
# Kept apart from the ranking calls above; every call still goes through MlflowTracking._call,
# so it is counted and its errors become TrackingError.


def _quote(value: str) -> str:
    """A string literal for MLflow's registry filter grammar."""
    return f'"{value}"' if "'" in value else f"'{value}'"


def _not_found(e: TrackingError) -> bool:
    cause = e.__cause__
    if not isinstance(cause, MlflowException):
        return False
    return cause.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(cause.message).lower()


class MlflowRegistry:
    """Model Registry calls and the experiment tags that keep handlers' pending work.

    Implements ``watcher.registry.RegistryStore`` and ``watcher.notify.ExperimentTagStore``.
    """

    def __init__(self, tracking: MlflowTracking) -> None:
        self._tracking = tracking
        self._client = tracking._client

    def _call(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self._tracking._call(name, fn, *args, **kwargs)

    # -- experiment tags ---------------------------------------------------------------------

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        self._tracking.set_experiment_tag(experiment_id, key, value)

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None:
        self._tracking.delete_experiment_tag(experiment_id, key)

    # -- runs --------------------------------------------------------------------------------

    def get_run_tag(self, run_id: str, key: str) -> str | None:
        run = self._call("get_run", self._client.get_run, run_id)
        return run.data.tags.get(key)

    def find_model_source(self, run_id: str) -> ModelSource | None:
        """The run's model: its MLflow 3 LoggedModel, else a `model/MLmodel` artifact, else None.

        With several logged models the one named "model" wins, then the latest step.
        """
        run = self._call("get_run", self._client.get_run, run_id)
        outputs = list(run.outputs.model_outputs) if run.outputs is not None else []
        candidates = []
        for output in outputs:
            model = self._call("get_logged_model", self._client.get_logged_model, output.model_id)
            if str(model.status) == "FAILED":
                continue
            candidates.append((model.name == "model", output.step, model.model_id))
        if candidates:
            model_id = max(candidates)[2]
            return ModelSource(uri=f"models:/{model_id}", model_id=model_id)
        artifacts = self._call("list_artifacts", self._client.list_artifacts, run_id, "model")
        if any(a.path == "model/MLmodel" for a in artifacts):
            # What mlflow.register_model does for runs:/ URIs: register the artifact location.
            return ModelSource(uri=f"{run.info.artifact_uri.rstrip('/')}/model")
        return None

    # -- registered models -------------------------------------------------------------------

    def get_model_version_by_alias(self, name: str, alias: str) -> ModelVersionInfo | None:
        try:
            mv = self._call(
                "get_model_version_by_alias", self._client.get_model_version_by_alias, name, alias
            )
        except TrackingError as e:
            if _not_found(e):
                return None
            raise
        return _model_version(mv)

    def find_model_version(self, name: str, run_id: str) -> ModelVersionInfo | None:
        """The latest version of `name` registered from `run_id`, if any."""
        found = self._call(
            "search_model_versions",
            self._client.search_model_versions,
            filter_string=f"name = {_quote(name)} AND run_id = {_quote(run_id)}",
            max_results=1,
            order_by=["version_number DESC"],
        )
        return _model_version(found[0]) if found else None

    def search_model_versions_by_tag(self, name: str, key: str, value: str) -> list[ModelVersionInfo]:
        found = self._call(
            "search_model_versions",
            self._client.search_model_versions,
            filter_string=f"name = {_quote(name)} AND tags.`{key}` = {_quote(value)}",
        )
        return [_model_version(mv) for mv in found]

    def register_model_version(
        self, name: str, source: ModelSource, run_id: str, tags: Mapping[str, str]
    ) -> ModelVersionInfo:
        """Create the registered model if needed, then a new version from `source`."""
        try:
            self._call("create_registered_model", self._client.create_registered_model, name)
        except TrackingError as e:
            cause = e.__cause__
            if not (
                isinstance(cause, MlflowException)
                and cause.error_code in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")
            ):
                raise
        mv = self._call(
            "create_model_version",
            lambda: self._client.create_model_version(
                name=name,
                source=source.uri,
                run_id=run_id,
                tags=dict(tags),
                model_id=source.model_id,
                await_creation_for=0,  # the OSS stores create versions READY at once
            ),
        )
        return _model_version(mv)

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._call("set_model_version_tag", self._client.set_model_version_tag, name, version, key, value)

    def delete_model_version_tag(self, name: str, version: str, key: str) -> None:
        try:
            self._call("delete_model_version_tag", self._client.delete_model_version_tag, name, version, key)
        except TrackingError as e:
            if not _not_found(e):
                raise

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self._call(
            "set_registered_model_alias",
            self._client.set_registered_model_alias,
            name,
            alias,
            version,
        )


def _model_version(mv: Any) -> ModelVersionInfo:
    return ModelVersionInfo(
        name=mv.name, version=str(mv.version), run_id=mv.run_id or None, tags=dict(mv.tags or {})
    )
