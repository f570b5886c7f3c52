"""Watcher configuration: a YAML file plus ``WATCHER_*`` environment overrides.

Every mistake a user can make here ends as one :class:`ConfigError` whose message names the
file, the rule (index and name) or key, and what is wrong; the CLI turns it into exit 2.

Overlapping rules: an experiment whose name matches the patterns of several rules is ranked
by the first of them in file order only (later matches are ignored, silently: an idle pass
must not log per experiment), so rule order expresses priority and there is never a fight
over one experiment's tags.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from watcher.config import HttpConfig, RegistryConfig, RuleConfig, SelectionConfig, WebhookConfig
from watcher.errors import ConfigError

# The config's section models live in watcher.config; they stay importable from here.
__all__ = [
    "DEFAULT_CONFIG_PATH",
    "HttpConfig",
    "RegistryConfig",
    "RuleConfig",
    "SelectionConfig",
    "WatcherSettings",
    "WebhookConfig",
    "effective_config",
    "load_settings",
    "redact_uri",
    "redact_url",
]

DEFAULT_CONFIG_PATH = Path("config/watcher.yaml")


class WatcherSettings(BaseSettings):
    """The effective configuration (file values overridden by ``WATCHER_<KEY>``, ``__`` nests)."""

    model_config = SettingsConfigDict(
        env_prefix="WATCHER_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    tracking_uri: str | None = None
    # At most a day: a longer (or infinite) interval would quietly switch the daemon off.
    poll_interval_seconds: float = Field(default=60.0, gt=0, le=86400)
    # The daemon reads each experiment's ranking tag holders (hand-set, deleted, stale tags)
    # this long after it last read them, at most HOLDER_CHECK_RUNS per pass; 0: every pass. A
    # pass that ranks an experiment reads its holders all the same. At most a day, so
    # interference is always put right in a bounded time.
    holder_check_seconds: float = Field(default=60.0, ge=0, le=86400)
    # The daemon lists every watched experiment with its tags this often; between, a pass reads
    # only the experiments created, renamed, deleted or restored since (tags this process writes
    # are kept as written). Tags other clients write are seen within this time; 0: every pass.
    # At most a day, like the holder check.
    experiment_list_seconds: float = Field(default=60.0, ge=0, le=86400)
    # First rankings and re-ranks per pass (experiments with the most recent runs first); the
    # rest wait for the passes that follow.
    max_rankings_per_pass: int = Field(default=100, ge=1)
    # Experiments whose writes one pass sends at once (one experiment's writes stay in order).
    write_concurrency: int = Field(default=4, ge=1, le=32)
    ui_base_url: str | None = None
    http: HttpConfig = Field(default_factory=HttpConfig)
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    rules: list[RuleConfig] = Field(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init kwargs; the environment overrides them.
        # List items (WATCHER_RULES__0__TOP_N) are merged into the file's values by
        # load_settings, so this source skips them (it would replace the whole list).
        return (_EnvWithoutListItems(settings_cls), init_settings)

    @field_validator(
        "poll_interval_seconds", "holder_check_seconds", "experiment_list_seconds", mode="before"
    )
    @classmethod
    def _seconds_not_a_switch(cls, value: Any) -> Any:
        # YAML's true/false would pass as 1/0 seconds (0: a holder check every pass).
        if isinstance(value, bool):
            raise ValueError("must be a number of seconds, not true/false")
        return value

    @field_validator("max_rankings_per_pass", "write_concurrency", mode="before")
    @classmethod
    def _whole_number(cls, value: Any) -> Any:
        # YAML's true/false would pass as 1/0; 2.5 would be cut to 2.
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("must be a whole number")
        return value

    def rule_for(self, experiment_name: str) -> RuleConfig | None:
        """The first rule (file order) whose patterns match the name; see the module doc."""
        for rule in self.rules:
            if rule.matches(experiment_name):
                return rule
        return None

    def webhook(self, name: str) -> WebhookConfig | None:
        return next((w for w in self.webhooks if w.name == name), None)


_LIST_ITEM = re.compile(r"^WATCHER_(RULES|WEBHOOKS)__(\d+)__(.+)$", re.IGNORECASE)


class _EnvWithoutListItems(EnvSettingsSource):
    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k: v for k, v in super()._load_env_vars().items() if not _LIST_ITEM.match(k)}


def _merge_list_items(raw: dict[str, Any], environ: Mapping[str, str], path: Path) -> dict[str, Any]:
    """Apply ``WATCHER_RULES__<i>__<KEY>[__<KEY>]`` overrides to item i of the file's list.

    Values are YAML scalars or flow collections (``5``, ``true``, ``[a, b]``).
    """
    merged = dict(raw)
    for name, value in sorted(environ.items()):
        m = _LIST_ITEM.match(name)
        if not m:
            continue
        section, index = m.group(1).lower(), int(m.group(2))
        items = merged.get(section)
        if not isinstance(items, list) or index >= len(items) or not isinstance(items[index], dict):
            raise ConfigError(
                f"{path}: environment variable {name}: there is no {section}[{index}] to override"
            )
        items = merged[section] = list(items)
        target = items[index] = dict(items[index])
        *parents, last = m.group(3).lower().split("__")
        for key in parents:
            child = target.get(key)
            target[key] = dict(child) if isinstance(child, dict) else {}
            target = target[key]
        try:
            target[last] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: environment variable {name}: not a YAML value: {value!r}") from e
    return merged


def load_settings(
    path: str | Path | None = None, check_filter: Callable[[str], None] | None = None
) -> WatcherSettings:
    """Read, validate and cross-check the config; raise :class:`ConfigError` on any mistake.

    ``check_filter`` parses a rule's MLflow filter and raises ValueError when it does not
    parse (``watcher.mlflow_io.check_run_filter``; passed in so this module stays MLflow-free).
    """
    config_path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    raw = _merge_list_items(_read_yaml(config_path), os.environ, config_path)
    try:
        settings = WatcherSettings(**raw)
    except ValidationError as e:
        raise ConfigError(_describe(e, config_path, raw)) from e
    except SettingsError as e:
        # pydantic-settings reads list and mapping values (WATCHER_RULES) as JSON.
        raise ConfigError(f"{config_path}: {_env_problem(e)}") from e
    if not settings.rules:
        # An empty file (or one without rules) would start a watcher that watches nothing.
        raise ConfigError(f"config file {config_path} has no rules (add a 'rules' list or set WATCHER_RULES)")
    _check_references(settings, config_path)
    if check_filter is not None:
        for i, rule in enumerate(settings.rules):
            if rule.filter is None:
                continue
            try:
                check_filter(rule.filter)
            except ValueError as e:
                raise ConfigError(
                    f"{config_path}: rule #{i + 1} {rule.name!r} (rules[{i}]): field 'filter': {e}"
                ) from e
    return settings


def _env_problem(error: SettingsError) -> str:
    m = re.search(r'field "([^"]+)"', str(error))
    if m is None:
        return f"environment: {error}"
    name = f"WATCHER_{m.group(1).upper()}"
    return f"environment variable {name}: not valid JSON (a list or mapping such as '[...]' is expected)"


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error: YAML keeps
    the last one silently, so a rule pasted twice or a repeated ``top_n`` would hide."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (pass --config FILE)")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: the config file is not UTF-8 text (byte {e.start}: {e.reason})") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, not {type(data).__name__}")
    return data


_FIELDS_BY_SECTION: dict[str, type[BaseModel]] = {
    "rules": RuleConfig,
    "webhooks": WebhookConfig,
    "http": HttpConfig,
    "registry": RegistryConfig,
    "selection": SelectionConfig,
}


def _describe(error: ValidationError, path: Path, raw: dict[str, Any]) -> str:
    errors = error.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    where = _where(loc, raw)
    if first["type"] == "extra_forbidden":
        key = str(loc[-1])
        what = f"unknown key {key!r}"
        section = next((str(p) for p in reversed(loc[:-1]) if isinstance(p, str)), None)
        model: type[BaseModel] = _FIELDS_BY_SECTION.get(section or "", WatcherSettings)
        close = difflib.get_close_matches(key, list(model.model_fields), n=1)
        if close:
            what += f" (did you mean {close[0]!r}?)"
    elif first["type"] == "missing":
        what = f"field {loc[-1]!r} is required"
    else:
        field = _field_name(loc)
        msg = first["msg"].removeprefix("Value error, ")
        what = f"field {field!r}: {msg} (got {first.get('input')!r})"
    more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    env = _env_override(loc)
    if env is not None:
        # The value came from the environment, not the file: name the variable to fix.
        return f"{path}: environment variable {env}: {what}{more}"
    return f"{path}: {where}{what}{more}"


def _env_override(loc: tuple[Any, ...]) -> str | None:
    """The ``WATCHER_<KEY>[__<KEY>...]`` variable that set the value an error is about, if one
    did: the one naming the key itself (``WATCHER_HTTP__PORT``, ``WATCHER_RULES__0__TOP_N``)
    before those naming a section it lies in (``WATCHER_RULES``)."""
    if not loc or not isinstance(loc[0], str):
        return None
    set_names = {k.upper(): k for k in os.environ}
    for depth in range(len(loc), 0, -1):
        name = "WATCHER_" + "__".join(str(part) for part in loc[:depth]).upper()
        if name in set_names:
            return set_names[name]
    return None


def _field_name(loc: tuple[Any, ...]) -> str:
    """The key a validation error is about; a nested rule key with its parent (selection.alpha)."""
    if len(loc) >= 4 and loc[0] == "rules" and loc[2] == "selection":
        return f"selection.{loc[3]}"
    return next((str(p) for p in reversed(loc) if isinstance(p, str)), "value")


def _where(loc: tuple[Any, ...], raw: dict[str, Any]) -> str:
    if len(loc) >= 2 and loc[0] in ("rules", "webhooks") and isinstance(loc[1], int):
        section, index = loc[0], loc[1]
        items = raw.get(section)
        name = None
        if isinstance(items, list) and index < len(items) and isinstance(items[index], dict):
            name = items[index].get("name")
        label = "rule" if section == "rules" else "webhook"
        named = f" {name!r}" if name else ""
        return f"{label} #{index + 1}{named} ({section}[{index}]): "
    if loc and isinstance(loc[0], str) and len(loc) > 1:
        return f"{loc[0]}: "
    return ""


def _check_references(settings: WatcherSettings, path: Path) -> None:
    seen_webhooks: set[str] = set()
    for i, hook in enumerate(settings.webhooks):
        where = f"{path}: webhook #{i + 1} {hook.name!r} (webhooks[{i}]): "
        if hook.name in seen_webhooks:
            raise ConfigError(f"{where}field 'name': duplicate webhook name {hook.name!r}")
        seen_webhooks.add(hook.name)
        if bool(hook.url) == bool(hook.url_env):
            raise ConfigError(f"{where}field 'url': give exactly one of 'url' or 'url_env'")
    seen_rules: set[str] = set()
    for i, rule in enumerate(settings.rules):
        where = f"{path}: rule #{i + 1} {rule.name!r} (rules[{i}]): "
        if rule.name in seen_rules:
            raise ConfigError(f"{where}field 'name': duplicate rule name {rule.name!r}")
        seen_rules.add(rule.name)
        for name in rule.notify:
            if name not in seen_webhooks:
                defined = ", ".join(sorted(seen_webhooks)) or "none"
                raise ConfigError(
                    f"{where}field 'notify': webhook {name!r} is not defined (defined webhooks: {defined})"
                )


def redact_url(url: str) -> str:
    """Keep scheme and host of a URL, drop credentials, path and query (they carry secrets)."""
    parts = urlsplit(url)
    if not parts.scheme:
        return "***"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    tail = "/***" if (parts.path not in ("", "/") or parts.query) else parts.path
    return urlunsplit((parts.scheme, host, tail, "", ""))


def redact_uri(uri: str) -> str:
    """Hide a password in a tracking URI (``postgresql://user:***@host/db``)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def effective_config(settings: WatcherSettings) -> dict[str, Any]:
    """The config as data, secrets redacted, env-sourced values shown as set/unset."""
    data = settings.model_dump(mode="json")
    if data.get("tracking_uri"):
        data["tracking_uri"] = redact_uri(data["tracking_uri"])
    for hook in data["webhooks"]:
        if hook.get("url"):
            hook["url"] = redact_url(hook["url"])
        for key in ("url_env", "secret_env"):
            if hook.get(key):
                hook[key] = f"{hook[key]} ({'set' if os.environ.get(hook[key]) else 'unset'})"
    token_env = data["http"].get("token_env")
    if token_env:
        data["http"]["token_env"] = f"{token_env} ({'set' if os.environ.get(token_env) else 'unset'})"
    return data
