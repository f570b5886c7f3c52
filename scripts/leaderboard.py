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
            print(f"  {'rank':>4}  {'run':<{width}}  {'run id':<32}  {rule.metric:>14}  tags")
            for r in runs:
                value = r.metrics.get(rule.metric)
                tags = ", ".join(
                    f"{k}={v}" for k, v in sorted(r.tags.items()) if is_podium_run_tag(k) and k != MODEL_RANK
                )
                shown_value = f"{value:.6g}" if value is not None else "-"
                print(
                    f"  {r.tags[MODEL_RANK]:>4}  {r.run_name:<{width}}  {r.run_id:<32}  {shown_value:>14}  {tags}"
                )
        if not shown:
            print("no experiment matches the config's rules yet")
        return 0
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrackingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
