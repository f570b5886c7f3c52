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

Versions of earlier leaders stay; only the alias moves. `RegistryPromoter`, the handler, does
none of this in the pass: it keeps a promotion entry in the outbox (`watcher.outbox`), and the
delivery worker carries it out with `carry_out`. A failed promotion stays in the outbox and is
retried in a later round while its run still holds `model_rank=1`; a newer leader's promotion
supersedes it. A promotion's entry id is its experiment, target, run and the number of the
board's change (`promotion_id`), so replicas promoting the same leader of the same board keep
one entry.

A rule that gains `registry:` (or names another model or alias) after its experiments were
ranked gets no leaderboard change to react to. So once an experiment's leader was promoted
(or found without a model), the experiment tag `podium.registry_target` records
`<model_name>@<alias>`; at the end of a pass, an experiment whose rule's target differs from
that tag (both read from the pass's listing, so an idle pass costs no call) has its current
leader, from the watcher's kept board, queued for promotion once. An alias moved by hand is
not put back until the leader changes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Literal, Protocol

import structlog

from watcher.model import (
    MODEL_RANK,
    Handler,
    LeaderboardChanged,
    ModelSource,
    ModelVersionInfo,
    RegistryTarget,
    Rule,
    WatchedExperiment,
)
from watcher.outbox import LEGACY_REGISTRY_TAG, TAG_PREFIX, Entry, Outbox, Promotion, entry_id
from watcher.state import fingerprint, state_of

log = structlog.get_logger(__name__)

TARGET_TAG = "podium.registry_target"
SOURCE_RUN_ID = "source_run_id"

Outcome = Literal["current", "promoted", "no_model"]
# What carrying out a queued promotion came to: also "obsolete" when its run lost the lead.
Result = Literal["current", "promoted", "no_model", "obsolete"]


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


def carry_out(store: RegistryStore, entry: Entry) -> Result:
    """Do one queued promotion (raises what the store raises; the worker keeps it then).

    A first attempt uses the ranks the leaderboard had when it was queued. A retry (after a
    failure or a restart) first checks that its run still holds `model_rank=1`, and reads the
    other runs' ranks from their tags.
    """
    promotion = entry.work
    assert isinstance(promotion, Promotion)
    run_id = promotion.run_id
    rank_of: Callable[[str], str | None]
    if entry.adopted or promotion.ranks is None:
        if store.get_run_tag(run_id, MODEL_RANK) != "1":
            return "obsolete"

        def rank_of(other: str) -> str | None:
            return store.get_run_tag(other, MODEL_RANK)
    else:
        rank_of = promotion.ranks.get
    outcome, version = promote(
        store,
        model_name=promotion.model_name,
        alias=promotion.alias,
        run_id=run_id,
        rank_of=rank_of,
    )
    ctx = {
        "experiment_id": entry.experiment_id,
        "run_id": run_id,
        "model_name": promotion.model_name,
        "alias": promotion.alias,
    }
    if outcome == "no_model":
        log.warning("registry_leader_without_model", **ctx)
    elif outcome == "promoted":
        assert version is not None
        log.info("registry_alias_moved", version=version.version, **ctx)
    if promotion.record_target:
        store.set_experiment_tag(entry.experiment_id, TARGET_TAG, entry.target)
    return outcome


def newest_promotion(due: Sequence[Entry]) -> tuple[list[Entry], list[Entry]]:
    """The registry's supersession policy: of an experiment's due promotions (oldest first)
    only the newest is carried out (only the newest leader matters); the older are superseded,
    and their duty to record the registry target passes to it."""
    *older, newest = due
    promotion = newest.work
    assert isinstance(promotion, Promotion)
    if not promotion.record_target and any(
        isinstance(e.work, Promotion) and e.work.record_target for e in older
    ):
        newest = replace(newest, work=replace(promotion, record_target=True))
    return [newest], list(older)


def target_of(registry: RegistryTarget) -> str:
    return f"{registry.model_name}@{registry.alias}"


def promotion_id(experiment_id: str, target: str, run_id: str, sequence: int) -> str:
    """The entry id of promoting ``run_id`` to ``target`` as the leader of the experiment's
    board after its change number ``sequence``."""
    return entry_id("registry", experiment_id, target, run_id, sequence)


class RegistryPromoter(Handler):
    """Handler: queues the promotion of the leader after a rule's leaderboard changed.

    Never raises and makes no registry call in the pass; see the module doc.
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._outbox = outbox
        outbox.supersede("registry", newest_promotion)
        self._clock = clock
        # Per experiment: the registry target its last listing recorded, and the one this
        # process queued a promotion for (the listing lags behind the worker).
        self._listed: dict[str, str | None] = {}
        self._queued: dict[str, str] = {}
        self._report: Counter[str] = Counter()

    def on_leaderboard_changed(self, event: LeaderboardChanged, rule: Rule) -> None:
        leader = event.board.leader
        if rule.registry is None or leader is None:
            return
        if event.selection is not None and event.selection.held_back is not None:
            log.info(
                "registry_promotion_held_back",
                experiment_id=event.board.experiment_id,
                run_id=leader.run_id,
                reason=event.selection.held_back,
            )
            return
        ranks = {entry.run_id: str(entry.rank) for entry in event.board.entries}
        self._queue(event.board.experiment_id, leader.run_id, rule.registry, ranks, event.sequence)

    def on_pass_start(self) -> None:
        self._report.clear()

    def on_pass_end(self, experiments: Sequence[WatchedExperiment]) -> None:
        for experiment in experiments:
            self._listed[experiment.experiment_id] = experiment.tags.get(TARGET_TAG)
            self._follow_target(experiment)

    def pass_report(self) -> dict[str, int]:
        report, self._report = dict(self._report), Counter()
        return report

    def _queue(
        self,
        experiment_id: str,
        run_id: str,
        registry: RegistryTarget,
        ranks: Mapping[str, str] | None,
        sequence: int,
    ) -> None:
        """Keep a promotion entry; without ``ranks`` the worker reads the runs' rank tags."""
        target = target_of(registry)
        promotion = Promotion(
            run_id=run_id,
            model_name=registry.model_name,
            alias=registry.alias,
            # Record the target once it is done, unless the listing shows it already or an
            # earlier entry of this process does it.
            record_target=target not in (self._listed.get(experiment_id), self._queued.get(experiment_id)),
            ranks=None if ranks is None else dict(ranks),
        )
        entry = Entry(
            experiment_id=experiment_id,
            entry_id=promotion_id(experiment_id, target, run_id, sequence),
            target=target,
            work=promotion,
            created_at=self._clock(),
        )
        self._queued[experiment_id] = target
        if self._outbox.keep(entry) is None:
            return  # this process holds that promotion already
        self._report["registry_queued"] += 1
        log.info("registry_promotion_queued", experiment_id=experiment_id, run_id=run_id, target=target)

    def _follow_target(self, experiment: WatchedExperiment) -> None:
        """Queue the kept leader's promotion once when the rule's target is not yet recorded."""
        rule = experiment.rule
        if rule is None or rule.registry is None:
            return
        target = target_of(rule.registry)
        experiment_id = experiment.experiment_id
        if experiment.tags.get(TARGET_TAG) == target or self._queued.get(experiment_id) == target:
            return  # recorded, or queued by this process (the worker records it)
        if any(k.startswith(f"{TAG_PREFIX}registry.") or k == LEGACY_REGISTRY_TAG for k in experiment.tags):
            return  # a queued promotion is pending; the worker carries it out
        state = state_of(experiment.tags)
        if state is not None and state.held:
            return  # the selection gate holds the alias back (its last ranking said why)
        ranking = fingerprint(rule.metric, rule.ascending, rule.filter)
        if state is None or state.fingerprint != ranking or not state.board:
            return  # not ranked this way yet: that ranking will be a change
        self._queue(experiment_id, state.board[0].run_id, rule.registry, None, state.announced_changes)
