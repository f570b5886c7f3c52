"""What a webhook receives: the JSON documents and their Slack rendering.

Pure functions of their arguments (the time is passed in): `leaderboard_payload` and
`alert_payload` build the documents of the `json` format, `render` turns a document into the
request body for a webhook's format (`json` as is, `slack` blocks for a leaderboard, one line
with a link for an alert).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from watcher.model import Leaderboard, LeaderboardChanged, RunAlert, SelectionSummary, WebhookFormat, iso_time

LEADERBOARD_EVENT = "leaderboard.changed"
ALERT_EVENTS = {"failed": "run.failed", "stalled": "run.stalled"}


# Slack's documented limits for the blocks used here.
SLACK_HEADER_MAX = 150
SLACK_SECTION_MAX = 3000
SLACK_MAX_BLOCKS = 50
SLACK_LINES_PER_SECTION = 10
SLACK_MAX_MODELS = 100


def run_url(ui_base_url: str | None, experiment_id: str, run_id: str) -> str | None:
    """Link to a run in the MLflow UI, or None without a UI base URL."""
    if not ui_base_url:
        return None
    return f"{ui_base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def board_url(ui_base_url: str | None, experiment_id: str) -> str | None:
    """Link to an experiment's runs table (MLflow 3 opens a GenAI overview without `/runs`)."""
    if not ui_base_url:
        return None
    return f"{ui_base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"


def leaderboard_payload(event: LeaderboardChanged, *, ui_base_url: str | None, now: float) -> dict[str, Any]:
    """The `leaderboard.changed` document for one changed leaderboard."""
    board: Leaderboard = event.board
    return {
        "event": LEADERBOARD_EVENT,
        "experiment_id": board.experiment_id,
        "experiment_name": board.experiment_name,
        "rule": board.rule,
        "metric": board.metric,
        "ascending": board.ascending,
        "top_n": board.top_n,
        "models": [
            {
                "rank": entry.rank,
                "run_id": entry.run_id,
                "run_name": entry.run_name,
                "value": entry.value,
                "url": run_url(ui_base_url, board.experiment_id, entry.run_id),
            }
            for entry in board.entries
        ],
        "changes": {
            "new_leader": event.new_leader,
            "entered": list(event.entered),
            "left": list(event.left),
        },
        "ranked_runs": board.ranked_runs,
        "unranked_runs": board.unranked_runs,
        "timestamp": iso_time(now),
        # Only for a rule with a `selection` key: without it the document is as before.
        **({} if event.selection is None else selection_fields(event.selection)),
    }


def selection_fields(note: SelectionSummary) -> dict[str, Any]:
    """``selection`` (null when PBO and the tied set are not computable), its plain line, and
    why production tags were held back (null when they were not)."""
    computable = note.pbo is not None or note.tied_with_leader is not None or note.dsr is not None
    return {
        "selection": {
            "pbo": note.pbo,
            "dsr": note.dsr,
            "tied_with_leader": note.tied_with_leader,
            "folds": note.folds,
            "runs": note.runs,
        }
        if computable
        else None,
        "selection_line": note.line,
        "production_held_back": note.held_back,
    }


def alert_payload(alert: RunAlert, *, ui_base_url: str | None, now: float) -> dict[str, Any]:
    """The `run.failed` / `run.stalled` document for one alert."""
    return {
        "event": ALERT_EVENTS[alert.kind],
        "experiment_id": alert.experiment_id,
        "experiment_name": alert.experiment_name,
        "rule": alert.rule,
        "run_id": alert.run_id,
        "run_name": alert.run_name,
        "status": alert.status,
        "last_activity": iso_time(alert.last_activity / 1000) if alert.last_activity is not None else None,
        "url": run_url(ui_base_url, alert.experiment_id, alert.run_id),
        "timestamp": iso_time(now),
    }


def render(fmt: WebhookFormat, payload: Mapping[str, Any], *, ui_base_url: str | None) -> str:
    """The request body for a webhook of format `fmt`."""
    if fmt == "slack":
        if payload.get("event") in ALERT_EVENTS.values():
            message = slack_alert(payload, ui_base_url=ui_base_url)
        else:
            message = slack_message(payload, ui_base_url=ui_base_url)
        return json.dumps(message, ensure_ascii=False)
    return json.dumps(payload, ensure_ascii=False)


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn reserves exactly these three characters.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_link(url: str | None, label: str) -> str:
    label = _slack_escape(label).replace("|", "¦")
    return f"<{url}|{label}>" if url else label


