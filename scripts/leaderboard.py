"""Print the leaderboards the watcher keeps: rank, run, metric value and the watcher's tags.

    python scripts/leaderboard.py [--config config/watcher.yaml]

Reads the same store as the watcher (``tracking_uri`` in the config, else MLFLOW_TRACKING_URI,
else MLflow's default) and, for every experiment a rule watches, the runs tagged ``model_rank``.
"""

from __future__ import annotations

import argparse
import sys

from watcher.errors import ConfigError, TrackingError
from watcher.mlflow_io import MlflowTracking, lower_client_retries
from watcher.model import MODEL_RANK, is_podium_run_tag
from watcher.selection import SELECTION_TAG, stored
from watcher.settings import load_settings
from watcher.state import STATE_TAG, ExperimentState


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/watcher.yaml")
    args = parser.parse_args(argv)
    lower_client_retries()
    try:
        settings = load_settings(args.config)
        tracking = MlflowTracking(settings.tracking_uri)
        shown = 0
        for exp in sorted(tracking.search_experiments(), key=lambda e: e.name):
            rule = settings.rule_for(exp.name)
            if rule is None:
                continue
            shown += 1
            state = ExperimentState.from_tag(exp.tags.get(STATE_TAG))
            runs = tracking.search_runs([exp.experiment_id], f"tags.{MODEL_RANK} LIKE '%'")
            runs.sort(key=lambda r: int(r.tags[MODEL_RANK]) if r.tags[MODEL_RANK].isdigit() else 10**9)
            counts = f", {state.ranked_runs} ranked, {state.unranked_runs} unranked" if state else ""
            direction = "lower is better" if rule.ascending else "higher is better"
            print(
                f"\n{exp.name} (experiment {exp.experiment_id}; rule {rule.name}: {rule.metric}, {direction}{counts})"
            )
            if not runs:
                print("  no ranked runs yet")
                continue
            width = max(len(r.run_name) for r in runs)
            print(
                f"  {'rank':>4}  {'run':<{width}}  {'run id':<32}  {rule.metric:>14}  {'IC':>8}  {'Sharpe':>7}  tags"
            )
            for r in runs:
                value = r.metrics.get(rule.metric)
                tags = ", ".join(
                    f"{k}={v}" for k, v in sorted(r.tags.items()) if is_podium_run_tag(k) and k != MODEL_RANK
                )
                shown_value = f"{value:.6g}" if value is not None else "-"
                # the trading scores (trainer runs in OHLCV mode): mean rank IC over the folds and
                # the out-of-sample path's annualised Sharpe ratio
                ic, sharpe = r.metrics.get("avg_test_ic"), r.metrics.get("oos_sharpe")
                shown_ic = f"{ic:.4f}" if ic is not None else "-"
                shown_sharpe = f"{sharpe:.2f}" if sharpe is not None else "-"
                print(
                    f"  {r.tags[MODEL_RANK]:>4}  {r.run_name:<{width}}  {r.run_id:<32}  {shown_value:>14}  "
                    f"{shown_ic:>8}  {shown_sharpe:>7}  {tags}"
                )
            line = selection_line(exp.tags.get(SELECTION_TAG))
            if line:
                print(f"  {line}")
        if not shown:
            print("no experiment matches the config's rules yet")
        return 0
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrackingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def selection_line(tag: str | None) -> str | None:
    """PBO and, with a sharpe_metric, the leader's DSR from the experiment's podium.selection."""
    kept = stored(tag)
    if kept is None:
        return None
    parts = []
    if kept.get("pbo") is not None:
        parts.append(f"PBO {kept['pbo']:.2f}")
    if kept.get("dsr") is not None:
        parts.append(
            f"DSR {kept['dsr']:.2f} of the leader's {kept['sharpe_metric']} over {kept['trials']} trials"
        )
    elif kept.get("dsr_reason"):
        parts.append(f"no DSR ({kept['dsr_reason']})")
    return "; ".join(parts) or None


if __name__ == "__main__":
    raise SystemExit(main())
