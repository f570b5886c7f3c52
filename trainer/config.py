"""The trainer's configuration (YAML, validated by pydantic) and the trial sampler.

The defaults here are the ones ``config/trainer.yaml`` documents; a test keeps the two equal.
An unknown key anywhere is an error that names the key and the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainer.errors import InputError
from trainer.keys import clean_name
from trainer.tables import table_stem
from trainer.tasks import TASKS, Task, TaskName

# Search-space names (XGBoost's scikit-learn spelling, logged as params) -> native xgb.train
# parameter names. ``n_estimators`` becomes ``num_boost_round``.
HYPERPARAMETERS: dict[str, str] = {
    "n_estimators": "num_boost_round",
    "max_depth": "max_depth",
    "max_leaves": "max_leaves",
    "learning_rate": "eta",
    "subsample": "subsample",
    "colsample_bytree": "colsample_bytree",
    "colsample_bylevel": "colsample_bylevel",
    "colsample_bynode": "colsample_bynode",
    "min_child_weight": "min_child_weight",
    "reg_lambda": "lambda",
    "reg_alpha": "alpha",
    "gamma": "gamma",
    "max_delta_step": "max_delta_step",
    "grow_policy": "grow_policy",
}


SAMPLE_SYMBOL = "SAMPLE"


@dataclass(frozen=True)
class Domain:
    """Where XGBoost accepts a hyperparameter: ``low``/``high`` bounds (open or closed), whole
    numbers only (``integer``), or one of ``values``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    integer: bool = False
    values: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.values:
            return "one of " + ", ".join(self.values)
        low = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        high = "" if self.high is None else f"<= {self.high:g}"
        kind = "a whole number " if self.integer else "a number "
        return kind + " and ".join(part for part in (low, high) if part)

    def problem(self, value: object) -> str | None:
        """What is wrong with ``value`` (None: it is inside the domain)."""
        if self.values:
            return None if value in self.values else f"{value!r} is not {self.describe()}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{value!r} is not {self.describe()}"
        if self.integer and not float(value).is_integer():
            return f"{value!r} is not {self.describe()}"
        if not math.isfinite(value):
            return f"{value!r} is not {self.describe()}"
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and value > self.high
        return f"{value!r} is not {self.describe()}" if below or above else None


_FRACTION = Domain(low=0, high=1, low_open=True)
_NON_NEGATIVE = Domain(low=0)
DOMAINS: dict[str, Domain] = {
    "n_estimators": Domain(low=1, integer=True),
    "max_depth": Domain(low=0, integer=True),
    "max_leaves": Domain(low=0, integer=True),
    "learning_rate": Domain(low=0, high=1, low_open=True),
    "subsample": _FRACTION,
    "colsample_bytree": _FRACTION,
    "colsample_bylevel": _FRACTION,
    "colsample_bynode": _FRACTION,
    "min_child_weight": _NON_NEGATIVE,
    "reg_lambda": _NON_NEGATIVE,
    "reg_alpha": _NON_NEGATIVE,
    "gamma": _NON_NEGATIVE,
    "max_delta_step": _NON_NEGATIVE,
    "grow_policy": Domain(values=("depthwise", "lossguide")),
}
# XGBoost's objectives for a real-valued target (the trainer predicts a number per row).
Objective = Literal[
    "reg:squarederror",
    "reg:squaredlogerror",
    "reg:pseudohubererror",
    "reg:absoluteerror",
    "reg:quantileerror",
    "reg:gamma",
    "reg:tweedie",
    "count:poisson",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntRange(_Strict):
    """An integer drawn uniformly from [low, high] (log-uniformly with ``log: true``)."""

    type: Literal["int"] = "int"
    low: int
    high: int
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        _check_range(self.low, self.high, self.log)
        return self


class FloatRange(_Strict):
    """A float drawn uniformly from [low, high] (log-uniformly with ``log: true``)."""

    type: Literal["float"] = "float"
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        _check_range(self.low, self.high, self.log)
        return self


class Choice(_Strict):
    """One of ``values``, each equally likely."""

    type: Literal["choice"] = "choice"
    values: list[int | float | str] = Field(min_length=1)


def domain_problem(name: str, dist: IntRange | FloatRange | Choice) -> str | None:
    """Why ``search_space.{name}`` can draw a value XGBoost refuses (None: it cannot)."""
    domain = DOMAINS.get(name)
    if domain is None:
        return None
    key = f"search_space.{name}"
    if isinstance(dist, Choice):
        for value in dist.values:
            problem = domain.problem(value)
            if problem:
                return f"{key}: value {problem}"
        return None
    if domain.values:
        return f"{key}: must be a choice, {domain.describe()}"
    if domain.integer and isinstance(dist, FloatRange):
        return f"{key}: {name} takes whole numbers; use type: int"
    for bound in ("low", "high"):
        problem = domain.problem(getattr(dist, bound))
        if problem:
            return f"{key}.{bound}: {problem}"
    return None


def _numbers_of(name: str, dist: Any) -> Any:
    """``dist`` (a fixed value or a distribution mapping) with whole floats made ints when
    ``name`` takes whole numbers; ValueError naming ``search_space.{name}`` for a boolean or a
    fraction there."""
    domain = DOMAINS.get(name)
    integer = domain is not None and domain.integer

    def number(value: Any, key: str) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"{key}: {str(value).lower()} is a boolean, not a hyperparameter value")
        if integer and isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{key}: {value!r} is not a whole number ({name} takes whole numbers)")
            return int(value)
        return value

    key = f"search_space.{name}"
    if not isinstance(dist, dict):
        return number(dist, key)
    out = dict(dist)
    for bound in ("low", "high"):
        if bound in out:
            out[bound] = number(out[bound], f"{key}.{bound}")
    if isinstance(out.get("values"), list):
        out["values"] = [number(v, f"{key}.values") for v in out["values"]]
    return out


