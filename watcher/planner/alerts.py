"""Run alerts: which failed and stalled runs one experiment announces this pass."""

from __future__ import annotations

from dataclasses import dataclass

from watcher.model import ON_DEMAND_RULE, Rule, RunAlert, RunRecord
from watcher.planner.types import Experiment, Observed
from watcher.state import MAX_ALERTED, ExperimentState

RUNNING = "RUNNING"


ENDED_UNSUCCESSFULLY = frozenset({"FAILED", "KILLED"})


# Failed runs that may wait for room in the outbox (behind the state's alert cursor); past it
# they are counted in one log line, not announced, and the cursor is dropped: every pass reads
# again the runs that ended after the cursor, so it must not lag without end.
MAX_FAILED_WAITING = 1_000


def last_activity(run: RunRecord) -> int | None:
    """The run's latest sign of life: its end, latest metric timestamp or start (ms)."""
    times = [t for t in (run.end_time, run.last_activity, run.start_time) if t is not None]
    return max(times) if times else None


def stalled_since(run: RunRecord, stalled_after_minutes: int) -> int | None:
    """When a RUNNING run counts as stalled: its last activity plus the rule's window (ms)."""
    active = last_activity(run)
    return None if active is None else active + stalled_after_minutes * 60_000


def is_stalled(run: RunRecord, now_ms: int, stalled_after_minutes: int) -> bool:
    """A RUNNING run with no activity for ``stalled_after_minutes``."""
    if run.status != RUNNING:
        return False
    active = last_activity(run)
    return active is not None and now_ms - active >= stalled_after_minutes * 60_000


@dataclass(frozen=True)
class AlertsDue:
    """What one experiment's alerts come to this pass.

    ``alerts``: the runs announced now; ``alerted``: the stalled runs the state remembers as
    announced; ``stalled``/``still_running``: the RUNNING runs read, stalled or not;
    ``skipped``: runs that failed or stalled before the rule first saw the experiment (counted,
    not announced); ``held``: alerts due but left for a later pass (no room in the outbox, or
    the state's alerted list is full); ``lost``: failed runs beyond ``MAX_FAILED_WAITING``;
    ``cursor``: (end_time, run_id) of the first failed run due but not queued;
    ``stalls_to_announce``: a stalled run is due (room or not).
    """

    alerts: tuple[RunAlert, ...]
    alerted: tuple[str, ...]
    stalled: tuple[str, ...]
    still_running: tuple[RunRecord, ...]
    skipped: int
    held: int
    lost: int
    cursor: tuple[int, str] | None
    stalls_to_announce: bool


def alerts_due(
    rule: Rule,
    experiment: Experiment,
    state: ExperimentState | None,
    seen: Observed,
    now_ms: int,
    first_seen: int,
) -> AlertsDue:
    """The alerts of one experiment: FAILED/KILLED runs among ``seen.ended`` and stalled runs
    among ``seen.running`` that the rule has not announced, when the rule asks for them and
    they failed or stalled after ``first_seen``; older ones are counted only. Failed runs
    beyond the outbox's room wait behind the state's ``alert_cursor``: ``ended`` then reaches
    back to it (``ExperimentState.search_after``) and they are due again, oldest first."""
    exp_id, exp_name = experiment.experiment_id, experiment.name
    watermark = state.seen if state else 0
    stalled = tuple(r for r in seen.running or () if is_stalled(r, now_ms, rule.stalled_after_minutes))
    still_running = [r for r in seen.running or () if r not in stalled]

    running_ids = {r.run_id for r in seen.running} if seen.running is not None else None
    alerted = list(state.alerted) if state else []
    announced = set(alerted)
    skipped = 0
    candidates: list[tuple[str, RunRecord, int | None]] = []
    cursor = state.alert_cursor if state is not None else None
    if "failed" in rule.alerts:
        candidates += [
            ("failed", r, r.end_time)
            for r in seen.ended
            if r.status in ENDED_UNSUCCESSFULLY
            and r.end_time is not None
            and (r.end_time > watermark or (cursor is not None and (r.end_time, r.run_id) >= cursor))
        ]
    if "stalled" in rule.alerts:
        for r in stalled:
            candidates.append(("stalled", r, stalled_since(r, rule.stalled_after_minutes)))
    due: list[tuple[str, RunRecord, int | None]] = []
    for kind, run, since in candidates:
        if run.run_id in announced:
            continue
        if state is None or since is None or since < first_seen:
            skipped += 1  # it failed or stalled before the rule saw the experiment
            continue
        due.append((kind, run, since))
    # Failed runs first (oldest first, the cursor's order), then stalled ones, oldest first.
    due.sort(key=lambda c: (c[0] != "failed", c[2] or 0, c[1].run_id))
    # Only runs that can still alert are remembered: a stalled run while it is RUNNING (it
    # cannot stall again once ended; a failed run ended after the watermark this pass covers).
    if running_ids is not None:
        this_pass = {run.run_id for _, run, _ in candidates}
        alerted = [r for r in alerted if r in running_ids or r in this_pass]
    room = len(due) if seen.alert_room is None else max(0, seen.alert_room)
    alerts: list[RunAlert] = []
    held = lost = 0
    waiting: list[RunRecord] = []  # failed runs with no room, oldest first
    for kind, run, _since in due:
        if kind == "stalled" and (len(alerts) >= room or len(alerted) >= MAX_ALERTED):
            held += 1  # announced by a later pass, once the outbox or the state has room
            continue
        if kind == "failed" and (waiting or len(alerts) >= room):
            waiting.append(run)  # the cursor keeps it due for a later pass
            continue
        if kind == "stalled":
            alerted.append(run.run_id)
        alerts.append(
            RunAlert(
                kind="failed" if kind == "failed" else "stalled",
                experiment_id=exp_id,
                experiment_name=exp_name,
                rule=rule.name,
                run_id=run.run_id,
                run_name=run.run_name,
                status=run.status,
                last_activity=last_activity(run),
            )
        )
    new_cursor: tuple[int, str] | None = None
    if len(waiting) > MAX_FAILED_WAITING:
        lost = len(waiting)  # too many piled up: counted in the log, the cursor moves on
    elif waiting:
        held += len(waiting)
        new_cursor = (waiting[0].end_time or 0, waiting[0].run_id)
    elif "failed" not in rule.alerts and rule.name == ON_DEMAND_RULE:
        # An API ranking announces nothing, yet its state moves the watermark: the runs that
        # ended after the old watermark stay due, behind the cursor, for the rule's next pass
        # (which clears it when the rule does not announce failed runs).
        after = (watermark + 1, "") if state is not None else None
        new_cursor = min((c for c in (cursor, after) if c is not None), default=None)
    return AlertsDue(
        alerts=tuple(alerts),
        alerted=tuple(alerted[-MAX_ALERTED:]),
        stalled=tuple(r.run_id for r in stalled),
        still_running=tuple(still_running),
        skipped=skipped,
        held=held,
        lost=lost,
        cursor=new_cursor,
        stalls_to_announce=any(kind == "stalled" for kind, _, _ in due),
    )
