"""What the daemon remembers between passes: one frozen value, replaced whole after each pass.

Pure: no I/O, no clock. :mod:`watcher.schedule` turns it (with the watched experiments and the
time) into a pass's :class:`~watcher.schedule.Agenda`, and, after the pass, into the next
memory; :class:`watcher.service.Watcher` owns it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from watcher.listing import KeptListing
from watcher.selection import Selection, details, plain_line

# Per-fold values read from a run's metric history, by (run id, metric).
FoldValues = Mapping[tuple[str, str], tuple[float | None, ...]]


@dataclass(frozen=True)
class DaemonMemory:
    """Everything one pass leaves for the next, in this process only (a restarted daemon
    starts from an empty memory and MLflow's tags).

    ``listing`` is the one part written between passes: the kept listing is thread-safe and
    every experiment tag this process writes (the delivery worker's too) is written through
    it, so the memory holds the same listing from pass to pass (see :mod:`watcher.listing`).
    """

    listing: KeptListing
    # By experiment: an end time at or before which every run of the experiment was searched
    # and decided by an earlier pass. The batch search starts after the lowest watermark of
    # its experiments; experiments ranked at different times have different watermarks, so
    # without these every idle pass would read again every run ended since the oldest one.
    floors: Mapping[str, int] = field(default_factory=dict)
    # When each experiment's holders were last read by a holder check (the watcher's clock).
    holders_checked: Mapping[str, float] = field(default_factory=dict)
    # When each rule last looked for stalled runs, by rule name.
    stalls_checked: Mapping[str, float] = field(default_factory=dict)
    # Finished runs do not change: each run's per-fold values are read once in the daemon's life.
    fold_values: FoldValues = field(default_factory=dict)
    # The selection statistics last computed per experiment, as ``GET
    # /api/experiments/{id}/selection`` shows them.
    selections: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    # Said once while the holder checks cannot keep up with holder_check_seconds.
    holder_checks_behind: bool = False
    # The last pass succeeded and left rankings for the passes that follow at once.
    catching_up: bool = False


def selection_view(selection: Selection, tag: str, leader: str | None) -> dict[str, Any]:
    """The statistics as the API shows them: the tag's JSON, λ per split, the tied and
    left-out runs, and the plain line about the leader."""
    view: dict[str, Any] = {**json.loads(tag), **details(selection)}
    if leader is not None:
        view["line"] = plain_line(selection, leader)
    return view