def _format_value(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_alert(payload: Mapping[str, Any], *, ui_base_url: str | None) -> dict[str, Any]:
    """One line: which run failed or stalled, linked to the run (when the UI is known)."""
    stalled = payload["event"] == ALERT_EVENTS["stalled"]
    run = _slack_link(payload.get("url"), str(payload["run_name"] or payload["run_id"]))
    experiment = _slack_link(
        board_url(ui_base_url, str(payload["experiment_id"])), str(payload["experiment_name"])
    )
    if stalled:
        what = f"stalled (still {payload['status']}, last activity {payload['last_activity'] or 'unknown'})"
    else:
        what = f"failed ({payload['status']})"
    icon = ":hourglass:" if stalled else ":x:"
    return {"text": f"{icon} Run {run} in {experiment} {what} · rule {_slack_escape(str(payload['rule']))}"}


def slack_message(payload: Mapping[str, Any], *, ui_base_url: str | None) -> dict[str, Any]:
    """A Slack incoming-webhook message: a `text` fallback and a readable board in `blocks`."""
    models: list[Mapping[str, Any]] = list(payload["models"])
    changes: Mapping[str, Any] = payload["changes"]
    experiment = str(payload["experiment_name"])
    direction = "lower is better" if payload["ascending"] else "higher is better"
    names = {m["run_id"]: str(m["run_name"] or m["run_id"]) for m in models}

    leader = models[0] if models else None
    if leader is not None and changes["new_leader"]:
        headline = f"New leader in {experiment}: {names[leader['run_id']]}"
        headline += f" ({payload['metric']} = {_format_value(leader['value'])})"
    else:
        headline = f"Leaderboard changed in {experiment}"
    text = f"{headline}. Top {len(models)} by {payload['metric']} ({direction})."
    if payload.get("selection_line"):
        text += f" {payload['selection_line']}"

    board_link = board_url(ui_base_url, str(payload["experiment_id"]))
    summary = (
        f"*Experiment* {_slack_link(board_link, experiment)}\n"
        f"*Rule* {_slack_escape(str(payload['rule']))} · *Metric* `{payload['metric']}` "
        f"({direction}) · {payload['ranked_runs']} ranked, {payload['unranked_runs']} unranked"
    )
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _truncate(headline, SLACK_HEADER_MAX)},
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": _truncate(summary, SLACK_SECTION_MAX)}},
        {"type": "divider"},
    ]

    lines = [
        f"*{m['rank']}.* {_slack_link(m.get('url'), names[m['run_id']])} `{_format_value(m['value'])}`"
        + (" :new:" if m["run_id"] in changes["entered"] else "")
        for m in models[:SLACK_MAX_MODELS]
    ]
    if len(models) > SLACK_MAX_MODELS:
        lines.append(f"… and {len(models) - SLACK_MAX_MODELS} more")
    for start in range(0, len(lines), SLACK_LINES_PER_SECTION):
        chunk = "\n".join(lines[start : start + SLACK_LINES_PER_SECTION])
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": _truncate(chunk, SLACK_SECTION_MAX)}}
        )

    if payload.get("selection_line"):
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "plain_text",
                    "text": _truncate(str(payload["selection_line"]), SLACK_SECTION_MAX),
                },
            }
        )

    notes = []
    if changes["entered"]:
        notes.append("Entered: " + ", ".join(_slack_escape(names.get(r, r)) for r in changes["entered"]))
    if changes["left"]:
        notes.append("Left: " + ", ".join(_slack_escape(r) for r in changes["left"]))
    notes.append(f"Ranked at {payload['timestamp']}")
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": _truncate(" · ".join(notes), SLACK_SECTION_MAX)}],
        }
    )
    # The context block goes last; keep it when trimming to Slack's block limit.
    if len(blocks) > SLACK_MAX_BLOCKS:
        blocks = blocks[: SLACK_MAX_BLOCKS - 1] + blocks[-1:]
    return {"text": text, "blocks": blocks}
