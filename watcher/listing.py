"""The watched experiments' listing, kept between the daemon's passes (pure: no I/O, no clock).

Listing every watched experiment with all its tags is most of an idle pass over a universe
(1,000 experiments carry ~1.6 MB of tags, ``podium.state`` most of it). MLflow moves an
experiment's ``last_update_time`` (the server's clock, ms) when it is created, renamed, deleted
or restored, never when a tag is written. So a pass between full listings reads only what
changed in the experiment list: one search, deleted experiments included, for
``last_update_time`` at or after :meth:`KeptListing.since`. Tags other clients write are seen at
the next full listing (every ``experiment_list_seconds``); tags this process writes or deletes
are written through (:meth:`KeptListing.tag_written`), so a single watcher's listing is exact.

How far back a search reaches: a change is committed a little after its timestamp was taken (a
delete marks every run of the experiment in the same transaction), and several server processes
may read clocks a little apart. Until :data:`MARGIN_SECONDS` have passed since the largest
``last_update_time`` seen (the watermark) was first seen, the search reaches ``MARGIN_SECONDS``
before it; one search that starts after that time has seen every late commit, and the searches
that follow ask only for what is newer than the watermark: an idle pass then reads no
experiment at all. A change that lands later still is seen at the next full listing.

Thread-safe: the delivery worker deletes outbox tags while a pass reads. A tag written while a
read is in flight is written again over that read's answer (``start`` marks where it began).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from watcher.model import ExperimentRecord

# Seconds between a change's timestamp and its commit (or between the server processes'
# clocks) that a search after the watermark still catches.
MARGIN_SECONDS = 10.0


class KeptListing:
    """The records (id, name, tags) of the experiments ``watches`` takes, kept between passes.

    Times: ``now`` is the watcher's clock (when the full listing is due); ``elapsed`` is a
    monotonic clock in seconds (how long since a watermark was seen: commit delays are real
    time). Server times (``last_update_time``) are only compared with each other.
    """

    def __init__(self, watches: Callable[[str], bool], margin_seconds: float = MARGIN_SECONDS) -> None:
        self.watches = watches
        self.margin_seconds = margin_seconds
        self._records: dict[str, ExperimentRecord] = {}
        self.listed_at: float | None = None
        # The largest last_update_time seen, when it was first seen (elapsed), and whether a
        # search that started MARGIN_SECONDS after that reached back the margin.
        self.watermark: int | None = None
        self._watermark_seen: float = 0.0
        self._settled = False
        self._lock = threading.Lock()
        # Tag writes while reads are in flight: (sequence number, experiment id, key, value).
        self._writes: list[tuple[int, str, str, str | None]] = []
        self._sequence = 0
        self._reading = 0

    # -- what a pass asks ----------------------------------------------------------------------

    def full_due(self, now: float, interval: float) -> bool:
        """A full listing is due: never made, ``interval`` 0, made ``interval`` seconds ago or
        more, or no watermark to search after (nothing watched yet)."""
        return (
            self.listed_at is None
            or interval == 0
            or now - self.listed_at >= interval
            or now < self.listed_at
            or self.watermark is None
        )

    def since(self) -> int:
        """The smallest ``last_update_time`` the next search for changes asks for."""
        assert self.watermark is not None
        if self._settled:
            return self.watermark + 1
        return self.watermark - int(self.margin_seconds * 1000)

    def records(self) -> list[ExperimentRecord]:
        """The kept records (copies of the tags: a pass works on what it took)."""
        with self._lock:
            return [replace(r, tags=dict(r.tags)) for r in self._records.values()]

    # -- answers -------------------------------------------------------------------------------

    def start(self) -> int:
        """A read begins; pass the mark to the method that takes its answer."""
        with self._lock:
            self._reading += 1
            return self._sequence

    def listed(self, mark: int, found: Iterable[ExperimentRecord], now: float, elapsed: float) -> None:
        """A full listing's answer (active experiments): it replaces the kept records."""
        found = list(found)
        with self._lock:
            self._records = {r.experiment_id: r for r in found if not r.deleted and self.watches(r.name)}
            self.listed_at = now
            self._see(max((r.last_update_time for r in found), default=None), elapsed, settles=False)
            self._end(mark)

    def changed(self, mark: int, found: Iterable[ExperimentRecord], started: float, elapsed: float) -> None:
        """The answer of the search for changes that started at ``started`` (elapsed):
        experiments created, renamed, deleted or restored, each as it is now."""
        found = list(found)
        with self._lock:
            for record in found:
                self._take(record.experiment_id, record)
            self._see(
                max((r.last_update_time for r in found), default=None),
                elapsed,
                settles=started - self._watermark_seen >= self.margin_seconds,
            )
            self._end(mark)

    def afresh(self, mark: int, found: Mapping[str, ExperimentRecord | None]) -> None:
        """Experiments read one by one (None: gone or deleted)."""
        with self._lock:
            for experiment_id, record in found.items():
                self._take(experiment_id, record)
            self._end(mark)

    def abandon(self, mark: int) -> None:
        """A read failed: nothing changes."""
        with self._lock:
            self._end(mark)

    def tag_written(self, experiment_id: str, key: str, value: str | None) -> None:
        """This process wrote (``value``) or deleted (None) an experiment tag."""
        with self._lock:
            self._sequence += 1
            if self._reading:
                self._writes.append((self._sequence, experiment_id, key, value))
            self._write(experiment_id, key, value)

    # -- internals (lock held) -----------------------------------------------------------------

    def _take(self, experiment_id: str, record: ExperimentRecord | None) -> None:
        if record is None or record.deleted or not self.watches(record.name):
            self._records.pop(experiment_id, None)
        else:
            self._records[experiment_id] = record

    def _see(self, latest: int | None, elapsed: float, *, settles: bool) -> None:
        if latest is not None and (self.watermark is None or latest > self.watermark):
            self.watermark = latest
            self._watermark_seen = elapsed
            self._settled = False
        elif settles and self.watermark is not None:
            self._settled = True

    def _write(self, experiment_id: str, key: str, value: str | None) -> None:
        record = self._records.get(experiment_id)
        if record is None:
            return
        tags = dict(record.tags)
        if value is None:
            tags.pop(key, None)
        else:
            tags[key] = value
        self._records[experiment_id] = replace(record, tags=tags)

    def _end(self, mark: int) -> None:
        """Write again over the answer the tags written since ``mark``."""
        for sequence, experiment_id, key, value in self._writes:
            if sequence > mark:
                self._write(experiment_id, key, value)
        self._reading -= 1
        if not self._reading:
            self._writes.clear()
