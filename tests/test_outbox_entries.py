"""Outbox entries as typed values: each kind writes its own tag and reads it back, and the
tags of earlier versions still read as entries."""

from __future__ import annotations

import json

import pytest

from watcher.outbox import LEGACY_REGISTRY_TAG, Entry, Promotion, WebhookDelivery, parse_tag
from watcher.registry import newest_promotion


@pytest.mark.parametrize(
    "work",
    [
        WebhookDelivery({"event": "leaderboard.changed", "leader": {"run_id": "r1"}}),
        Promotion(run_id="r1", model_name="m", alias="champion", record_target=True, ranks={"r2": "2"}),
        Promotion(run_id="r1", model_name="m", alias="champion"),
    ],
)
def test_an_entry_reads_back_from_its_tag_as_it_was_kept(work: WebhookDelivery | Promotion) -> None:
    entry = Entry("7", "e1", "team", work, 12.5)
    back = parse_tag("7", entry.tag_key(), entry.tag_value())
    assert back == entry
    assert back is not None
    assert (back.kind, back.adopted, back.tag) == (work.kind, True, entry.tag_key())


def test_the_tag_format_is_unchanged_and_an_old_promotion_tag_still_reads() -> None:
    promotion = Promotion(run_id="r1", model_name="m", alias="a", record_target=False, ranks={"r2": "2"})
    assert json.loads(Entry("7", "e1", "m@a", promotion, 1.0).tag_value())["data"] == {
        "run_id": "r1",
        "model_name": "m",
        "alias": "a",
        "record_target": False,
        "ranks": {"r2": "2"},
    }
    old = parse_tag("7", LEGACY_REGISTRY_TAG, json.dumps({"run_id": "r1", "model_name": "m", "alias": "a"}))
    assert old is not None
    assert (old.target, old.work) == ("m@a", Promotion(run_id="r1", model_name="m", alias="a"))


def test_the_newest_promotion_takes_over_the_duty_to_record_the_target() -> None:
    older = Entry("7", "old", "m@a", Promotion("r1", "m", "a", record_target=True), 1.0)
    newer = Entry("7", "new", "m@a", Promotion("r2", "m", "a"), 2.0)
    kept, superseded = newest_promotion([older, newer])
    assert superseded == [older]
    assert [(e.entry_id, e.work) for e in kept] == [("new", Promotion("r2", "m", "a", record_target=True))]
