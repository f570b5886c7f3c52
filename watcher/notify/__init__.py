"""Webhooks: leaderboard summaries and run alerts.

- `payloads`: the documents and their Slack rendering (pure).
- `sender`: one signed request with timeouts and bounded retries.
- `handler`: `Notifier`, which records in the outbox what a pass owes each webhook.

The delivery worker (`watcher.delivery`) sends what the outbox holds.
"""
