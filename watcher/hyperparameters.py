"""Which hyperparameters mattered, as the trainer wrote it: experiment tag ``podium.hyperparameters``.

The trainer writes the tag at the end of every sweep: each varied hyperparameter's fANOVA share
of the ranking metric's variance (summing to 1, largest first) and its range among the best
runs, or ``{"reason": ...}`` when there is too little to say. The watcher only serves it.

Pure: the experiment's tags in, the API's answer out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

TAG = "podium.hyperparameters"
ABSENT = (
    "no sweep has written podium.hyperparameters to this experiment yet "
    "(python -m trainer train writes it at the end of every sweep)"
)


def view(experiment_id: str, experiment_name: str, tags: Mapping[str, str]) -> dict[str, Any]:
    """The tag's content with the experiment it belongs to; ``reason`` when there is no
    importance (no tag, an unreadable one, or the trainer's own reason)."""
    head = {"experiment_id": experiment_id, "experiment_name": experiment_name}
    raw = tags.get(TAG)
    if raw is None:
        return {**head, "reason": ABSENT}
    try:
        content = json.loads(raw)
    except ValueError:
        content = None
    if not isinstance(content, dict) or not (
        isinstance(content.get("importance"), dict) or isinstance(content.get("reason"), str)
    ):
        return {**head, "reason": f"tag {TAG} is not the trainer's JSON"}
    return {**head, **content}
