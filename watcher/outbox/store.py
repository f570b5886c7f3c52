"""The outbox's store: entries due, in flight and done, kept as experiment tags (see
:mod:`watcher.outbox`)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Protocol

import structlog

from watcher.model import WatchedExperiment
from watcher.outbox.entries import (
    MAX_PER_TARGET,
    MAX_TAG_VALUE,
    Entry,
    Kind,
    WebhookDelivery,
    is_outbox_tag,
    parse_tag,
)

log = structlog.get_logger("watcher.outbox")

# Entries this process finished that it remembers after their tags are gone (the newest).
MAX_FINISHED = 10_000


class ExperimentTagStore(Protocol):
    """The experiment-tag calls of the tracking adapter (``mlflow_io.MlflowRegistry``)."""

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None: ...

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None: ...


# Which of an experiment's due entries of one kind to carry out and which are superseded.
Supersede = Callable[[Sequence["Entry"]], tuple[list["Entry"], list["Entry"]]]


class Outbox:
    """Entries due, in flight and done, kept as experiment tags (see :mod:`watcher.outbox`)."""

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
