"""Model Registry promotion: the alias of a rule's registered model follows the #1 run.

When a rule has `registry: {model_name, alias}` and its leaderboard changed, `promote`:

1. reads the version the alias points at; if it already is the leader's, with its tags, stops
   (one call: re-ranks that keep the leader cost nothing more);
2. finds the leader's version of `model_name`, or registers the leader's model as a new version:
   the MLflow 3 LoggedModel the run output (`models:/<model_id>`), else `runs:/<id>/model` for
   runs logged by older clients. A leader without a model is skipped with a warning;
3. tags that version `model_rank=1` and `source_run_id=<run id>`, and re-tags earlier leaders'
   versions with their current rank (or removes `model_rank` when they left the board);
4. moves the alias last, so that a promotion cut short is simply redone by the next attempt.

Versions of earlier leaders stay; only the alias moves. A failed promotion is logged, kept as
the experiment tag `podium.registry_pending` (in memory if even that fails) and retried at the
end of the next pass while its run still holds `model_rank=1`.

A rule that gains `registry:` (or names another model or alias) after its experiments were
ranked gets no leaderboard change to react to. So once an experiment's leader was promoted
(or found without a model), the experiment tag `podium.registry_target` records
`<model_name>@<alias>`; at the end of a pass, an experiment whose rule's target differs from
that tag (both read from the pass's listing, so an idle pass costs no call) has its current
leader, from the watcher's kept board, promoted once. An alias moved by hand is not put back
until the leader changes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal, Protocol

import structlog

from watcher.detect import STATE_TAG, ExperimentState, fingerprint
from watcher.model import MODEL_RANK, LeaderboardChanged, ModelSource, ModelVersionInfo, WatchedExperiment
from watcher.settings import RuleConfig

log = structlog.get_logger(__name__)

PENDING_TAG = "podium.registry_pending"
TARGET_TAG = "podium.registry_target"
SOURCE_RUN_ID = "source_run_id"

Outcome = Literal["current", "promoted", "no_model"]


class RegistryStore(Protocol):
    """The registry calls of the tracking adapter (see watcher.mlflow_io)."""

    def get_model_version_by_alias(self, name: str, alias: str) -> ModelVersionInfo | None: ...

    def find_model_version(self, name: str, run_id: str) -> ModelVersionInfo | None: ...

    def search_model_versions_by_tag(self, name: str, key: str, value: str) -> list[ModelVersionInfo]: ...

    def find_model_source(self, run_id: str) -> ModelSource | None: ...

    def register_model_version(
        self, name: str, source: ModelSource, run_id: str, tags: Mapping[str, str]
    ) -> ModelVersionInfo: ...

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None: ...

    def delete_model_version_tag(self, name: str, version: str, key: str) -> None: ...

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None: ...

    def get_run_tag(self, run_id: str, key: str) -> str | None: ...

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None: ...

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None: ...


def promote(
    store: RegistryStore,
    *,
    model_name: str,
    alias: str,
    run_id: str,
    rank_of: Callable[[str], str | None],
) -> tuple[Outcome, ModelVersionInfo | None]:
    """Point `model_name@alias` at `run_id`'s model, registering it if needed (see module doc).

    `rank_of(run_id)` gives another run's current `model_rank` (None when it has none), used
    to re-tag the versions of earlier leaders.
    """
    wanted = {MODEL_RANK: "1", SOURCE_RUN_ID: run_id}
    current = store.get_model_version_by_alias(model_name, alias)
    if current is not None and current.run_id == run_id and _has_tags(current, wanted):
        return "current", current

    version = store.find_model_version(model_name, run_id)
    if version is None:
        source = store.find_model_source(run_id)
        if source is None:
            return "no_model", None
        version = store.register_model_version(model_name, source, run_id, wanted)
        log.info(
            "registry_version_created",
            model_name=model_name,
            version=version.version,
            run_id=run_id,
            source=source.uri,
        )
    for key, value in wanted.items():
        if version.tags.get(key) != value:
            store.set_model_version_tag(model_name, version.version, key, value)

    for other in store.search_model_versions_by_tag(model_name, MODEL_RANK, "1"):
        if other.version == version.version:
            continue
        rank = rank_of(other.run_id) if other.run_id else None
        if rank and rank != "1":
            store.set_model_version_tag(model_name, other.version, MODEL_RANK, rank)
        else:
            store.delete_model_version_tag(model_name, other.version, MODEL_RANK)

    store.set_registered_model_alias(model_name, alias, version.version)
    return "promoted", version


def _has_tags(version: ModelVersionInfo, wanted: Mapping[str, str]) -> bool:
    return all(version.tags.get(key) == value for key, value in wanted.items())


@dataclass(frozen=True)
class PendingPromotion:
    """A promotion that failed, to retry on a later pass."""

    experiment_id: str
    run_id: str
    model_name: str
    alias: str

    def tag_value(self) -> str:
        data = asdict(self)
        del data["experiment_id"]
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_tag(cls, experiment_id: str, value: str) -> PendingPromotion:
        data = json.loads(value)
        return cls(experiment_id, str(data["run_id"]), str(data["model_name"]), str(data["alias"]))


class RegistryPromoter:
    """Handler: moves a rule's registry alias to the leader after its leaderboard changed.

    Never raises: the ranking is already written when this runs, and a failure here is
    retried on the next pass.
    """

    def __init__(self, store: RegistryStore) -> None:
        self._store = store
        # Promotions whose pending tag could not be written either.
        self._in_memory: dict[str, PendingPromotion] = {}
        # Experiments promoted (or failed and re-queued) in this pass: a pending tag seen in
        # the pass's experiment listing is older than that and must not undo it.
        self._handled: dict[str, bool] = {}
        self._report: Counter[str] = Counter()
        self._last_report: dict[str, int] = {}

    def on_leaderboard_changed(self, event: LeaderboardChanged, rule: RuleConfig) -> None:
        leader = event.board.leader
        if rule.registry is None or leader is None:
            return
        ranks = {entry.run_id: str(entry.rank) for entry in event.board.entries}
        request = PendingPromotion(
            experiment_id=event.board.experiment_id,
            run_id=leader.run_id,
            model_name=rule.registry.model_name,
            alias=rule.registry.alias,
        )
        self._handled[request.experiment_id] = self._attempt(request, rank_of=ranks.get)

    def on_pass_start(self) -> None:
        """Forget the per-pass state of a pass that failed before its on_pass_end."""
        self._handled.clear()
        self._report.clear()

    def on_pass_end(self, experiments: Sequence[WatchedExperiment]) -> None:
        try:
            for experiment in experiments:
                value = experiment.tags.get(PENDING_TAG)
                if value is None:
                    continue
                handled = self._handled.get(experiment.experiment_id)
                if handled is True:  # promoted in this pass; the tag is from an earlier failure
                    self._delete_pending(experiment.experiment_id)
                    continue
                if handled is False:  # failed in this pass and queued again; retry next pass
                    continue
                try:
                    request = PendingPromotion.from_tag(experiment.experiment_id, value)
                except (ValueError, KeyError, TypeError):
                    log.warning("registry_pending_unreadable", experiment_id=experiment.experiment_id)
                    self._delete_pending(experiment.experiment_id)
                    continue
                self._retry(request, from_tag=True)
            for experiment_id, request in list(self._in_memory.items()):
                if experiment_id not in self._handled:
                    self._retry(request, from_tag=False)
            for experiment in experiments:
                self._follow_target(experiment)
        finally:
            self._handled.clear()
            self._last_report, self._report = dict(self._report), Counter()

    def pass_report(self) -> dict[str, int]:
        """The last pass's promotions and failures, for the pass summary."""
        return {f"registry_{key}": value for key, value in self._last_report.items()}

    def _retry(self, request: PendingPromotion, *, from_tag: bool) -> None:
        try:
            still_leader = self._store.get_run_tag(request.run_id, MODEL_RANK) == "1"
        except Exception as e:
            log.warning("registry_retry_failed", experiment_id=request.experiment_id, error=str(e))
            return
        if not still_leader:
            log.info("registry_pending_obsolete", experiment_id=request.experiment_id, run_id=request.run_id)
            self._in_memory.pop(request.experiment_id, None)
            if from_tag:
                self._delete_pending(request.experiment_id)
            return
        self._attempt(request, rank_of=self._run_rank, already_tagged=from_tag)

    def _follow_target(self, experiment: WatchedExperiment) -> None:
        """Promote the kept leader once when the rule's registry target is not yet recorded."""
        rule = experiment.rule
        if rule is None or rule.registry is None:
            return
        target = f"{rule.registry.model_name}@{rule.registry.alias}"
        experiment_id = experiment.experiment_id
        if experiment.tags.get(TARGET_TAG) == target or PENDING_TAG in experiment.tags:
            return  # recorded, or the pending promotion above takes care of it
        if experiment_id in self._in_memory:
            return
        handled = self._handled.get(experiment_id)
        if handled is None:
            state = ExperimentState.from_tag(experiment.tags.get(STATE_TAG))
            ranking = fingerprint(rule.metric, rule.ascending, rule.filter)
            if state is None or state.fingerprint != ranking or not state.board:
                return  # not ranked this way yet: that ranking will be a change
            request = PendingPromotion(
                experiment_id, state.board[0].run_id, rule.registry.model_name, rule.registry.alias
            )
            handled = self._attempt(request, rank_of=self._run_rank)
        if not handled:
            return
        try:
            self._store.set_experiment_tag(experiment_id, TARGET_TAG, target)
        except Exception as e:  # the next pass records it (one "current" check more)
            log.warning("registry_target_store_failed", experiment_id=experiment_id, error=str(e))

    def _run_rank(self, run_id: str) -> str | None:
        return self._store.get_run_tag(run_id, MODEL_RANK)

    def _attempt(
        self,
        request: PendingPromotion,
        *,
        rank_of: Callable[[str], str | None],
        already_tagged: bool = False,
    ) -> bool:
        ctx = {
            "experiment_id": request.experiment_id,
            "run_id": request.run_id,
            "model_name": request.model_name,
            "alias": request.alias,
        }
        try:
            outcome, version = promote(
                self._store,
                model_name=request.model_name,
                alias=request.alias,
                run_id=request.run_id,
                rank_of=rank_of,
            )
        except Exception as e:
            log.error("registry_promotion_failed", error=str(e), **ctx)
            self._report["failed"] += 1
            if not already_tagged:
                self._keep(request)
            return False
        self._in_memory.pop(request.experiment_id, None)
        if outcome != "current":
            self._report[outcome] += 1
        if outcome == "no_model":
            log.warning("registry_leader_without_model", **ctx)
        elif outcome == "promoted":
            assert version is not None
            log.info("registry_alias_moved", version=version.version, **ctx)
        if already_tagged:
            self._delete_pending(request.experiment_id)
        return True

    def _keep(self, request: PendingPromotion) -> None:
        try:
            self._store.set_experiment_tag(request.experiment_id, PENDING_TAG, request.tag_value())
        except Exception as e:
            log.error("registry_pending_store_failed", experiment_id=request.experiment_id, error=str(e))
            self._in_memory[request.experiment_id] = request
        else:
            self._in_memory.pop(request.experiment_id, None)

    def _delete_pending(self, experiment_id: str) -> None:
        try:
            self._store.delete_experiment_tag(experiment_id, PENDING_TAG)
        except Exception as e:
            log.error("registry_pending_delete_failed", experiment_id=experiment_id, error=str(e))
