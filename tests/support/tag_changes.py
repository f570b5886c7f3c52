"""Tag changes applied to run tags held in memory (what MLflow would hold after them)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from watcher.model import TagChange


def apply_in_memory(
    current: Mapping[str, Mapping[str, str]], changes: Iterable[TagChange]
) -> dict[str, dict[str, str]]:
    """What the tags look like after applying ``changes``, in order."""
    result = {run_id: dict(tags) for run_id, tags in current.items()}
    for change in changes:
        tags = result.setdefault(change.run_id, {})
        if change.new is None:
            tags.pop(change.key, None)
        else:
            tags[change.key] = change.new
    return {run_id: tags for run_id, tags in result.items() if tags}
