"""The durable outbox: work for the outside world, kept in MLflow until it is done.

A pass never talks to a webhook or the Model Registry itself. Its handlers `keep` what is due
(a webhook delivery, a registry promotion) as an entry, the delivery worker takes what is `due`,
carries it out and marks it `done`. Each entry is one experiment tag
``podium.outbox.<kind>.<target>.<entry id>`` holding the entry as JSON, so an entry survives a
restart or a replaced container: the next process finds it in the pass's experiment listing
(`adopt`, no extra tracking call) and carries it out once. The entry id is the webhook's
delivery id, so a delivery retried after a restart still carries the same
``X-Podium-Delivery-Id``.

Entry ids are derived from what the entry is (`entry_id`), not drawn at random: two replicas
(or a restarted process) that decide the same delivery keep it under the same id, hence the
same tag, one entry instead of two. An entry this process already holds, kept, adopted or done,
is not kept again, nor taken up again when another replica writes its tag after this process
finished it (its tag is deleted then), so one process carries out one entry once.

Tags written by earlier versions are honoured as they are: ``podium.webhook_pending.<webhook>.
<delivery id>`` (one undelivered summary) and ``podium.registry_pending`` (one failed
promotion) are read as entries and their tags deleted once done.

Bounds: at most `max_per_target` entries per experiment, kind and target (the oldest are
dropped with a warning), so a receiver gone for weeks cannot grow an experiment's tags without
end; the handler of a kind may give a policy by which newer entries supersede older ones (the
registry's: only an experiment's newest promotion matters). An entry whose tag cannot be written (tracking server down, or a payload beyond an
experiment tag's 20,000 characters) is kept in memory for the life of the process. If a done
entry's tag cannot be deleted, this process never carries it out again and deletes the tag
later; a restarted one would resend it with the same delivery id (receivers deduplicate on it).

Thread-safe: the pass thread keeps and adopts, the worker thread takes and finishes.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, Protocol

import structlog

from watcher.model import WatchedExperiment

log = structlog.get_logger(__name__)

TAG_PREFIX = "podium.outbox."
LEGACY_WEBHOOK_PREFIX = "podium.webhook_pending."
LEGACY_REGISTRY_TAG = "podium.registry_pending"
# MLflow's limit on an experiment tag's value.
MAX_TAG_VALUE = 20_000
# Entries kept per experiment, kind and target.
MAX_PER_TARGET = 20
# Entries this process finished that it remembers after their tags are gone (the newest).
MAX_FINISHED = 10_000

Kind = Literal["webhook", "registry"]


class ExperimentTagStore(Protocol):
    """The experiment-tag calls of the tracking adapter (``mlflow_io.MlflowRegistry``)."""

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None: ...

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None: ...


@dataclass(frozen=True)
class WebhookDelivery:
    """A webhook document to post: the event's payload, rendered for the webhook's format
    when it is sent."""

    payload: Mapping[str, Any]
    kind: ClassVar[Kind] = "webhook"

    def to_data(self) -> dict[str, Any]:
        return {"payload": dict(self.payload)}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> WebhookDelivery:
        return cls(dict(data["payload"]))


@dataclass(frozen=True)
class Promotion:
    """Point ``model_name@alias`` at ``run_id``'s model. ``ranks``: the other runs' ranks when
    it was queued (None: the worker reads their rank tags); ``record_target``: write the
    experiment's ``podium.registry_target`` once done."""

    run_id: str
    model_name: str
    alias: str
    record_target: bool = False
    ranks: Mapping[str, str] | None = None
    kind: ClassVar[Kind] = "registry"

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "run_id": self.run_id,
            "model_name": self.model_name,
            "alias": self.alias,
            "record_target": self.record_target,
        }
        if self.ranks is not None:
            data["ranks"] = dict(self.ranks)
        return data

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Promotion:
        ranks = data.get("ranks")
        return cls(
            run_id=str(data["run_id"]),
            model_name=str(data["model_name"]),
            alias=str(data["alias"]),
            record_target=bool(data.get("record_target")),
            ranks=None if "ranks" not in data else {str(k): str(v) for k, v in dict(ranks or {}).items()},
        )


Work = WebhookDelivery | Promotion
WORK: dict[str, type[WebhookDelivery] | type[Promotion]] = {"webhook": WebhookDelivery, "registry": Promotion}


