"""Feature names made into legal, unique MLflow metric keys.

MLflow accepts metric keys of at most 250 characters made of word characters, ``_ - . / :``
and spaces (``mlflow.utils.validation``), and rejects keys that change under
``posixpath.normpath``. We keep to a stricter, portable subset, ``[A-Za-z0-9_]``, so a key
also works unquoted in a search filter (``metrics.importance_vol_pct > 0.01``), on Windows
(no ``:``), and never nests in the UI's metric tree (no ``/``).

Uniqueness is decided over the whole feature list, not only over the names that end up
logged, so a feature keeps its key whichever features happen to make the top 20. A name that
is already clean keeps it; any other name whose cleaned form is taken gets a short hash of
its original spelling, which is the same in every run.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence

METRIC_PREFIX = "importance_"
MAX_KEY_LENGTH = 250  # mlflow.utils.validation.MAX_ENTITY_KEY_LENGTH
# MLflow's limit on a param value (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH); feature_names
# can come close with long column names.
MAX_PARAM_LENGTH = 6000
# MLflow's limit on a run tag's value (mlflow.utils.validation.MAX_TAG_VAL_LENGTH); a longer
# value is cut, so a JSON tag over it would no longer parse.
MAX_TAG_LENGTH = 8000
RESERVED_SUFFIXES = frozenset({"max", "mean", "median", "min"})
_HASH_LENGTH = 8
_MAX_NAME_LENGTH = MAX_KEY_LENGTH - len(METRIC_PREFIX)

_WORDS = {"%": "pct", "#": "num", "&": "and", "+": "plus", "<": "lt", ">": "gt", "=": "eq"}
_ILLEGAL = re.compile(r"[^A-Za-z0-9_]+")
_UNDERSCORES = re.compile(r"_{2,}")


def clean_name(name: str) -> str:
    """The portable spelling of one feature name; may be empty (e.g. for ``"日本"``)."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    for symbol, word in _WORDS.items():
        ascii_name = ascii_name.replace(symbol, f"_{word}_")
    cleaned = _UNDERSCORES.sub("_", _ILLEGAL.sub("_", ascii_name))
    return cleaned.strip("_")[:_MAX_NAME_LENGTH]


def _digest(name: str) -> str:
    return hashlib.sha1(name.encode("utf-8"), usedforsecurity=False).hexdigest()[:_HASH_LENGTH]


def _with_suffix(base: str, suffix: str) -> str:
    head = base[: _MAX_NAME_LENGTH - len(suffix) - 1].rstrip("_")
    return f"{head}_{suffix}" if head else f"f_{suffix}"


def metric_names(feature_names: Sequence[str]) -> dict[str, str]:
    """Map every feature name to its metric-key suffix: legal, unique, stable across runs.

    ``importance_{suffix}`` is the metric key; the suffixes never collide with each other nor
    with the summary metrics ``importance_max/mean/median/min``.
    """
    cleaned = {name: clean_name(name) for name in feature_names}
    taken: set[str] = set(RESERVED_SUFFIXES)
    result: dict[str, str] = {}
    # First pass: names that are their own clean form claim it (they cannot collide with
    # each other, being distinct strings), unless it is reserved.
    for name in feature_names:
        if cleaned[name] == name and name not in RESERVED_SUFFIXES and name not in result:
            result[name] = name
            taken.add(name)
    counts: dict[str, int] = {}
    for name in feature_names:
        if name not in result:
            counts[cleaned[name]] = counts.get(cleaned[name], 0) + 1
    for name in feature_names:
        if name in result:
            continue
        base = cleaned[name]
        key = base
        if not base or base in taken or counts[base] > 1:
            key = _with_suffix(base, _digest(name))
        ordinal = 2
        while key in taken:  # a hash collision, or a feature literally named like a suffix
            key = _with_suffix(base, f"{_digest(name)}_{ordinal}")
            ordinal += 1
        result[name] = key
        taken.add(key)
    return {name: result[name] for name in feature_names}


def metric_key(suffix: str) -> str:
    return f"{METRIC_PREFIX}{suffix}"


def is_portable_metric_key(key: str) -> bool:
    """Our own rule, stricter than MLflow's; for tests and assertions."""
    return 0 < len(key) <= MAX_KEY_LENGTH and _ILLEGAL.search(key) is None
