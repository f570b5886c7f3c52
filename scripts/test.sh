#!/usr/bin/env bash
# Set up the dev environment and run the whole test suite (real MLflow servers on sqlite and
# PostgreSQL at 127.0.0.1:5432; see tests/conftest.py). The dashboard's browser tests drive the
# system's Chromium (/usr/bin/chromium): install it with apt-get when it is missing (never
# `playwright install`, which downloads a browser of its own).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  # The emoji font only makes the dialogs' buttons (🏆, 🔄) readable in the screenshots.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null
fi
bash scripts/setup.sh dev
# Two pytest-xdist workers, one file at a time each (a file's module fixtures stay in one worker;
# each worker starts its own session servers): on 2 cores one worker computes while the other
# waits on a server or a subprocess. Branch coverage of trainer/ and watcher/, combined over the
# workers. Arguments are pytest's and come last: `-n 0` runs in one process, `-n 4` in four.
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=15 --cov --cov-report=term:skip-covered "$@"
