"""How a sweep picks its trials (``--search random|tpe``) and what it learns from the runs the
experiment already holds.

- ``random``: ``sample_trial(space, seed, index)``, a function of (seed, index) alone; nothing
  read from the history but the run names.
- ``tpe``: Optuna's ``TPESampler(seed=seed, multivariate=True, constant_liar=True)`` over the same
  space, through ask/tell: the sweep asks only when a worker is free (so at most ``--jobs`` trials
  are asked ahead) and tells each outcome as it comes back; the lie for a trial still running
  keeps parallel asks apart. Before the first ask, the experiment's FINISHED runs that the space
  covers join the study as completed trials: the search goes on from them. A sweep into an
  experiment that holds trials already seeds its sampler from (seed, its first trial's number),
  so TPE's random start-up trials are not the first sweep's again (``study_seed``).

Either way trial names go on after the experiment's highest ``trial_N``, and trial ``N`` of a
random search is ``sample_trial(space, seed, N)``, as in a fresh experiment.

Pure decisions over plain values: the runs come in from ``trainer.tracking``.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from trainer.config import Choice, Distribution, IntRange, sample_trial
from trainer.errors import InputError
from trainer.tasks import Task

SEARCHES = ("random", "tpe")
FINISHED = "FINISHED"
# Why a finished run of the experiment did not join the study (the summary's order).
OUTSIDE_SPACE, OTHER_TASK, NO_METRIC = "outside_space", "other_task", "no_metric"
REASONS = (OUTSIDE_SPACE, OTHER_TASK, NO_METRIC)
_TRIAL_NAME = re.compile(r"trial_(\d+)")
# Random search logs floats to 4 significant digits: a bound written with more digits may be
# rounded past by a hair, which is still inside the space.
_ROUNDING = 5e-4

optuna.logging.set_verbosity(optuna.logging.WARNING)


class RunRecord(Protocol):
    """What the search reads of a logged run (``trainer.tracking.LoggedRun`` is one)."""

    @property
    def run_name(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def params(self) -> dict[str, str]: ...

    @property
    def metrics(self) -> dict[str, float]: ...


# --------------------------------------------------------------------------------------------
# The space
# --------------------------------------------------------------------------------------------


def varied(space: Mapping[str, Distribution]) -> dict[str, Distribution]:
    """The hyperparameters that take more than one value, by name."""
    return {name: space[name] for name in sorted(space) if fixed_value(space[name]) is None}


def fixed_value(dist: Distribution) -> Any | None:
    """The one value a distribution takes, or None when it takes more."""
    if isinstance(dist, Choice):
        return dist.values[0] if len(set(map(str, dist.values))) == 1 else None
    return dist.low if dist.low == dist.high else None


def tpe_problem(space: Mapping[str, Distribution]) -> str | None:
    """Why ``--search tpe`` cannot search ``space`` (None: it can), naming the key."""
    for name, dist in sorted(space.items()):
        if isinstance(dist, Choice) and fixed_value(dist) is None:
            texts = [str(v) for v in dist.values]
            repeated = sorted({t for t in texts if texts.count(t) > 1})
            if repeated:
                return (
                    f"search_space.{name}: --search tpe needs distinct choices, and "
                    f"{', '.join(repeated)} is given more than once (TPE learns each choice's odds)"
                )
    return None


def distribution(dist: Distribution) -> BaseDistribution:
    """The Optuna distribution of one varied hyperparameter."""
    if isinstance(dist, Choice):
        return CategoricalDistribution(tuple(dist.values))
    if isinstance(dist, IntRange):
        return IntDistribution(dist.low, dist.high, log=dist.log)
    return FloatDistribution(dist.low, dist.high, log=dist.log)


def parse_param(dist: Distribution, text: str | None) -> Any | None:
    """A logged param's value inside ``dist``, or None when it is missing or outside."""
    if text is None:
        return None
    if isinstance(dist, Choice):
        return next((v for v in dist.values if str(v) == text), None)
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    if isinstance(dist, IntRange):
        if not value.is_integer() or not dist.low <= value <= dist.high:
            return None
        return int(value)
    slack = _ROUNDING * max(abs(dist.low), abs(dist.high))
    if not dist.low - slack <= value <= dist.high + slack:
        return None
    return min(max(value, dist.low), dist.high)


# --------------------------------------------------------------------------------------------
# The history
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Covered:
    """A finished run the space covers: its varied hyperparameters and its ranking metric."""

    params: dict[str, Any]
    value: float


@dataclass(frozen=True)
class History:
    """What a sweep learned from the experiment's runs before its first trial."""

    first_index: int  # after the highest trial_N of the experiment (0 in a new one)
    resumed: bool = False  # the finished runs were read (tpe), not just the names (random)
    read: int = 0  # finished runs read
    covered: list[Covered] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> runs

    def line(self) -> str:
        """One line for the summary."""
        parts = ", ".join(f"{self.left_out[r]} {r}" for r in REASONS if self.left_out.get(r))
        out = f" (left out: {parts})" if parts else ""
        return f"Resumed from {self.read} finished runs of the experiment: {len(self.covered)} kept{out}"


