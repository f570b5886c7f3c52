"""Outbox entries: typed values of the work due, and their experiment tags.

An entry is one experiment tag ``podium.outbox.<kind>.<target>.<entry id>`` whose value is the
entry as JSON (:meth:`Entry.tag_value`, read back by :func:`parse_tag`); tags of earlier
versions (``podium.webhook_pending.*``, ``podium.registry_pending``) parse as entries too.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

TAG_PREFIX = "podium.outbox."
LEGACY_WEBHOOK_PREFIX = "podium.webhook_pending."
LEGACY_REGISTRY_TAG = "podium.registry_pending"
# MLflow's limit on an experiment tag's value.
MAX_TAG_VALUE = 20_000
# Entries kept per experiment, kind and target.
MAX_PER_TARGET = 20

Kind = Literal["webhook", "registry"]


@dataclass(frozen=True)
class WebhookDelivery:
    """A webhook document to post: the event's payload, rendered for the webhook's format
    when it is sent."""

    payload: Mapping[str, Any]
    kind: ClassVar[Kind] = "webhook"

    def to_data(self) -> dict[str, Any]:
        return {"payload": dict(self.payload)}

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> WebhookDelivery:
        return cls(dict(data["payload"]))


@dataclass(frozen=True)
class Promotion:
    """Point ``model_name@alias`` at ``run_id``'s model. ``ranks``: the other runs' ranks when
    it was queued (None: the worker reads their rank tags); ``record_target``: write the
    experiment's ``podium.registry_target`` once done."""

    run_id: str
    model_name: str
    alias: str
    record_target: bool = False
    ranks: Mapping[str, str] | None = None
    kind: ClassVar[Kind] = "registry"

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "run_id": self.run_id,
            "model_name": self.model_name,
            "alias": self.alias,
            "record_target": self.record_target,
        }
        if self.ranks is not None:
            data["ranks"] = dict(self.ranks)
        return data

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Promotion:
        ranks = data.get("ranks")
        return cls(
            run_id=str(data["run_id"]),
            model_name=str(data["model_name"]),
            alias=str(data["alias"]),
            record_target=bool(data.get("record_target")),
            ranks=None if "ranks" not in data else {str(k): str(v) for k, v in dict(ranks or {}).items()},
        )


Work = WebhookDelivery | Promotion
WORK: dict[str, type[WebhookDelivery] | type[Promotion]] = {"webhook": WebhookDelivery, "registry": Promotion}


@dataclass(frozen=True)
class Entry:
    """One piece of due work.

    ``target``: the webhook's name, or ``<model_name>@<alias>`` for a promotion. ``work``: what
    to do. ``tag``: the experiment tag that holds it (None while it lives in memory only).
    ``adopted``: read back from MLflow (after a restart or a failed attempt in an earlier
    process), not kept by this process in this pass.
    """

    experiment_id: str
    entry_id: str
    target: str
    work: Work
    created_at: float
    tag: str | None = field(default=None, compare=False)
    adopted: bool = field(default=False, compare=False)

    @property
    def kind(self) -> Kind:
        return self.work.kind

    @property
    def key(self) -> tuple[str, str, str]:
        """Identity of the entry, whichever tag holds it."""
        return (self.experiment_id, self.kind, self.entry_id)

    def tag_key(self) -> str:
        # A safe subset of MLflow's tag key characters; the value keeps the real name.
        target = re.sub(r"[^\w\-.]", "_", self.target)
        return f"{TAG_PREFIX}{self.kind}.{target}.{self.entry_id}"

    def tag_value(self) -> str:
        return json.dumps(
            {
                "kind": self.kind,
                "entry_id": self.entry_id,
                "target": self.target,
                "created_at": self.created_at,
                "data": self.work.to_data(),
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )


def entry_id(*parts: object) -> str:
    """The id of the entry that ``parts`` (JSON values) describe, uuid4-shaped: the same parts
    give the same id in every process."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return str(uuid.UUID(bytes=hashlib.sha256(text.encode()).digest()[:16], version=4))


def parse_tag(experiment_id: str, key: str, value: str) -> Entry | None:
    """The entry an experiment tag holds, in the current or an earlier format; None if the
    tag is not the outbox's. Raises ValueError (KeyError, TypeError) on an unreadable value."""
    if key.startswith(TAG_PREFIX):
        data = json.loads(value)
        kind = str(data["kind"])
        if kind not in WORK:
            raise ValueError(f"unknown outbox entry kind {kind!r}")
        return Entry(
            experiment_id=experiment_id,
            entry_id=str(data["entry_id"]),
            target=str(data["target"]),
            work=WORK[kind].from_data(data["data"]),
            created_at=float(data["created_at"]),
            tag=key,
            adopted=True,
        )
    if key.startswith(LEGACY_WEBHOOK_PREFIX):
        data = json.loads(value)
        return Entry(
            experiment_id=experiment_id,
            entry_id=str(data["delivery_id"]),
            target=str(data["webhook"]),
            work=WebhookDelivery(dict(data["payload"])),
            created_at=float(data.get("failed_at", 0.0)),
            tag=key,
            adopted=True,
        )
    if key == LEGACY_REGISTRY_TAG:
        data = json.loads(value)
        model_name, alias = str(data["model_name"]), str(data["alias"])
        return Entry(
            experiment_id=experiment_id,
            entry_id="legacy",
            target=f"{model_name}@{alias}",
            work=Promotion(run_id=str(data["run_id"]), model_name=model_name, alias=alias),
            created_at=0.0,
            tag=key,
            adopted=True,
        )
    return None


def is_outbox_tag(key: str) -> bool:
    return key.startswith((TAG_PREFIX, LEGACY_WEBHOOK_PREFIX)) or key == LEGACY_REGISTRY_TAG


def webhook_room(
    experiment_id: str,
    tags: Mapping[str, str],
    webhooks: Sequence[str],
    *,
    max_per_target: int = MAX_PER_TARGET,
    reserve: int = 1,
) -> int:
    """How many more webhook entries an experiment can take for every one of ``webhooks``
    before the bound drops one: the bound less the entries its tags hold for the fullest
    webhook, less ``reserve`` (a leaderboard summary the same pass may queue). A pass that
    queues no more than this loses no alert at queue time."""
    held = dict.fromkeys(webhooks, 0)
    for key, value in tags.items():
        if not key.startswith((TAG_PREFIX, LEGACY_WEBHOOK_PREFIX)):
            continue
        try:
            entry = parse_tag(experiment_id, key, value)
        except (ValueError, KeyError, TypeError):
            continue
        if entry is not None and entry.kind == "webhook" and entry.target in held:
            held[entry.target] += 1
    fullest = max(held.values(), default=0)
    return max(0, max_per_target - fullest - reserve)
