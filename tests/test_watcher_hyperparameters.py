"""What the watcher serves of experiment tag ``podium.hyperparameters``: the trainer's JSON with
its experiment, or a reason (no tag yet, a tag that is not the trainer's, the trainer's own)."""

from __future__ import annotations

import json

import pytest

from watcher.hyperparameters import ABSENT, TAG, view

WRITTEN = {
    "metric": "avg_test_r2",
    "evaluator": "fanova",
    "runs": 24,
    "importance": {"learning_rate": 0.7, "subsample": 0.3},
    "best_ranges": {"learning_rate": [0.02, 0.09], "subsample": [0.95, 0.99]},
    "computed_at": "2026-12-07T09:10:56Z",
}


def test_the_tag_is_served_with_its_experiment() -> None:
    got = view("7", "wf_x", {TAG: json.dumps(WRITTEN, separators=(",", ":")), "other": "x"})
    assert got == {"experiment_id": "7", "experiment_name": "wf_x", **WRITTEN}
    assert list(got["importance"]) == ["learning_rate", "subsample"]  # the trainer's order kept


def test_no_tag_says_how_one_gets_written() -> None:
    got = view("7", "wf_x", {})
    assert got["reason"] == ABSENT
    assert "importance" not in got


def test_the_trainers_reason_is_passed_on() -> None:
    reason = "5 finished runs the search space covers; importance needs at least 8"
    assert view("7", "wf_x", {TAG: json.dumps({"reason": reason})})["reason"] == reason


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]", '{"importance": 3}', '{"runs": 4}'])
def test_a_tag_that_is_not_the_trainers_json_is_named(raw: str) -> None:
    got = view("7", "wf_x", {TAG: raw})
    assert got["reason"] == f"tag {TAG} is not the trainer's JSON"
