"""The durable outbox: work for the outside world, kept in MLflow until it is done.

A pass never talks to a webhook or the Model Registry itself. Its handlers `keep` what is due
(a webhook delivery, a registry promotion) as an entry, the delivery worker takes what is `due`,
carries it out and marks it `done`. Each entry is one experiment tag
``podium.outbox.<kind>.<target>.<entry id>`` holding the entry as JSON, so an entry survives a
restart or a replaced container: the next process finds it in the pass's experiment listing
(`adopt`, no extra tracking call) and carries it out once. The entry id is the webhook's
delivery id, so a delivery retried after a restart still carries the same
``X-Podium-Delivery-Id``.

Entry ids are derived from what the entry is (`entry_id`), not drawn at random: two replicas
(or a restarted process) that decide the same delivery keep it under the same id, hence the
same tag, one entry instead of two. An entry this process already holds, kept, adopted or done,
is not kept again, nor taken up again when another replica writes its tag after this process
finished it (its tag is deleted then), so one process carries out one entry once.

Tags written by earlier versions are honoured as they are: ``podium.webhook_pending.<webhook>.
<delivery id>`` (one undelivered summary) and ``podium.registry_pending`` (one failed
promotion) are read as entries and their tags deleted once done.

Bounds: at most `max_per_target` entries per experiment, kind and target (the oldest are
dropped with a warning), so a receiver gone for weeks cannot grow an experiment's tags without
end; the handler of a kind may give a policy by which newer entries supersede older ones (the
registry's: only an experiment's newest promotion matters). An entry whose tag cannot be written (tracking server down, or a payload beyond an
experiment tag's 20,000 characters) is kept in memory for the life of the process. If a done
entry's tag cannot be deleted, this process never carries it out again and deletes the tag
later; a restarted one would resend it with the same delivery id (receivers deduplicate on it).

Thread-safe: the pass thread keeps and adopts, the worker thread takes and finishes.
"""

from watcher.outbox.entries import (
    LEGACY_REGISTRY_TAG,
    LEGACY_WEBHOOK_PREFIX,
    MAX_PER_TARGET,
    MAX_TAG_VALUE,
    TAG_PREFIX,
    WORK,
    Entry,
    Kind,
    Promotion,
    WebhookDelivery,
    Work,
    entry_id,
    is_outbox_tag,
    parse_tag,
    webhook_room,
)
from watcher.outbox.store import MAX_FINISHED, ExperimentTagStore, Outbox, Supersede

__all__ = [
    "LEGACY_REGISTRY_TAG",
    "LEGACY_WEBHOOK_PREFIX",
    "MAX_FINISHED",
    "MAX_PER_TARGET",
    "MAX_TAG_VALUE",
    "TAG_PREFIX",
    "WORK",
    "Entry",
    "ExperimentTagStore",
    "Kind",
    "Outbox",
    "Promotion",
    "Supersede",
    "WebhookDelivery",
    "Work",
    "entry_id",
    "is_outbox_tag",
    "parse_tag",
    "webhook_room",
]