def next_index(names: Iterable[str]) -> int:
    """One past the highest ``trial_N`` among ``names`` (0 when there is none)."""
    numbers = [int(m.group(1)) for n in names if (m := _TRIAL_NAME.fullmatch(n or ""))]
    return max(numbers, default=-1) + 1


def covered_runs(
    runs: Iterable[RunRecord], space: Mapping[str, Distribution], task: Task
) -> tuple[list[Covered], dict[str, int]]:
    """The FINISHED runs of ``task`` whose every varied hyperparameter parses into ``space`` and
    whose ranking metric is finite; the rest of the finished runs counted by reason."""
    moving = varied(space)
    kept: list[Covered] = []
    left_out: Counter[str] = Counter()
    for run in runs:
        if run.status != FINISHED:
            continue
        if run.params.get("task", "regression") != task.name:
            left_out[OTHER_TASK] += 1
            continue
        params = {name: parse_param(dist, run.params.get(name)) for name, dist in moving.items()}
        if any(v is None for v in params.values()):
            left_out[OUTSIDE_SPACE] += 1
            continue
        value = run.metrics.get(task.main_metric, math.nan)
        if not math.isfinite(value):
            left_out[NO_METRIC] += 1
            continue
        kept.append(Covered(params, float(value)))
    return kept, dict(left_out)


def history(runs: Sequence[RunRecord], space: Mapping[str, Distribution], task: Task, search: str) -> History:
    """Where the sweep's names start, and for ``tpe`` the runs that join the study."""
    first = next_index(r.run_name for r in runs)
    if search != "tpe":
        return History(first)
    covered, left_out = covered_runs(runs, space, task)
    return History(first, True, sum(1 for r in runs if r.status == FINISHED), covered, left_out)


# --------------------------------------------------------------------------------------------
# The samplers
# --------------------------------------------------------------------------------------------


class Sampler(Protocol):
    def ask(self, index: int) -> dict[str, Any]:
        """The hyperparameters of trial ``index``."""
        ...

    def tell(self, index: int, value: float | None) -> None:
        """Trial ``index`` ended with ranking metric ``value`` (None: failed or unscored)."""
        ...


class RandomSampler:
    def __init__(self, space: Mapping[str, Distribution], seed: int) -> None:
        self.space = dict(space)
        self.seed = seed

    def ask(self, index: int) -> dict[str, Any]:
        return sample_trial(self.space, self.seed, index)

    def tell(self, index: int, value: float | None) -> None:
        return None


def study_of(space: Mapping[str, Distribution], seed: int | None, covered: Iterable[Covered]) -> optuna.Study:
    """A throw-away in-memory study (maximize) holding ``covered`` as completed trials."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    distributions = {name: distribution(dist) for name, dist in varied(space).items()}
    study.add_trials(
        [
            optuna.trial.create_trial(params=c.params, distributions=distributions, value=c.value)
            for c in covered
        ]
    )
    return study


class TpeSampler:
    """Ask/tell over an Optuna study; fixed hyperparameters are added to what TPE suggests."""

    def __init__(self, space: Mapping[str, Distribution], seed: int, covered: Iterable[Covered]) -> None:
        problem = tpe_problem(space)
        if problem:
            raise InputError(problem)
        self.fixed = {name: fixed_value(d) for name, d in space.items() if fixed_value(d) is not None}
        self.distributions = {name: distribution(dist) for name, dist in varied(space).items()}
        self.study = study_of(space, seed, covered)
        self._trials: dict[int, int] = {}  # sweep index -> study trial number

    def ask(self, index: int) -> dict[str, Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            trial = self.study.ask(self.distributions)
        self._trials[index] = trial.number
        # floats to 4 significant digits, as random search logs them (the study keeps its own)
        suggested = {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in trial.params.items()}
        return {**self.fixed, **suggested}

    def tell(self, index: int, value: float | None) -> None:
        number = self._trials.pop(index, None)
        if number is None:
            return
        if value is None or not math.isfinite(value):
            self.study.tell(number, state=TrialState.FAIL)
        else:
            self.study.tell(number, value)


def study_seed(seed: int, first_index: int) -> int:
    """The TPE sampler's seed for a sweep whose first trial is ``trial_{first_index}``.

    A new experiment's sweep is seeded with ``seed`` itself. A later sweep gets a seed of its own
    drawn from (seed, first_index): TPE's first ten trials are random draws from its seed alone,
    whatever the study holds, so the same seed would ask a resumed sweep of a short history the
    first sweep's trials again. Optuna's samplers take seeds below 2**32; larger ones are drawn
    down the same way."""
    if first_index == 0 and seed < 2**32:
        return seed
    return int(np.random.SeedSequence([seed, first_index]).generate_state(1)[0])


def sampler_for(search: str, space: Mapping[str, Distribution], seed: int, past: History) -> Sampler:
    if search == "tpe":
        return TpeSampler(space, study_seed(seed, past.first_index), past.covered)
    return RandomSampler(space, seed)


def check_search(search: str, space: Mapping[str, Distribution]) -> None:
    """InputError (exit 2) for a search that is not one of the two, or a space TPE cannot take."""
    if search not in SEARCHES:
        raise InputError(f"--search {search!r}: expected one of {', '.join(SEARCHES)}")
    if search == "tpe":
        problem = tpe_problem(space)
        if problem:
            raise InputError(problem)
