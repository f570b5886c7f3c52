"""MLflow's search grammar: checking a rule's run filter, and a glob as a LIKE pattern."""

from __future__ import annotations

import re

from mlflow.exceptions import MlflowException
from mlflow.utils.search_utils import SearchUtils

_COMPARATORS: dict[str, set[str]] = {
    "metric": set(SearchUtils.VALID_METRIC_COMPARATORS),
    "parameter": set(SearchUtils.VALID_PARAM_COMPARATORS),
    "tag": set(SearchUtils.VALID_TAG_COMPARATORS),
    "attribute": set(SearchUtils.VALID_STRING_ATTRIBUTE_COMPARATORS)
    | set(SearchUtils.VALID_NUMERIC_ATTRIBUTE_COMPARATORS),
    "dataset": set(SearchUtils.VALID_DATASET_COMPARATORS),
}


def check_run_filter(filter_string: str) -> None:
    """Parse a run filter with MLflow's own search grammar; ValueError says what is wrong."""
    try:
        clauses = SearchUtils.parse_search_filter(filter_string)
    except MlflowException as e:
        raise ValueError(f"not a valid MLflow run filter: {e.message}") from e
    except Exception as e:  # sqlparse raises assorted errors on odd input
        raise ValueError(f"not a valid MLflow run filter: {e}") from e
    # The parser lets some operators through (``>>=``) that the server rejects at query time,
    # which would fail every pass: check them here, as the server will.
    for clause in clauses:
        allowed = _COMPARATORS.get(clause.get("type", ""))
        comparator = str(clause.get("comparator", "")).upper()
        if allowed is not None and comparator not in allowed:
            raise ValueError(
                f"not a valid MLflow run filter: operator {clause.get('comparator')!r} is not "
                f"allowed for {clause['type']} {clause.get('key')!r} (use one of {', '.join(sorted(allowed))})"
            )


def glob_to_like(pattern: str) -> str | None:
    """A LIKE pattern that matches a superset of the glob, or None if none is safe.

    The caller re-checks names with :func:`fnmatch.fnmatchcase`, which also makes the result
    case-sensitive on every backend (sqlite's LIKE ignores case, PostgreSQL's does not).
    """
    if "'" in pattern or "\\" in pattern:
        return None
    # A set matches one character; fnmatch reads a ``]`` right after ``[`` or ``[!`` as a
    # member (``[]]`` is the set of ``]``), and a ``[`` with no closing ``]`` as itself.
    like = re.sub(r"\[!?+(?:\][^\]]*|[^\]]+)\]", "_", pattern)
    return like.replace("*", "%").replace("?", "_")
