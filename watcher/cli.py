"""``python -m watcher [--config FILE] [--once [--sweep]] [--dry-run] [--log-format json|console]``
and ``python -m watcher check-config [--config FILE]``.

Exit codes: 0 success; 1 a ``--once`` pass failed; 2 bad usage or bad config (one message
naming the file, the rule and the field; never a traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import structlog
import yaml

from watcher.errors import ConfigError
from watcher.logs import configure
from watcher.model import SWEEP_SECONDS
from watcher.settings import DEFAULT_CONFIG_PATH, WatcherSettings, effective_config, load_settings

if TYPE_CHECKING:
    from watcher.delivery import DeliveryWorker
    from watcher.service import PassResult, Watcher

log = structlog.get_logger("watcher")

CONFIG_ENV = "PODIUM_WATCHER_CONFIG"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m watcher",
        description="Keep MLflow experiments' leaderboards current: rank, tag, promote, notify.",
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=["check-config"],
        help="check-config: validate the config and print it, secrets redacted",
    )
    # The container sets PODIUM_WATCHER_CONFIG=/etc/podium/watcher.yaml, so `docker run IMAGE --once`
    # still finds the config.
    default_config = os.environ.get(CONFIG_ENV) or str(DEFAULT_CONFIG_PATH)
    parser.add_argument(
        "--config",
        default=default_config,
        help=f"YAML config file (default: env {CONFIG_ENV}, else {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument(
        "--once", action="store_true", help="run one reconcile pass and exit (0 ok, 1 failed)"
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="with --once: sweep every watched experiment now (hand-set top_N/production_candidate "
        f"tags, late runs); without it, only those not swept for {SWEEP_SECONDS / 60:g} minutes",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="plan one pass and print the tag changes; write nothing (implies --once)",
    )
    parser.add_argument(
        "--log-format",
        choices=["json", "console"],
        default=None,
        help="default: console on a terminal, else json",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(args.log_format)
    try:
        from watcher.mlflow_io import check_run_filter, lower_client_retries

        lower_client_retries()
        settings = load_settings(args.config, check_filter=check_run_filter)
        if args.command == "check-config":
            check_runnable(settings, daemon=True)
            print_config(settings, sys.stdout)
            return 0
        if not args.dry_run:
            check_runnable(settings, daemon=not args.once)
        return run(settings, once=args.once or args.dry_run, dry_run=args.dry_run, sweep=args.sweep)
    except ConfigError as e:
        message, config = str(e), str(Path(args.config))
        # Errors found after loading (an unset url_env, the API's token or bind) name the
        # config file too, like the loader's own messages.
        if not message.startswith(f"{config}:"):
            message = f"{config}: {message}"
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C during --once: no traceback (the daemon handles SIGINT)
        print("interrupted", file=sys.stderr)
        return 130


def check_runnable(settings: WatcherSettings, *, daemon: bool) -> None:
    """What only the environment can break, raised as :class:`ConfigError`: the webhooks'
    ``url_env``/``secret_env`` (a pass needs them) and, for the daemon, the API's token and
    bind. ``check-config`` runs the same checks as a real run, so it exits 2 where a run would.
    """
    from watcher.notify.sender import resolve_targets

    resolve_targets(settings.webhooks)
    if daemon and settings.http.enabled:
        from watcher.api import check_bind, resolve_token

        check_bind(settings.http, resolve_token(settings.http))


def print_config(settings: WatcherSettings, out: TextIO) -> None:
    out.write(yaml.safe_dump(effective_config(settings), sort_keys=False))


def run(settings: WatcherSettings, *, once: bool, dry_run: bool, sweep: bool = False) -> int:
    from watcher.mlflow_io import MlflowTracking
    from watcher.service import Watcher

    try:
        tracking = MlflowTracking(settings.tracking_uri)
    except ConfigError as e:
        key = "field 'tracking_uri'" if settings.tracking_uri else "environment variable MLFLOW_TRACKING_URI"
        raise ConfigError(f"{key}: {e}") from e
    delivery: Delivery | None = None
    if dry_run:
        # A dry run calls no handler (it sends and promotes nothing), so a webhook whose
        # url_env or secret_env is unset is no reason to refuse it: say so and go on.
        warn_unresolved_webhooks(settings)
    else:
        delivery = build_handlers(settings, tracking)
    watcher = Watcher(settings, tracking, delivery.handlers if delivery is not None else ())
    if once:
        # A one-off pass always reads the holders (no later pass would put a hand-set tag
        # right) and sweeps what the schedule kept in MLflow says is due, or all with --sweep.
        result = watcher.run_pass(dry_run=dry_run, sweep=True if sweep else None, holder_check=True)
        if sweep and not dry_run:
            result = sweep_the_rest(watcher, result)
        if dry_run:
            print_plan(result, sys.stdout)
        elif delivery is not None:
            # What the pass queued goes out before the process exits, within the retry bound;
            # what still fails stays in the outbox for the next run.
            report = delivery.worker.drain()
            log.info("deliveries_finished", pending=delivery.worker.outbox.pending(), **report)
        if not result.ok:
            return 1
        unlogged = unlogged_sharpe_metrics(settings, watcher.memory.listing.records())
        if unlogged:
            print(f"error: {unlogged[0]}", file=sys.stderr)
            return 2
        return 0
    from watcher.scheduler import run_daemon

    assert delivery is not None
    return run_daemon(watcher, start_api=_api_starter(settings), worker=delivery.worker)


def unlogged_sharpe_metrics(settings: WatcherSettings, records: Sequence[Any]) -> list[str]:
    """One message per ranked experiment whose rule's ``selection.sharpe_metric`` no ranked run
    has (``--once`` exits 2 on it: a name the config cannot check before the runs are read)."""
    from watcher.selection import SELECTION_TAG, unlogged_sharpe_metric

    problems = []
    for record in sorted(records, key=lambda r: r.name):
        rule = settings.rule_for(record.name)
        if rule is None or rule.selection is None or not rule.selection.sharpe_metric:
            continue
        metric = rule.selection.sharpe_metric
        if unlogged_sharpe_metric(record.tags.get(SELECTION_TAG), metric):
            problems.append(
                f"rule {rule.name!r}: selection.sharpe_metric {metric!r}: no ranked run of experiment "
                f"{record.name!r} has a finite {metric!r} (with oos_bars, oos_skew, oos_kurtosis and "
                "param periods_per_year); name a metric the runs log, such as 'oos_sharpe'"
            )
    return problems


def sweep_the_rest(watcher: Watcher, result: PassResult) -> PassResult:
    """``--once --sweep`` sweeps every watched experiment, and a pass sweeps at most
    ``max_rankings_per_pass`` (those swept longest ago): the passes that follow sweep the
    experiments not ranked yet (their holders were read by the first), until none is left or
    a pass ranks none (no runs yet, a trigger waiting for a running run). The last pass's
    result, not ok when any failed."""
    from watcher.planner import RANKING

    left = [o.experiment_id for o in result.outcomes if o.action not in RANKING]
    while result.ok and left:
        result = watcher.run_pass(sweep=left, holder_check=False)
        ranked = {o.experiment_id for o in result.outcomes if o.action in RANKING}
        if not ranked:
            break
        left = [i for i in left if i not in ranked]
    return result


@dataclass(frozen=True)
class Delivery:
    """The pass's handlers and the worker that carries out what they queue."""

    handlers: list[Any]
    worker: DeliveryWorker


