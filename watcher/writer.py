"""The one writer of the watcher's run tags and experiment state: it turns an experiment's plan
into tracking calls, in order, through the MLflow adapter (:mod:`watcher.mlflow_io`).

A dry run never calls it; everything it writes was decided by the planner.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from watcher import metrics
from watcher.errors import ExperimentGone, TrackingNotFound
from watcher.mlflow_io import MlflowTracking
from watcher.model import TagChange
from watcher.planner import ExperimentPlan
from watcher.selection import SELECTION_TAG
from watcher.state import STATE_TAG

log = structlog.get_logger("watcher")


def apply_plan(tracking: MlflowTracking, plan: ExperimentPlan, stored_state: str | None) -> int:
    """Write one experiment's plan: its tag changes in order, its selection statistics' tag
    (when computed), then its state tag.

    ``stored_state`` is the ``podium.state`` text as listed (an equal state is not written
    again). Returns the number of tag changes planned; the adapter's ``tag_writes`` grows by
    the ones MLflow accepted, also when a later write raises. Raises :class:`ExperimentGone`
    when the experiment was deleted meanwhile (a run gone, then no active experiment; or its
    state refused): the rest of the plan is not written.
    """
    apply_changes(tracking, plan.changes, plan.experiment_id)
    try:
        if plan.selection_tag is not None:
            tracking.set_experiment_tag(plan.experiment_id, SELECTION_TAG, plan.selection_tag)
        if plan.state is not None:
            text = plan.state.to_tag()
            if text != stored_state:
                tracking.set_experiment_tag(plan.experiment_id, STATE_TAG, text)
    except TrackingNotFound as e:
        raise ExperimentGone(f"experiment {plan.experiment_id} was deleted") from e
    return len(plan.changes)


def apply_changes(tracking: MlflowTracking, changes: Sequence[TagChange], experiment_id: str = "") -> None:
    """Deletions one call each, then one ``log_batch`` per run (changes come grouped).

    A tag already gone or a run deleted meanwhile is no write (a run gone whose experiment is
    gone too raises :class:`ExperimentGone`); each accepted call adds its changes to the
    adapter's ``tag_writes`` (and the experiment's count) at once, so a failure part way
    leaves them exact."""
    i = 0
    while i < len(changes):
        change = changes[i]
        if change.is_delete:
            if not tracking.delete_run_tag(change.run_id, change.key, experiment_id=experiment_id):
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
        if not tracking.set_run_tags(change.run_id, batch, experiment_id=experiment_id):
            if experiment_id and tracking.get_experiment(experiment_id) is None:
                raise ExperimentGone(f"experiment {experiment_id} was deleted")
            log.warning("run_gone_before_tagging", run_id=change.run_id)
        metrics.TAG_WRITES.inc(len(batch))
