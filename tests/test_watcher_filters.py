"""Filter strings the watcher builds parse with MLflow's grammar and mean what they say."""

from __future__ import annotations

import re
from fnmatch import fnmatchcase

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlflow.utils.search_utils import SearchUtils

from watcher.mlflow_io import check_run_filter, glob_to_like
from watcher.searches import and_filters, metric_ref, number_literal


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_threshold_literals_parse_back_to_the_exact_float(value: float) -> None:
    """repr() may write 1e+20, which MLflow's grammar rejects; the literal never uses exponents."""
    clause = f"{metric_ref('avg_test_r2')} >= {number_literal(value)}"
    (parsed,) = SearchUtils.parse_search_filter(clause)
    assert float(parsed["value"]) == value


def test_clauses_join_with_and_and_metric_names_are_quoted() -> None:
    text = and_filters("attributes.status = 'FINISHED'", None, f"{metric_ref('my-metric.v2')} >= 1", "")
    assert text == "attributes.status = 'FINISHED' AND metrics.`my-metric.v2` >= 1"
    check_run_filter(text)


@pytest.mark.parametrize(
    ("pattern", "like"),
    [
        ("wf_xgboost_*", "wf_xgboost_%"),
        ("exp?", "exp_"),
        ("run[0-9]*", "run_%"),
        ("exact", "exact"),
        ("it's*", None),
        ("wf_xgboost_[]]z", "wf_xgboost__z"),  # a set holding "]" is one character
        ("x[!]]y", "x_y"),
        ("a[]b", "a[]b"),  # no set: fnmatch reads "[" and "]" as themselves
    ],
)
def test_globs_become_like_patterns_that_match_a_superset(pattern: str, like: str | None) -> None:
    assert glob_to_like(pattern) == like


@given(st.text("ab_%*?[]!", max_size=7), st.text("abAB_%[]!", max_size=6))
def test_a_like_pattern_never_misses_a_name_the_glob_matches(pattern: str, name: str) -> None:
    like = glob_to_like(pattern)
    assert like is not None
    regex = "".join("." if c == "_" else ".*" if c == "%" else re.escape(c) for c in like)
    if fnmatchcase(name, pattern):
        assert re.fullmatch(regex, name, flags=re.DOTALL)
