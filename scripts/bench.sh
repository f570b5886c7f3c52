#!/usr/bin/env bash
# Run every benchmark and write the figures into BENCHMARKS.md (about 25 minutes on 2 cores).
# Needs PostgreSQL at 127.0.0.1:5432 (user postgres, trust auth) for the PostgreSQL-backed runs.
# Usage: scripts/bench.sh [--quick]   (--quick: small sizes, one repetition; a smoke test)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || bash scripts/setup.sh dev
"$PY" -m pip install -q -e '.[dev,bench]'   # Optuna and pyinstrument, for the comparisons
export PYTHONUNBUFFERED=1
dashboard_args=()
if [ "${1:-}" = "--quick" ]; then
  dashboard_args=(--runs 1000 --reps 2)
  "$PY" -m bench.bench_watcher --sizes 200,1000 --reps 1,1 --idle 10x20 --idle-reps 2
  "$PY" -m bench.bench_trainer --trials 2 --reps 1 --jobs 1
  "$PY" -m bench.bench_ray --trials 2
  "$PY" -m bench.bench_optuna --trials 2
  "$PY" -m bench.bench_profile --trials 2
  "$PY" -m bench.bench_direction --trials 1
  "$PY" -m bench.bench_search --quick
else
  "$PY" -m bench.bench_watcher
  "$PY" -m bench.bench_trainer
  "$PY" -m bench.bench_ray --trials 16
  "$PY" -m bench.bench_optuna --trials 4 --reps 2
  "$PY" -m bench.bench_profile --trials 24   # the default sweep's 24 trials
  "$PY" -m bench.bench_direction --trials 4   # direction against regression, same trials
  "$PY" -m bench.bench_search   # TPE against random search (figures written by hand in BENCHMARKS.md)
fi
"$PY" bench/bench_importance.py --markdown | tee bench/results/importance.md
"$PY" -m bench.bench_dashboard --board --markdown "${dashboard_args[@]}" | tee bench/results/dashboard.md
# The dashboard at 100 / 1,000 experiments against the old code: ~35 min, needs a checkout of it
# (git worktree add /tmp/dash-before 3a17865); run by hand: python -m bench.bench_dashboard --markdown
"$PY" -m bench.report