def _check_range(low: float, high: float, log: bool) -> None:
    if low > high:
        raise ValueError(f"low ({low}) must not be above high ({high})")
    if log and low <= 0:
        raise ValueError("a log range needs low > 0")


Distribution = Annotated[IntRange | FloatRange | Choice, Field(discriminator="type")]


def _default_space() -> dict[str, Distribution]:
    return {
        "n_estimators": IntRange(low=40, high=160),
        "max_depth": IntRange(low=2, high=6),
        "learning_rate": FloatRange(low=0.02, high=0.2, log=True),
        "subsample": FloatRange(low=0.6, high=1.0),
        "colsample_bytree": FloatRange(low=0.4, high=1.0),
        "min_child_weight": FloatRange(low=1.0, high=50.0, log=True),
        "reg_lambda": FloatRange(low=0.1, high=10.0, log=True),
        "reg_alpha": FloatRange(low=0.001, high=1.0, log=True),
    }


class DataConfig(_Strict):
    path: Path | None = None
    target: str | None = None
    time_column: str | None = None  # None: found by name, or an unnamed first column of times


class WalkForwardConfig(_Strict):
    train_months: int = Field(default=3, ge=1)
    test_months: int = Field(default=1, ge=1)
    window: Literal["rolling", "expanding"] = "rolling"
    # None: the larger of 10 and half the median test window's rows
    min_test_rows: int | None = Field(default=None, ge=1)


class XGBoostConfig(_Strict):
    """Fixed XGBoost settings shared by every trial (not searched)."""

    objective: Objective = "reg:squarederror"
    tree_method: Literal["hist", "approx"] = "hist"
    max_bin: int = Field(default=64, ge=2)
    nthread: int = Field(default=1, ge=1)


class ImportanceConfig(_Strict):
    enabled: bool = True
    n_repeats: int = Field(default=3, ge=1)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)  # random_state of the permutations, as sklearn's
    # latest: the last fold's model on the latest test window; pooled: every fold's model on
    # its own test window
    holdout: Literal["latest", "pooled"] = "latest"
    min_rows: int = Field(default=10, ge=2)  # fewer held-out rows: importance is skipped


