"""Feature names become legal, unique, stable MLflow metric keys (trainer.keys)."""

from __future__ import annotations

from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.utils.validation import _validate_metric_name

from trainer import keys

AWKWARD = [
    "close",
    "rsi 14",  # a space
    "rsi_14",  # already clean: keeps its key, so "rsi 14" must move aside
    "rsi  14",  # cleans to the same key as the two above
    "ret/5d",  # a slash would nest the metric in the UI
    "vol%",
    "change %",
    "Zürich temp",  # accents fold to ASCII
    "日本株",  # nothing ASCII left
    "日本",  # ... twice, differently
    "max",  # would collide with the summary metric importance_max
    "a.b",
    "ret-1.5",
    "..",  # normpath-sensitive
    "x" * 300,  # too long
    "x" * 300 + "y",  # too long, same truncated prefix
]


def _suffixes(names: list[str]) -> dict[str, str]:
    return keys.metric_names(names)


def test_every_awkward_name_gets_a_key_mlflow_itself_accepts() -> None:
    for name, suffix in _suffixes(AWKWARD).items():
        key = keys.metric_key(suffix)
        _validate_metric_name(key)  # raises MlflowException on an illegal key
        assert keys.is_portable_metric_key(key), (name, key)
        assert len(key) <= keys.MAX_KEY_LENGTH


def test_keys_are_unique_and_never_shadow_the_summary_metrics() -> None:
    suffixes = list(_suffixes(AWKWARD).values())
    assert len(set(suffixes)) == len(AWKWARD)
    assert not set(suffixes) & keys.RESERVED_SUFFIXES


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        ("close", "close"),
        ("ret/5d", "ret_5d"),
        ("vol%", "vol_pct"),
        ("change %", "change_pct"),
        ("Zürich temp", "Zurich_temp"),
        ("a.b", "a_b"),
        ("ret-1.5", "ret_1_5"),
    ],
)
def test_names_without_a_collision_clean_readably(name: str, suffix: str) -> None:
    assert _suffixes(AWKWARD)[name] == suffix


def test_a_clean_name_keeps_its_key_and_names_that_clean_to_it_get_a_hash() -> None:
    suffixes = _suffixes(AWKWARD)
    assert suffixes["rsi_14"] == "rsi_14"
    assert suffixes["rsi 14"].startswith("rsi_14_")
    assert suffixes["rsi  14"].startswith("rsi_14_")
    assert suffixes["rsi 14"] != suffixes["rsi  14"]


def test_keys_do_not_depend_on_the_order_or_on_the_other_features() -> None:
    """The Compare view lines runs up by key, so a feature keeps its key across runs."""
    forward = _suffixes(AWKWARD)
    backward = _suffixes(list(reversed(AWKWARD)))
    assert forward == backward
    alone = _suffixes(["rsi 14", "rsi  14", "close"])
    assert alone["rsi 14"] == forward["rsi 14"]


def test_non_ascii_and_empty_cleanings_get_distinct_keys() -> None:
    suffixes = _suffixes(AWKWARD)
    assert suffixes["日本株"] != suffixes["日本"]
    assert suffixes["日本株"].startswith("f_")
    assert suffixes[".."].startswith("f_")


def test_two_long_names_with_the_same_prefix_stay_apart() -> None:
    suffixes = _suffixes(AWKWARD)
    assert suffixes["x" * 300] != suffixes["x" * 300 + "y"]


def test_a_feature_named_like_a_summary_metric_moves_aside() -> None:
    suffixes = _suffixes(["max", "mean", "min_5"])
    assert suffixes["max"] != "max"
    assert suffixes["mean"] != "mean"
    assert suffixes["min_5"] == "min_5"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text(max_size=30), min_size=1, max_size=12, unique=True), st.randoms(use_true_random=False)
)
def test_any_distinct_names_get_legal_unique_order_independent_keys(names: list[str], rnd: Random) -> None:
    suffixes = keys.metric_names(names)
    assert len(set(suffixes.values())) == len(names)
    assert not set(suffixes.values()) & keys.RESERVED_SUFFIXES
    for suffix in suffixes.values():
        _validate_metric_name(keys.metric_key(suffix))
        assert keys.is_portable_metric_key(keys.metric_key(suffix))
    shuffled = list(names)
    rnd.shuffle(shuffled)
    assert keys.metric_names(shuffled) == suffixes


def test_logged_keys_are_searchable_unquoted_in_a_real_store(sqlite_uri: str) -> None:
    """MLflow stores every key, and `metrics.<key> > x` finds the run without backticks."""
    client = MlflowClient()
    experiment_id = client.create_experiment("keys")
    run_id = client.create_run(experiment_id).info.run_id
    suffixes = keys.metric_names(AWKWARD)
    client.log_batch(run_id, metrics=[Metric(keys.metric_key(s), 0.5, 0, 0) for s in suffixes.values()])
    assert set(client.get_run(run_id).data.metrics) == {keys.metric_key(s) for s in suffixes.values()}
    for suffix in suffixes.values():
        found = client.search_runs([experiment_id], filter_string=f"metrics.{keys.metric_key(suffix)} > 0.1")
        assert [r.info.run_id for r in found] == [run_id]
