"""The dashboard's pure parts: reading the kept board, naming its ranking, retrain checks and the
features across the leaders."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from watcher.dashboard import (
    FeatureRow,
    RetrainRequest,
    across_leaders,
    check_retrain,
    kept_board,
    ranking_of,
    sorted_metric_keys,
)
from watcher.jobs import Job
from watcher.model import RunRecord
from watcher.ranking import Candidate
from watcher.settings import RuleConfig, WatcherSettings
from watcher.state import STATE_TAG, UNRANKED, ExperimentState, fingerprint

RULE = RuleConfig(name="wf", experiments=["wf_*"], metric="avg_test_r2", filter="metrics.num_folds >= 3")
SETTINGS = WatcherSettings(rules=[RULE])


def state(metric: str, ascending: bool, filter_string: str | None, rule: str = "wf") -> ExperimentState:
    board = tuple(Candidate(f"run{i}", "", 0.9 - i / 10, 1000 + i) for i in range(4))
    return ExperimentState(
        rule=rule,
        fingerprint=fingerprint(metric, ascending, filter_string),
        top_n=3,
        production_candidates=2,
        seen=1234,
        board=board,
        ranked_runs=4,
        unranked_runs=1,
    )


def leader(**metrics: float) -> RunRecord:
    return RunRecord("run0", "trial_0", "1", "FINISHED", 1, 2, metrics=metrics)


def test_kept_board_reads_the_tagged_top_n_of_the_state_tag() -> None:
    board = kept_board({STATE_TAG: state("avg_test_r2", False, RULE.filter).to_tag()})
    assert board is not None
    assert board.entries == (("run0", 0.9), ("run1", 0.8), ("run2", pytest.approx(0.7)))
    assert (board.rule, board.top_n, board.production_candidates) == ("wf", 3, 2)
    assert (board.ranked_runs, board.unranked_runs, board.seen_ms) == (4, 1, 1234)
    assert kept_board({}) is None
    assert kept_board({STATE_TAG: "{not json"}) is None


def test_an_experiment_waiting_for_its_first_ranking_has_no_board() -> None:
    """A pass keeps a state (its first sighting) while the experiment waits for a RUNNING run."""
    waiting = ExperimentState(rule="wf", fingerprint=UNRANKED, top_n=3, production_candidates=2, seen=55)
    assert kept_board({STATE_TAG: waiting.to_tag()}) is None


@pytest.mark.parametrize(
    ("metric", "ascending", "filter_string", "rule", "expected"),
    [
        ("avg_test_r2", False, RULE.filter, "wf", ("avg_test_r2", False)),  # the owner rule's ranking
        ("avg_test_rmse", True, None, "api", ("avg_test_rmse", True)),  # POST /models/rank by another metric
        ("avg_test_r2", True, None, "api", ("avg_test_r2", True)),  # same metric, other direction
        ("never_logged", False, None, "api", None),  # not recoverable: said so, not guessed
    ],
)
def test_ranking_of_names_the_metric_and_direction_behind_the_fingerprint(
    metric: str, ascending: bool, filter_string: str | None, rule: str, expected: tuple[str, bool] | None
) -> None:
    board = kept_board({STATE_TAG: state(metric, ascending, filter_string, rule).to_tag()})
    assert board is not None
    run = leader(avg_test_r2=0.9, avg_test_rmse=0.9, num_folds=3.0)
    assert ranking_of(board, SETTINGS, run, "wf_x") == expected


def test_ranking_of_reads_the_metric_and_direction_a_state_records() -> None:
    """A state written by this version names its ranking; nothing is recovered from the hash,
    so a metric the leader no longer carries is still named."""
    recorded = replace(state("never_logged", True, None, "api"), metric="never_logged", ascending=True)
    board = kept_board({STATE_TAG: recorded.to_tag()})
    assert board is not None
    assert (board.metric, board.ascending) == ("never_logged", True)
    assert ranking_of(board, SETTINGS, leader(avg_test_r2=0.9), "wf_x") == ("never_logged", True)


def test_metric_keys_put_averages_first_and_importance_last() -> None:
    keys = ["importance_a", "test_r2", "avg_test_rmse", "num_folds", "avg_test_r2"]
    assert sorted_metric_keys(keys) == [
        "avg_test_r2",
        "avg_test_rmse",
        "num_folds",
        "test_r2",
        "importance_a",
    ]


ROWS = [
    FeatureRow(1, "a", 0.5, 0.1, 1.0),
    FeatureRow(2, "b", 0.01, 0.0, 0.2),
    FeatureRow(3, "c", 0.0005, 0.0, 0.1),
    FeatureRow(4, "d, e", -0.001, 0.0, 0.0),
]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"exclude": ["c", "b", "c"]}, (["c", "b"], None)),
        ({"drop_below": 0.001}, (None, 0.001)),
        ({"exclude": ["zz"]}, "no feature 'zz'"),
        ({"exclude": ["a", "b", "c", "d, e"]}, "nothing to train on"),
        ({"exclude": []}, "at least one"),
        ({"exclude": ["d, e"]}, "cannot be passed"),
        ({}, "exactly one"),
        ({"exclude": ["a"], "drop_below": 0.1}, "exactly one"),
        ({"drop_below": -5.0}, "no feature"),
        ({"drop_below": 1.0}, "nothing left"),
        ({"drop_below": math.inf}, "finite"),
    ],
)
def test_check_retrain(body: dict, expected: tuple | str) -> None:
    request = RetrainRequest(run_id="r1", **body)
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            check_retrain(request, ROWS)
    else:
        assert check_retrain(request, ROWS) == expected


def test_across_leaders_averages_over_the_runs_that_have_each_feature() -> None:
    run1 = [FeatureRow(1, "a", 0.4, None, None), FeatureRow(2, "b", 0.2, None, None)]
    run2 = [
        FeatureRow(1, "b", 0.6, None, None),
        FeatureRow(2, "a", 0.2, None, None),
        FeatureRow(3, "c", 0.9, None, None),
    ]
    got = across_leaders([run1, run2])
    assert [f["feature"] for f in got] == ["c", "b", "a"]
    by = {f["feature"]: f for f in got}
    assert by["a"] == {"feature": "a", "mean_importance": pytest.approx(0.3), "mean_rank": 1.5, "runs": 2}
    assert by["b"]["mean_importance"] == pytest.approx(0.4)
    assert by["c"] == {"feature": "c", "mean_importance": 0.9, "mean_rank": 3.0, "runs": 1}
    assert across_leaders([]) == []


@pytest.mark.parametrize(
    ("exclude", "drop_below"),
    [(("-delta", "beta"), None), (None, -5e-05), (None, 0.001)],
    ids=["feature_starting_with_minus", "negative_threshold", "threshold"],
)
def test_a_jobs_command_line_reads_back_as_the_same_request_in_the_trainers_parser(
    exclude: tuple[str, ...] | None, drop_below: float | None
) -> None:
    """Values starting with '-' stay values: argparse would otherwise take them for options."""
    from trainer.cli import build_parser

    job = Job("j", "abc123", exclude, drop_below, created_at=0.0)
    cmd = job.command("python")
    assert cmd[:4] == ["python", "-m", "trainer", "retrain"]
    args = build_parser().parse_args(cmd[3:])
    assert args.run_id == "abc123"
    assert args.exclude == (",".join(exclude) if exclude else None)
    assert args.drop_below == drop_below
