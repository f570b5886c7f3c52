"""Which hyperparameters mattered: experiment tag ``podium.hyperparameters``.

Over every finished run of the experiment that the search space covers (``trainer.search``'s
filter: the task's runs whose varied hyperparameters parse into the space, with a finite ranking
metric), Optuna's fANOVA (``FanovaImportanceEvaluator(seed=0)``) with the ranking metric as
target gives each varied hyperparameter's share of the metric's variance, normalised to sum to
1; ``best_ranges`` is each one's range among the best 10% of those runs (at least 3). Fewer
than ``MIN_RUNS`` runs, or one varied hyperparameter, give ``{"reason": ...}`` instead.

fANOVA's cost grows faster than the runs (its forest's trees grow a leaf per run: ~2 s of CPU
at 200 runs, ~5 s at 400, over a minute of wall time at 1,000 on a loaded 2-core machine), and it
runs at the end of every sweep: past ``MAX_FANOVA_RUNS`` it is fitted on a seeded uniform sample
of that many runs, and the tag says so (``"sampled": 300``); ``runs`` and ``best_ranges`` still
cover them all.

Pure: plain values in, a JSON-ready mapping out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import numpy as np
from optuna.importance import FanovaImportanceEvaluator, get_param_importances

from trainer.config import Choice, Distribution
from trainer.search import Covered, study_of, varied

TAG = "podium.hyperparameters"
MIN_RUNS = 8
BEST_SHARE = 0.1
MIN_BEST = 3
EVALUATOR = "fanova"
MAX_FANOVA_RUNS = 300
_DIGITS = 4


def report(
    covered: Sequence[Covered], space: Mapping[str, Distribution], metric: str, now: datetime | None = None
) -> dict[str, Any]:
    """The tag's content for ``covered`` runs of ``space``, ranked by ``metric``."""
    moving = varied(space)
    if len(moving) < 2:
        names = ", ".join(moving) or "none"
        return {"reason": f"fewer than 2 varied hyperparameters (varied: {names}); nothing to compare"}
    if len(covered) < MIN_RUNS:
        return {
            "reason": f"{len(covered)} finished runs the search space covers; importance needs at least {MIN_RUNS}"
        }
    fitted = list(covered)
    if len(fitted) > MAX_FANOVA_RUNS:
        picked = np.random.default_rng(0).choice(len(fitted), MAX_FANOVA_RUNS, replace=False)
        fitted = [fitted[i] for i in sorted(picked)]
    study = study_of(space, None, fitted)
    raw = get_param_importances(
        study, evaluator=FanovaImportanceEvaluator(seed=0), params=list(moving), normalize=True
    )
    shares = _shares({name: raw.get(name, 0.0) for name in moving})
    order = sorted(shares, key=lambda name: (-shares[name], name))
    best = sorted(covered, key=lambda c: -c.value)[: max(MIN_BEST, math.ceil(BEST_SHARE * len(covered)))]
    sampled = {"sampled": len(fitted)} if len(fitted) < len(covered) else {}
    return {
        "metric": metric,
        "evaluator": EVALUATOR,
        "runs": len(covered),
        **sampled,
        "importance": {name: shares[name] for name in order},
        "best_ranges": {name: _range(moving[name], [c.params[name] for c in best]) for name in order},
        "computed_at": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _shares(raw: Mapping[str, float]) -> dict[str, float]:
    """Rounded shares summing to exactly 1 (the largest takes the rounding); equal shares when
    fANOVA finds no variance at all."""
    clean = {k: max(float(v), 0.0) if math.isfinite(v) else 0.0 for k, v in raw.items()}
    total = sum(clean.values())
    if total <= 0:
        clean = dict.fromkeys(clean, 1.0)
        total = float(len(clean))
    shares = {k: round(v / total, _DIGITS) for k, v in clean.items()}
    top = max(shares, key=lambda k: (shares[k], k))
    shares[top] = round(1.0 - sum(v for k, v in shares.items() if k != top), _DIGITS)
    return shares


def _range(dist: Distribution, values: Sequence[Any]) -> list[Any]:
    """[low, high] of numbers (4 significant digits), or the choices taken, in the space's order."""
    if isinstance(dist, Choice):
        return [v for v in dist.values if v in values]
    low, high = min(values), max(values)
    if isinstance(low, float) or isinstance(high, float):
        return [float(f"{low:.4g}"), float(f"{high:.4g}")]
    return [low, high]


def tag_value(content: Mapping[str, Any]) -> str:
    """Compact JSON, as the tag holds it."""
    return json.dumps(content, separators=(",", ":"))


def print_table(content: Mapping[str, Any], out: TextIO) -> None:
    """The tag as the summary shows it, after the leaderboard."""
    if "reason" in content:
        print(f"Hyperparameter importance: none ({content['reason']})", file=out)
        return
    over = (
        f"a sample of {content['sampled']} of {content['runs']}" if "sampled" in content else content["runs"]
    )
    print(
        f"Hyperparameter importance ({content['evaluator']} over {over} runs, "
        f"{content['metric']}; range among the best):",
        file=out,
    )
    rows = [
        [name, f"{share:.3f}", _range_text(content["best_ranges"].get(name, []))]
        for name, share in content["importance"].items()
    ]
    headers = ["hyperparameter", "share", "best range"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _range_text(values: Sequence[Any]) -> str:
    if len(values) == 2 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return f"{values[0]:g} .. {values[1]:g}"
    return ", ".join(str(v) for v in values)