@dataclass(frozen=True)
class Entry:
    """One piece of due work.

    ``target``: the webhook's name, or ``<model_name>@<alias>`` for a promotion. ``work``: what
    to do. ``tag``: the experiment tag that holds it (None while it lives in memory only).
    ``adopted``: read back from MLflow (after a restart or a failed attempt in an earlier
    process), not kept by this process in this pass.
    """

    experiment_id: str
    entry_id: str
    target: str
    work: Work
    created_at: float
    tag: str | None = field(default=None, compare=False)
    adopted: bool = field(default=False, compare=False)

    @property
    def kind(self) -> Kind:
        return self.work.kind

    @property
    def key(self) -> tuple[str, str, str]:
        """Identity of the entry, whichever tag holds it."""
        return (self.experiment_id, self.kind, self.entry_id)

    def tag_key(self) -> str:
        # A safe subset of MLflow's tag key characters; the value keeps the real name.
        target = re.sub(r"[^\w\-.]", "_", self.target)
        return f"{TAG_PREFIX}{self.kind}.{target}.{self.entry_id}"

    def tag_value(self) -> str:
        return json.dumps(
            {
                "kind": self.kind,
                "entry_id": self.entry_id,
                "target": self.target,
                "created_at": self.created_at,
                "data": self.work.to_data(),
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )


def entry_id(*parts: object) -> str:
    """The id of the entry that ``parts`` (JSON values) describe, uuid4-shaped: the same parts
    give the same id in every process."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return str(uuid.UUID(bytes=hashlib.sha256(text.encode()).digest()[:16], version=4))


def parse_tag(experiment_id: str, key: str, value: str) -> Entry | None:
    """The entry an experiment tag holds, in the current or an earlier format; None if the
    tag is not the outbox's. Raises ValueError (KeyError, TypeError) on an unreadable value."""
    if key.startswith(TAG_PREFIX):
        data = json.loads(value)
        kind = str(data["kind"])
        if kind not in WORK:
            raise ValueError(f"unknown outbox entry kind {kind!r}")
        return Entry(
            experiment_id=experiment_id,
            entry_id=str(data["entry_id"]),
            target=str(data["target"]),
            work=WORK[kind].from_data(data["data"]),
            created_at=float(data["created_at"]),
            tag=key,
            adopted=True,
        )
    if key.startswith(LEGACY_WEBHOOK_PREFIX):
        data = json.loads(value)
        return Entry(
            experiment_id=experiment_id,
            entry_id=str(data["delivery_id"]),
            target=str(data["webhook"]),
            work=WebhookDelivery(dict(data["payload"])),
            created_at=float(data.get("failed_at", 0.0)),
            tag=key,
            adopted=True,
        )
    if key == LEGACY_REGISTRY_TAG:
        data = json.loads(value)
        model_name, alias = str(data["model_name"]), str(data["alias"])
        return Entry(
            experiment_id=experiment_id,
            entry_id="legacy",
            target=f"{model_name}@{alias}",
            work=Promotion(run_id=str(data["run_id"]), model_name=model_name, alias=alias),
            created_at=0.0,
            tag=key,
            adopted=True,
        )
    return None


def is_outbox_tag(key: str) -> bool:
    return key.startswith((TAG_PREFIX, LEGACY_WEBHOOK_PREFIX)) or key == LEGACY_REGISTRY_TAG


def webhook_room(
    experiment_id: str,
    tags: Mapping[str, str],
    webhooks: Sequence[str],
    *,
    max_per_target: int = MAX_PER_TARGET,
    reserve: int = 1,
) -> int:
    """How many more webhook entries an experiment can take for every one of ``webhooks``
    before the bound drops one: the bound less the entries its tags hold for the fullest
    webhook, less ``reserve`` (a leaderboard summary the same pass may queue). A pass that
    queues no more than this loses no alert at queue time."""
    held = dict.fromkeys(webhooks, 0)
    for key, value in tags.items():
        if not key.startswith((TAG_PREFIX, LEGACY_WEBHOOK_PREFIX)):
            continue
        try:
            entry = parse_tag(experiment_id, key, value)
        except (ValueError, KeyError, TypeError):
            continue
        if entry is not None and entry.kind == "webhook" and entry.target in held:
            held[entry.target] += 1
    fullest = max(held.values(), default=0)
    return max(0, max_per_target - fullest - reserve)


# Which of an experiment's due entries of one kind to carry out and which are superseded.
Supersede = Callable[[Sequence["Entry"]], tuple[list["Entry"], list["Entry"]]]


class Outbox:
    """Entries due, in flight and done, kept as experiment tags (see the module doc)."""

    def __init__(
        self,
        store: ExperimentTagStore,
        *,
        max_per_target: int = MAX_PER_TARGET,
        on_keep: Callable[[], None] | None = None,
        worker_store: ExperimentTagStore | None = None,
    ) -> None:
        """``store`` writes from the pass's thread; ``worker_store`` (default: ``store``)
        deletes the tags of entries the worker finished, so the worker's calls do not count
        in a pass's tracking calls."""
        self._store = store
        self._worker_store = worker_store or store
        self._max = max_per_target
        self.on_keep = on_keep  # the worker's wake-up
        self._lock = threading.Lock()
        self._due: dict[tuple[str, str, str], Entry] = {}
        self._in_flight: dict[tuple[str, str, str], Entry] = {}
        # Done in this process; the pass's listing may still show their tags for a while.
        self._done: dict[tuple[str, str, str], Entry] = {}
        # Done, but the tag could not be deleted: deleted again when a listing shows it.
        self._undeleted: set[tuple[str, str, str]] = set()
        # Every entry finished here, the newest MAX_FINISHED, still known once ``_done`` has
        # forgotten it: a replica that decided the same delivery may write its tag again after
        # this process sent it and deleted the tag; it is not taken up again (its tag goes).
        self._finished: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._supersede: dict[str, Supersede] = {}

    # -- the pass's side ---------------------------------------------------------------------

    def keep(self, entry: Entry) -> Entry | None:
        """Record `entry` as due: one experiment tag write (memory only if that fails). None,
        and no write, when this process already holds an entry of that id (due, in flight or
        done): the same id is the same work."""
        with self._lock:
            held = (
                entry.key in self._due
                or entry.key in self._in_flight
                or entry.key in self._done
                or entry.key in self._finished
            )
        if held:
            log.info(
                "outbox_entry_known",
                kind=entry.kind,
                target=entry.target,
                entry_id=entry.entry_id,
                experiment_id=entry.experiment_id,
            )
            return None
        value = entry.tag_value()
        ctx = {"kind": entry.kind, "target": entry.target, "entry_id": entry.entry_id}
        if len(value) > MAX_TAG_VALUE:
            log.warning("outbox_entry_in_memory", reason="too large for an experiment tag", **ctx)
            entry = replace(entry, tag=None)
        else:
            try:
                self._store.set_experiment_tag(entry.experiment_id, entry.tag_key(), value)
            except Exception as e:  # the tracking server may be what is down
                log.error("outbox_store_failed", experiment_id=entry.experiment_id, error=str(e), **ctx)
                entry = replace(entry, tag=None)
            else:
                entry = replace(entry, tag=entry.tag_key())
        with self._lock:
            self._due[entry.key] = entry
            dropped = self._bound(entry)
        self._drop(dropped)
        if self.on_keep is not None:
            self.on_keep()
        return entry

    def adopt(self, experiments: Sequence[WatchedExperiment]) -> int:
        """Take up the entries the pass's listing shows that this process does not know
        (kept by an earlier process, or in an earlier format); delete the tags of done
        entries whose deletion failed. Costs no call unless there is something to delete.
        Returns the number of entries due afterwards."""
        dropped: list[Entry] = []
        redelete: list[Entry] = []
        with self._lock:
            for experiment in experiments:
                listed: set[tuple[str, str, str]] = set()
                for key, value in experiment.tags.items():
                    if not is_outbox_tag(key):
                        continue
                    try:
                        entry = parse_tag(experiment.experiment_id, key, value)
                    except (ValueError, KeyError, TypeError):
                        log.warning(
                            "outbox_entry_unreadable", experiment_id=experiment.experiment_id, tag=key
                        )
                        dropped.append(
                            Entry(experiment.experiment_id, key, "", WebhookDelivery({}), 0.0, tag=key)
                        )
                        continue
                    if entry is None:
                        continue
                    listed.add(entry.key)
                    if entry.key in self._done:
                        if entry.key in self._undeleted:
                            redelete.append(entry)
                        continue
                    if entry.key in self._finished:  # its tag written again by another replica
                        redelete.append(entry)
                        continue
                    if entry.key in self._due or entry.key in self._in_flight:
                        continue
                    self._due[entry.key] = entry
                    dropped.extend(self._bound(entry))
                # A done entry the listing no longer shows is gone for good: forget it.
                for done in [k for k in self._done if k[0] == experiment.experiment_id]:
                    if done not in listed and done not in self._undeleted:
                        del self._done[done]
            due = len(self._due)
        self._drop(dropped)
        for entry in redelete:
            self._delete(entry)
        return due

    # -- the worker's side -------------------------------------------------------------------

    def take_due(self) -> list[Entry]:
        """Every due entry, oldest first, now in flight, less those superseded by the policy
        of their kind (see :meth:`supersede`), which are done."""
        with self._lock:
            entries = sorted(self._due.values(), key=lambda e: (e.created_at, e.entry_id))
            groups: dict[tuple[str, str], list[Entry]] = {}
            taken: list[Entry] = []
            for entry in entries:
                if entry.kind in self._supersede:
                    groups.setdefault((entry.experiment_id, entry.kind), []).append(entry)
                else:
                    taken.append(entry)
            superseded: list[Entry] = []
            for (_, kind), group in groups.items():
                kept, dropped = self._supersede[kind](group)
                taken.extend(kept)
                superseded.extend(dropped)
            taken.sort(key=lambda e: (e.created_at, e.entry_id))
            for entry in entries:
                del self._due[entry.key]
            for entry in entries:
                self._in_flight[entry.key] = entry
        for entry in superseded:
            self.done(entry, reason="superseded")
        return taken

    def supersede(self, kind: Kind, policy: Supersede) -> None:
        """Give the policy by which entries of ``kind`` of one experiment supersede each other
        (the handler that keeps them knows): ``policy(due)``, oldest first, returns the entries
        to carry out and the superseded ones."""
        self._supersede[kind] = policy

    def release(self, entry: Entry) -> None:
        """An attempt failed: the entry is due again (for a later round), marked as tried."""
        with self._lock:
            self._in_flight.pop(entry.key, None)
            self._due[entry.key] = replace(entry, adopted=True)

    def done(self, entry: Entry, *, reason: str | None = None) -> None:
        """The entry was carried out (or can never be): delete its tag, never do it again."""
        with self._lock:
            self._in_flight.pop(entry.key, None)
            self._due.pop(entry.key, None)
            self._finish(entry)
        if reason is not None:
            log.info(
                "outbox_entry_dropped" if reason != "superseded" else "outbox_entry_superseded",
                reason=reason,
                kind=entry.kind,
                target=entry.target,
                entry_id=entry.entry_id,
                experiment_id=entry.experiment_id,
            )
        self._delete(entry, self._worker_store)

    def pending(self) -> int:
        """Entries due or in flight."""
        with self._lock:
            return len(self._due) + len(self._in_flight)

    def entries(self) -> list[Entry]:
        """Entries due or in flight, oldest first (for tests and logs)."""
        with self._lock:
            found = list(self._due.values()) + list(self._in_flight.values())
        return sorted(found, key=lambda e: (e.created_at, e.entry_id))

    # -- internals ---------------------------------------------------------------------------

    def _bound(self, entry: Entry) -> list[Entry]:
        """Entries beyond the bound for `entry`'s experiment, kind and target (lock held)."""
        same = sorted(
            (
                e
                for e in self._due.values()
                if (e.experiment_id, e.kind, e.target) == (entry.experiment_id, entry.kind, entry.target)
            ),
            key=lambda e: (e.created_at, e.entry_id),
        )
        excess = same[: max(0, len(same) - self._max)]
        for old in excess:
            del self._due[old.key]
            self._finish(old)
        return excess

    def _finish(self, entry: Entry) -> None:
        """Mark `entry` done (lock held)."""
        self._done[entry.key] = entry
        self._finished[entry.key] = None
        self._finished.move_to_end(entry.key)
        while len(self._finished) > MAX_FINISHED:
            self._finished.popitem(last=False)

    def _drop(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            if entry.target:
                log.warning(
                    "outbox_entry_dropped",
                    reason="too many pending",
                    kind=entry.kind,
                    target=entry.target,
                    entry_id=entry.entry_id,
                    experiment_id=entry.experiment_id,
                )
            self._delete(entry)

    def _delete(self, entry: Entry, store: ExperimentTagStore | None = None) -> None:
        if entry.tag is None:
            return
        try:
            (store or self._store).delete_experiment_tag(entry.experiment_id, entry.tag)
        except Exception as e:
            log.error(
                "outbox_delete_failed",
                experiment_id=entry.experiment_id,
                tag=entry.tag,
                entry_id=entry.entry_id,
                error=str(e),
            )
            with self._lock:
                if entry.key in self._done:
                    self._undeleted.add(entry.key)
        else:
            with self._lock:
                self._undeleted.discard(entry.key)
