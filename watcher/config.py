"""The config file's sections as typed, frozen models: a rule (with its ``selection`` and
``registry`` keys), a webhook and the HTTP API. Each field validates itself and says what is
wrong; :mod:`watcher.settings` reads the file and the environment into them.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from watcher.model import MAX_TOP_N, AlertKind, Trigger, WebhookFormat
from watcher.selection import (
    DEFAULT_ALPHA,
    DEFAULT_BLOCKS,
    alpha_problem,
    blocks_problem,
    max_pbo_problem,
)
from watcher.sharpe import min_dsr_problem


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpConfig(_Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8265, ge=1, le=65535)
    token_env: str | None = None
    # A non-loopback host without a token is refused unless this says so explicitly (api.py).
    allow_insecure_bind: bool = False


class WebhookConfig(_Strict):
    name: str = Field(min_length=1)
    url: str | None = None
    url_env: str | None = None
    format: WebhookFormat = "json"
    secret_env: str | None = None
    timeout_seconds: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return value


class RegistryConfig(_Strict):
    model_name: str = Field(min_length=1)
    alias: str = Field(default="champion", min_length=1)


_V = TypeVar("_V")


class SelectionConfig(_Strict):
    """Whether a board's leader is real: PBO and the leader's confidence set (watcher.selection)."""

    # A metric logged once per fold (step = fold); also the key read from the `podium.folds` tag.
    fold_metric: str = Field(default="test_r2", min_length=1)
    blocks: int = Field(default=DEFAULT_BLOCKS, strict=True)
    alpha: float = DEFAULT_ALPHA
    # With a value: no production_candidate and no registry alias move while PBO is above it
    # (or cannot be computed).
    max_pbo: float | None = None
    # An annualised Sharpe ratio each run logs (oos_sharpe): the leader's Deflated Sharpe Ratio
    # (watcher.sharpe); with min_dsr, production tags wait while the DSR is below it.
    sharpe_metric: str | None = Field(default=None, min_length=1)
    min_dsr: float | None = None

    @field_validator("fold_metric")
    @classmethod
    def _fold_metric_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a metric logged once per fold (such as 'test_r2')")
        return value.strip()

    @field_validator("alpha", "max_pbo", "min_dsr", mode="before")
    @classmethod
    def _a_number_not_a_switch(cls, value: Any) -> Any:
        # YAML's true/yes would otherwise be read as 1.0 (no gate) and false/no as 0.0.
        if isinstance(value, bool):
            raise ValueError("must be a number, not true/false")
        return value

    @field_validator("blocks")
    @classmethod
    def _even_blocks(cls, value: int) -> int:
        return _no_problem(value, blocks_problem(value))

    @field_validator("alpha")
    @classmethod
    def _alpha_inside(cls, value: float) -> float:
        return _no_problem(value, alpha_problem(value))

    @field_validator("max_pbo")
    @classmethod
    def _max_pbo_inside(cls, value: float | None) -> float | None:
        return _no_problem(value, max_pbo_problem(value))

    @field_validator("min_dsr")
    @classmethod
    def _min_dsr_inside(cls, value: float | None) -> float | None:
        return _no_problem(value, min_dsr_problem(value))

    @field_validator("sharpe_metric")
    @classmethod
    def _sharpe_metric_a_name(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(c in value for c in " '\"`=<>")):
            raise ValueError("must name one metric the runs log (such as 'oos_sharpe')")
        return value

    @model_validator(mode="after")
    def _min_dsr_needs_sharpe(self) -> SelectionConfig:
        if self.min_dsr is not None and self.sharpe_metric is None:
            raise ValueError(
                "min_dsr needs sharpe_metric: the Sharpe ratio whose DSR it bounds (such as oos_sharpe)"
            )
        return self


def _no_problem(value: _V, problem: str | None) -> _V:
    if problem:
        raise ValueError(problem)  # the message adds "(got X)"
    return value


class RuleConfig(_Strict):
    name: str = Field(min_length=1)
    experiments: list[str] = Field(min_length=1)
    metric: str = Field(min_length=1)
    ascending: bool = False
    top_n: int = Field(default=10, ge=1, le=MAX_TOP_N, strict=True)
    production_candidates: int = Field(default=3, ge=0, strict=True)
    filter: str | None = None
    trigger: Trigger = "experiment_finished"
    registry: RegistryConfig | None = None
    notify: list[str] = Field(default_factory=list)
    # One event per run that fails or stalls after the rule first saw the experiment.
    alerts: list[AlertKind] = Field(default_factory=list)
    # A RUNNING run with no activity (start, latest metric) this long is stalled.
    stalled_after_minutes: int = Field(default=360, ge=1, strict=True)
    # Off by default: without it the watcher says nothing about how real the leader is.
    selection: SelectionConfig | None = None

    @field_validator("production_candidates")
    @classmethod
    def _within_top_n(cls, value: int, info: Any) -> int:
        top_n = info.data.get("top_n")
        if isinstance(top_n, int) and value > top_n:
            raise ValueError(f"must be between 0 and top_n ({top_n})")  # the message adds "(got N)"
        return value

    @field_validator("experiments")
    @classmethod
    def _patterns_not_blank(cls, value: list[str]) -> list[str]:
        for i, pattern in enumerate(value):
            if not pattern.strip():
                raise ValueError(f"pattern #{i + 1} is empty (give a name or a glob such as 'wf_xgboost_*')")
        return value

    @field_validator("selection")
    @classmethod
    def _fold_metric_named_when_lower_is_better(
        cls, value: SelectionConfig | None, info: Any
    ) -> SelectionConfig | None:
        # The default fold metric (test_r2) is higher-is-better; on a rule where lower is better
        # it would be read in the wrong direction, and the statistics would favour the worst runs.
        if value is not None and info.data.get("ascending") and "fold_metric" not in value.model_fields_set:
            raise ValueError(
                "fold_metric must be given on a rule with ascending: true (the default, test_r2, "
                "is higher-is-better; name the per-fold metric the rule's metric averages, e.g. test_rmse)"
            )
        return value

    @field_validator("filter")
    @classmethod
    def _filter_not_blank(cls, value: str | None) -> str | None:
        return value.strip() if value and value.strip() else None

    def matches(self, experiment_name: str) -> bool:
        return any(fnmatchcase(experiment_name, pattern) for pattern in self.experiments)
