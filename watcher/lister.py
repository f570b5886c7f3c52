"""The watched experiments read into the kept listing (:class:`ListingReader`, one per pass):
the listing searches, the searches for what changed, and the experiments read afresh when
the decision asks for them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from watcher.listing import KeptListing
from watcher.mlflow_io import MlflowTracking, glob_to_like
from watcher.model import ExperimentRecord, WatchedExperiment
from watcher.settings import WatcherSettings


def listing_filters(settings: WatcherSettings) -> Sequence[str | None]:
    """The experiment searches that list every experiment a rule may match (None: all)."""
    likes = [glob_to_like(p) for p in sorted({p for rule in settings.rules for p in rule.experiments})]
    if any(like is None for like in likes):
        return [None]
    return sorted({f"name LIKE '{like}'" for like in likes if like is not None})


def watched_from(settings: WatcherSettings, records: Iterable[ExperimentRecord]) -> list[WatchedExperiment]:
    """The active experiments that a rule matches (first matching rule in file order), by name."""
    watched = []
    for exp in sorted(records, key=lambda e: e.name):
        rule = settings.rule_for(exp.name)
        if rule is not None and not exp.deleted:
            watched.append(WatchedExperiment(exp.experiment_id, exp.name, dict(exp.tags), rule))
    return watched


def list_experiments(settings: WatcherSettings, tracking: MlflowTracking) -> list[ExperimentRecord]:
    """Every active experiment the listing filters take in (a superset of the watched ones)."""
    found: dict[str, ExperimentRecord] = {}
    for filter_string in listing_filters(settings):
        for exp in tracking.search_experiments(filter_string):
            found[exp.experiment_id] = exp
    return list(found.values())


# Experiments with news a pass reads afresh one by one (one call each) when their tags came from
# the kept listing; more are read in one full listing.
AFRESH_LIMIT = 20


@dataclass
class ListingReader:
    """Reads the watched experiments into the kept listing for one pass (a local value of the
    pass: ``listed_all`` and ``afresh`` are what this pass read).

    ``clock`` is the watcher's clock (when a full listing is due); ``monotonic`` real elapsed
    time, for how long a server's late commits may take (see :mod:`watcher.listing`)."""

    settings: WatcherSettings
    tracking: MlflowTracking
    listing: KeptListing
    clock: Callable[[], float]
    monotonic: Callable[[], float]
    afresh_limit: int = AFRESH_LIMIT
    listed_all: bool = False
    # Records read afresh this pass (None: gone or deleted), by id.
    found_afresh: dict[str, ExperimentRecord | None] = field(default_factory=dict)

    def update(self, now: float, *, full: bool = False) -> bool:
        """Bring the kept listing up to date: every watched experiment when a full listing is
        due (or ``full``), else the experiments created, renamed, deleted or restored since the
        last answer. True when it listed them all."""
        listing = self.listing
        full = full or listing.full_due(now, self.settings.experiment_list_seconds)
        started = self.monotonic()
        mark = listing.start()
        try:
            if full:
                found = list_experiments(self.settings, self.tracking)
            else:
                found = self.tracking.search_experiments(
                    f"last_update_time >= {listing.since()}", deleted_too=True
                )
        except BaseException:
            listing.abandon(mark)
            raise
        if full:
            listing.listed(mark, found, now, self.monotonic())
            self.listed_all = True
        else:
            listing.changed(mark, found, started, self.monotonic())
        return full

    def afresh(self, ids: Sequence[str]) -> dict[str, ExperimentRecord | None]:
        """The experiments ``ids`` as they are now (one call each; more than ``afresh_limit``:
        one full listing; none when this pass listed them all already), kept in the listing
        too."""
        if len(ids) > self.afresh_limit or self.listed_all:
            if not self.listed_all:  # another batch of this pass may have listed them all
                self.update(self.clock(), full=True)
            records = {r.experiment_id: r for r in self.listing.records()}
            found = {i: records.get(i) for i in ids}
        else:
            mark = self.listing.start()
            try:
                found = {i: self.tracking.get_experiment(i) for i in ids}
            except BaseException:
                self.listing.abandon(mark)
                raise
            self.listing.afresh(mark, found)
        self.found_afresh.update(found)
        return found

    def forget(self, experiment_id: str) -> None:
        """An experiment found gone while its plan was written: out of the kept listing (a
        hard-deleted one, ``mlflow gc``, is never seen by the search for changes)."""
        self.listing.afresh(self.listing.start(), {experiment_id: None})


def with_afresh(
    exps: Sequence[WatchedExperiment], found: Mapping[str, ExperimentRecord | None]
) -> list[WatchedExperiment]:
    """The experiments with the records read afresh in place of the kept ones; those gone or
    deleted are left out."""
    out = []
    for exp in exps:
        if exp.experiment_id not in found:
            out.append(exp)
            continue
        record = found[exp.experiment_id]
        if record is None or record.deleted:
            continue
        out.append(WatchedExperiment(record.experiment_id, record.name, dict(record.tags), exp.rule))
    return out