class TrainerConfig(_Strict):
    symbol: str | None = Field(default=None, min_length=1)  # None: the data file's stem
    task: TaskName = "regression"
    trials: int = Field(default=24, ge=1)
    seed: int = Field(default=42, ge=0)  # numpy's seeds are non-negative
    jobs: int = Field(default=2, ge=1)
    backend: Literal["local", "ray"] = "local"
    search: Literal["random", "tpe"] = "random"  # how trials are picked (trainer.search)
    ray_address: str | None = None  # null: RAY_ADDRESS, else a local Ray started for the sweep
    experiment: str | None = None
    top: int = Field(default=5, ge=1)
    data: DataConfig = DataConfig()
    walk_forward: WalkForwardConfig = WalkForwardConfig()
    # OHLCV mode predicts the log return over the next `horizon` bars; in every mode the last
    # `horizon` rows of each training window (labels reaching into the test window) are purged
    horizon: int = Field(default=1, ge=1)
    embargo: int = Field(default=0, ge=0)  # rows left out at the start of each test window
    # trading scores: cost in basis points per unit of position change (1 opens or closes, 2 flips)
    cost_bps: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    xgboost: XGBoostConfig = XGBoostConfig()
    importance: ImportanceConfig = ImportanceConfig()
    search_space: dict[str, Distribution] = Field(default_factory=_default_space)

    @field_validator("search_space", mode="before")
    @classmethod
    def _fixed_values(cls, value: Any) -> Any:
        """``subsample: 0.8`` is shorthand for a choice of one value."""
        if not isinstance(value, dict):
            return value
        return {
            name: {"type": "choice", "values": [dist]} if isinstance(dist, int | float | str) else dist
            for name, dist in value.items()
        }

    @model_validator(mode="before")
    @classmethod
    def _search_space_numbers(cls, value: Any) -> Any:
        """Whole floats for whole-number hyperparameters (``max_depth: 3.0``) become ints, as
        XGBoost takes only ints there; a boolean is no hyperparameter value anywhere."""
        space = value.get("search_space") if isinstance(value, dict) else None
        if not isinstance(space, dict):
            return value
        return {**value, "search_space": {name: _numbers_of(name, dist) for name, dist in space.items()}}

    @model_validator(mode="after")
    def _known_hyperparameters(self) -> TrainerConfig:
        unknown = sorted(set(self.search_space) - set(HYPERPARAMETERS))
        if unknown:
            raise ValueError(
                f"unknown hyperparameter(s) {', '.join(unknown)}; known: {', '.join(sorted(HYPERPARAMETERS))}"
            )
        if "n_estimators" not in self.search_space:
            raise ValueError("search_space needs n_estimators")
        for name in sorted(self.search_space):
            problem = domain_problem(name, self.search_space[name])
            if problem:
                raise ValueError(problem)
        return self

    def resolved_symbol(self) -> str:
        """``symbol``, else the data file's stem (``sp500.csv.gz`` -> ``sp500``), else SAMPLE; made a
        legal experiment-name part."""
        if self.symbol is not None:
            return symbol_of(self.symbol)
        if self.data.path is not None:
            return symbol_of(table_stem(self.data.path))
        return SAMPLE_SYMBOL

    def resolved_task(self) -> Task:
        return TASKS[self.task]

    def experiment_name(self, n_features: int) -> str:
        """``experiment``, else ``wf_xgboost_{SYMBOL}_{infix}f{n}_tr{m}m_te{k}m`` where the infix
        is empty for regression, ``dir_`` for direction and ``cls_`` for classification."""
        if self.experiment:
            return self.experiment
        wf = self.walk_forward
        infix = self.resolved_task().infix
        # another horizon is another target: its trials are not ranked with the next bar's
        horizon = f"_h{self.horizon}" if self.horizon != 1 else ""
        return (
            f"wf_xgboost_{self.resolved_symbol()}_{infix}f{n_features}_tr{wf.train_months}m_te{wf.test_months}m"
            f"{horizon}"
        )


def symbol_of(text: str) -> str:
    """``text`` as letters, digits and underscores (``EUR/USD`` -> ``EUR_USD``); never empty."""
    return clean_name(text) or "DATA"


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> TrainerConfig:
    """Read ``path`` (``None``: the built-in defaults) and apply dotted-key ``overrides``."""
    raw: dict[str, Any] = {}
    where = "built-in defaults"
    if path is not None:
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise InputError(f"cannot read config file {path}: {e.strerror or e}") from e
        except UnicodeDecodeError as e:
            raise InputError(
                f"config file {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                f"{e.start}); save it as UTF-8"
            ) from e
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark is not None else ""
            raise InputError(f"config file {path} is not valid YAML{at}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise InputError(f"config file {path} must hold a mapping of keys, not {type(loaded).__name__}")
        raw = loaded
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[leaf] = value
    try:
        return TrainerConfig.model_validate(raw)
    except ValidationError as e:
        raise InputError(f"config file {where}: {_first_error(e)}") from e


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"unknown key {loc!r}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def sample_trial(space: dict[str, Distribution], seed: int, index: int) -> dict[str, Any]:
    """Hyperparameters of trial ``index``; depends only on (seed, index), not on the count."""
    rng = np.random.default_rng([seed, index])
    out: dict[str, Any] = {}
    for name in sorted(space):
        dist = space[name]
        if isinstance(dist, Choice):
            out[name] = dist.values[int(rng.integers(len(dist.values)))]
        elif isinstance(dist, IntRange):
            if dist.log:
                value = math.exp(rng.uniform(math.log(dist.low), math.log(dist.high + 1)))
                out[name] = min(int(value), dist.high)
            else:
                out[name] = int(rng.integers(dist.low, dist.high + 1))
        else:
            if dist.log:
                value = math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
            else:
                value = rng.uniform(dist.low, dist.high)
            out[name] = float(f"{value:.4g}")
    return out