def build_handlers(settings: WatcherSettings, tracking: Any) -> Delivery:
    """The registry promoter, the notifier (with webhooks configured) and the delivery worker,
    sharing one outbox. The worker talks to MLflow through a tracking adapter of its own, so
    its calls never count in a pass's tracking calls."""
    from watcher.delivery import DeliveryWorker
    from watcher.mlflow_io import MlflowRegistry
    from watcher.notify.handler import Notifier
    from watcher.notify.sender import resolve_targets
    from watcher.outbox import Outbox
    from watcher.registry import RegistryPromoter

    worker_store = MlflowRegistry(tracking.twin())
    outbox = Outbox(MlflowRegistry(tracking), worker_store=worker_store)
    targets = resolve_targets(settings.webhooks)
    worker = DeliveryWorker(outbox, targets=targets, registry=worker_store, ui_base_url=settings.ui_base_url)
    handlers: list[Any] = [RegistryPromoter(outbox)]
    if targets:
        handlers.append(Notifier(outbox, targets, ui_base_url=settings.ui_base_url))
    # Last, so that its on_pass_end sees what the others queued in the pass.
    handlers.append(worker)
    return Delivery(handlers, worker)


def warn_unresolved_webhooks(settings: WatcherSettings) -> None:
    """Log (never raise) what would stop a real run from resolving its webhooks."""
    from watcher.notify.sender import resolve_targets

    try:
        resolve_targets(settings.webhooks)
    except ConfigError as e:
        log.warning("dry_run_webhook_unresolved", error=str(e))


def _api_starter(settings: WatcherSettings) -> Any:
    if not settings.http.enabled:
        return None

    def start(watcher: Any) -> Any:
        from watcher.api import serve_in_thread

        return serve_in_thread(watcher, settings.http)

    return start


def print_plan(result: Any, out: TextIO) -> None:
    """The dry run's plan, one line per tag change (experiment, run, tag, old -> new), per
    alert it would announce, per experiment whose ``podium.selection`` (with its plain line)
    and ``podium.state`` it would write."""
    total = 0
    for outcome in result.outcomes:
        for change in outcome.changes:
            old = change.old if change.old is not None else "(none)"
            new = change.new if change.new is not None else "(deleted)"
            out.write(
                f"{outcome.experiment_name} [{outcome.experiment_id}]  run {change.run_id}  "
                f"{change.key}: {old} -> {new}\n"
            )
            total += 1
        where = f"{outcome.experiment_name} [{outcome.experiment_id}]"
        for alert in getattr(outcome, "alerts", ()):
            out.write(f"{where}  run {alert.run_id}  alert: run.{alert.kind} ({alert.status})\n")
        if getattr(outcome, "selection_tag", None) is not None:
            from watcher.selection import plain_line

            leader = outcome.board.leader.run_id if outcome.board and outcome.board.leader else None
            held = (
                " (production_candidate and the alias held back)"
                if outcome.state and outcome.state.held
                else ""
            )
            out.write(f"{where}  podium.selection: {outcome.selection_tag}\n")
            out.write(f"{where}  selection: {plain_line(outcome.selection, leader)}{held}\n")
        if getattr(outcome, "state", None) is not None:
            reason = f", {outcome.reason}" if getattr(outcome, "reason", "") else ""
            out.write(f"{where}  podium.state: {outcome.action}{reason}\n")
    status = "" if result.ok else f" (pass failed: {result.error})"
    out.write(
        f"dry run: {total} tag change(s) planned in {result.experiments_checked} experiment(s), nothing written{status}\n"
    )
