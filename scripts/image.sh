#!/usr/bin/env bash
# Build Podium's two images (the `watcher` sidecar and the `full` image) and smoke-test them the
# way a user deploys them: an `mlflow server` from the full image and the watcher sidecar in one
# pod sharing localhost, a trainer sweep from the full image into that server, the sidecar ranking
# it. Needs podman (or docker; PODIUM_ENGINE=docker) and, when python:3.11-slim cannot be pulled,
# debootstrap to make a stand-in base. Each step prints its time. See docs/deployment.md.
#
#   scripts/image.sh            build both images, then run the smoke tests
#   scripts/image.sh build      build only
#
# Environment: PODIUM_ENGINE (podman|docker; default: podman if installed), PODIUM_IMAGE_FULL
# (podium:local), PODIUM_IMAGE_WATCHER (podium-watcher:local), PODIUM_CA_BUNDLE (mounted into the
# build for pip behind a TLS-inspecting proxy; default /etc/ssl/certs/ca-certificates.crt when it
# exists, empty: none), PODIUM_SMOKE_TRIALS (4).
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINE=${PODIUM_ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}
FULL=${PODIUM_IMAGE_FULL:-podium:local}
WATCHER=${PODIUM_IMAGE_WATCHER:-podium-watcher:local}
BASE=docker.io/library/python:3.11-slim
CA=${PODIUM_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
TRIALS=${PODIUM_SMOKE_TRIALS:-4}
HOST_PY=${PODIUM_HOST_PYTHON:-.venv/bin/python}
NAME=podium-smoke-$$
WORK=$(mktemp -d)

command -v "$ENGINE" >/dev/null || { echo "image.sh: neither podman nor docker is installed" >&2; exit 2; }

# Podman as root on a machine without systemd or CAP_SYS_RESOURCE: the default nofile limit
# (1,048,576) is refused, crun refuses the hybrid cgroup mount, and there is no journald. These
# settings go to a file of our own (CONTAINERS_CONF); no system file is touched.
if [ "$ENGINE" = podman ] && [ -z "${CONTAINERS_CONF:-}" ]; then
  cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  export CONTAINERS_CONF="$WORK/containers.conf"
fi

START=$SECONDS
STEP_START=$SECONDS
STEP=""
step() {
  [ -n "$STEP" ] && printf '   %-34s %4ds\n' "$STEP done in" $((SECONDS - STEP_START))
  STEP=$1
  STEP_START=$SECONDS
  [ -n "$STEP" ] && echo "== $STEP"
  return 0
}
fail() {
  echo "image.sh: FAILED in '$STEP': $*" >&2
  exit 1
}
cleanup() {
  local code=$?
  if [ "$code" -ne 0 ] && [ -n "${POD_UP:-}" ]; then
    for c in "$NAME-mlflow" "$NAME-watcher"; do
      echo "-- last lines of $c:" >&2
      "$ENGINE" logs --tail 30 "$c" >&2 2>&1 || true
    done
  fi
  if [ -n "${POD_UP:-}" ]; then
    if [ "$ENGINE" = podman ]; then
      podman pod rm -f "$NAME" >/dev/null 2>&1 || true
    else
      docker rm -f "$NAME-watcher" "$NAME-mlflow" "$NAME" >/dev/null 2>&1 || true
    fi
  fi
  rm -rf "$WORK"
  exit "$code"
}
trap cleanup EXIT

# ---- the base image ------------------------------------------------------------------------------
step "base image $BASE"
PULL=()
if "$ENGINE" image inspect "$BASE" >/dev/null 2>&1; then
  if "$ENGINE" image inspect --format '{{index .Config.Labels "podium.stand-in"}}' "$BASE" 2>/dev/null | grep -qx true; then
    echo "   the debootstrap stand-in, made before (remove it to make it again)"
    PULL=(--pull=never)
  else
    echo "   present"
  fi
elif timeout 60 "$ENGINE" pull -q "$BASE" >/dev/null 2>&1; then
  echo "   pulled"
else
  # No registry serves it: the same Python (Debian bookworm's python3 is 3.11) from Debian's own
  # packages, imported and tagged so FROM resolves without a pull.
  echo "   cannot be pulled: making a stand-in with debootstrap (Debian bookworm, python3 3.11)"
  command -v debootstrap >/dev/null || fail "debootstrap is not installed (apt-get install debootstrap)"
  root="$WORK/rootfs"
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; fail "debootstrap failed"; }
  chroot "$root" apt-get install -y -q --no-install-recommends \
    python3 python3-venv python3-pip python-is-python3 ca-certificates netbase tzdata \
    >>"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; fail "apt-get in the stand-in failed"; }
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* "$root"/usr/share/man/*
  tar -C "$root" -c . | "$ENGINE" import \
    --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' --change 'LABEL podium.stand-in=true' \
    - "$BASE" >/dev/null 2>"$WORK/import.log" || { cat "$WORK/import.log" >&2; fail "$ENGINE import failed"; }
  echo "   stand-in $BASE: Python $(chroot "$root" python3 -c 'import platform; print(platform.python_version())')"
  rm -rf "$root"
  PULL=(--pull=never)
fi

# ---- the two images ------------------------------------------------------------------------------
BUILD=("$ENGINE" build "${PULL[@]}")
# Without the docker format podman drops the HEALTHCHECK.
[ "$ENGINE" = podman ] && BUILD+=(--format docker)
if [ -n "$CA" ] && [ -f "$CA" ]; then
  if [ "$ENGINE" = podman ]; then
    # pip in the build trusts what the host trusts (a TLS-inspecting proxy's CA included).
    BUILD+=(-v "$CA:/etc/ssl/certs/ca-certificates.crt:ro")
  else
    echo "   docker build cannot mount $CA: behind a TLS-inspecting proxy use podman (docs/deployment.md)"
  fi
fi

step "build $FULL (--target full)"
"${BUILD[@]}" --target full -t "$FULL" . >"$WORK/build-full.log" 2>&1 \
  || { tail -40 "$WORK/build-full.log" >&2; fail "build of the full image failed"; }
step "build $WATCHER (--target watcher)"
"${BUILD[@]}" --target watcher -t "$WATCHER" . >"$WORK/build-watcher.log" 2>&1 \
  || { tail -40 "$WORK/build-watcher.log" >&2; fail "build of the watcher image failed"; }

size() { "$ENGINE" image inspect --format '{{.Size}}' "$1"; }
mb() { echo $(($1 / 1000000)); }
full_size=$(size "$FULL")
watcher_size=$(size "$WATCHER")
echo "   $FULL: $(mb "$full_size") MB; $WATCHER: $(mb "$watcher_size") MB"

if [ "${1:-}" = build ]; then
  step ""
  echo "== built in $((SECONDS - START))s"
  exit 0
fi

# ---- smoke tests ---------------------------------------------------------------------------------
[ -x "$HOST_PY" ] || fail "no $HOST_PY: the host's watcher reads the tags back (bash scripts/setup.sh dev)"

# One-off runs (`run --rm`) go without the HEALTHCHECK: nothing would probe it, and podman
# without systemd logs on stderr that it cannot time it.
step "images: the sidecar holds the watcher only"
[ "$watcher_size" -le $((1870000000 / 3)) ] || fail "the sidecar image is $(mb "$watcher_size") MB, over 1/3 of 1.87 GB"
"$ENGINE" run --rm --no-healthcheck --entrypoint python "$WATCHER" -c '
import importlib.util, sys
present = [m for m in ("trainer", "xgboost", "shap", "matplotlib", "pyarrow", "sklearn") if importlib.util.find_spec(m)]
sys.exit(f"the sidecar image holds {present}" if present else 0)' || fail "the sidecar image holds the trainer stack"

free_port() { "$HOST_PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
MLFLOW_PORT=$(free_port)
API_PORT=$(free_port)
HOST_URI="http://127.0.0.1:$MLFLOW_PORT"
TOKEN=$("$HOST_PY" -c 'import secrets; print(secrets.token_urlsafe(18))')

# One config for the sidecar's and the host's watcher: the shipped one, passes every 2 s, and the
# sweep's rule computes the selection statistics too (arch, scipy: the sidecar's heaviest part).
"$HOST_PY" - "$WORK/watcher.yaml" <<'EOF'
import sys

import yaml

config = yaml.safe_load(open("config/watcher.yaml"))
config.update(poll_interval_seconds=2, holder_check_seconds=2, experiment_list_seconds=2)
(rule,) = [r for r in config["rules"] if r["name"] == "wf-xgboost"]
rule["selection"] = {"fold_metric": "test_r2"}
yaml.safe_dump(config, open(sys.argv[1], "w"), sort_keys=False)
EOF
chmod 0644 "$WORK/watcher.yaml"
CONFIG_MOUNT=(-v "$WORK/watcher.yaml:/etc/podium/watcher.yaml:ro")

step "pod: mlflow server (full image)"
if [ "$ENGINE" = podman ]; then
  podman pod create --name "$NAME" -p "127.0.0.1:$MLFLOW_PORT:5000" -p "127.0.0.1:$API_PORT:8265" >/dev/null
  IN_POD=(--pod "$NAME")
else
  # Docker has no pods: a holder container owns the network namespace, the others join it.
  docker run -d --name "$NAME" -p "127.0.0.1:$MLFLOW_PORT:5000" -p "127.0.0.1:$API_PORT:8265" \
    --entrypoint sleep "$WATCHER" infinity >/dev/null
  IN_POD=(--network "container:$NAME")
fi
POD_UP=1
# (Podman logs that it cannot reach systemd to time the HEALTHCHECK: kept in engine.log.)
"$ENGINE" run -d --name "$NAME-mlflow" "${IN_POD[@]}" --entrypoint mlflow "$FULL" server \
  --backend-store-uri sqlite:////home/podium/mlflow.db --serve-artifacts \
  --artifacts-destination /var/lib/mlflow/artifacts --host 0.0.0.0 --port 5000 --workers 2 \
  --allowed-hosts "localhost:5000,127.0.0.1:5000,localhost:$MLFLOW_PORT,127.0.0.1:$MLFLOW_PORT" \
  >/dev/null 2>>"$WORK/engine.log" || { cat "$WORK/engine.log" >&2; fail "mlflow server did not start"; }
wait_for() { # URL SECONDS
  local deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 1
  done
}
wait_for "$HOST_URI/health" 90 || fail "mlflow server did not answer /health in 90 s"

step "pod: watcher sidecar (watcher image)"
SIDECAR_ENV=(-e MLFLOW_TRACKING_URI=http://localhost:5000 -e WATCHER_HTTP__HOST=0.0.0.0
  -e WATCHER_HTTP__TOKEN_ENV=PODIUM_API_TOKEN -e "PODIUM_API_TOKEN=$TOKEN")
start_sidecar() {
  "$ENGINE" run -d --name "$NAME-watcher" "${IN_POD[@]}" "${SIDECAR_ENV[@]}" "${CONFIG_MOUNT[@]}" "$WATCHER" \
    >/dev/null 2>>"$WORK/engine.log" || { cat "$WORK/engine.log" >&2; fail "the sidecar did not start"; }
  wait_for "http://127.0.0.1:$API_PORT/healthz" 60 || fail "the sidecar did not answer /healthz in 60 s"
}
start_sidecar
echo "   /healthz: $(curl -fsS "http://127.0.0.1:$API_PORT/healthz")"
uid=$("$ENGINE" exec "$NAME-watcher" python -c 'import os; print(os.getuid())')
[ "$uid" = 10001 ] || fail "the sidecar runs as uid $uid, not 10001"
echo "   uid $uid"

step "trainer sweep (full image, $TRIALS trials)"
"$ENGINE" run --rm --no-healthcheck "${IN_POD[@]}" -e MLFLOW_TRACKING_URI=http://localhost:5000 -e GIT_PYTHON_REFRESH=quiet \
  --entrypoint python "$FULL" \
  -m trainer train --config /etc/podium/trainer.yaml --trials "$TRIALS" --jobs 2 --no-progress \
  >"$WORK/sweep.log" 2>&1 || { tail -30 "$WORK/sweep.log" >&2; fail "the sweep failed"; }
grep -E "experiment|best" "$WORK/sweep.log" | tail -3 | sed 's/^/   /'

# The watcher's tags of every run, read from the host with the host's MLflow client.
cat >"$WORK/tags.py" <<'EOF'
"""Print {experiment: {run name: podium tags}} as JSON; `clear` deletes those tags first."""
import json
import sys

from mlflow.tracking import MlflowClient

from watcher.model import is_podium_run_tag

client = MlflowClient(sys.argv[1])
board = {}
for exp in client.search_experiments():
    runs = client.search_runs([exp.experiment_id], max_results=50000)
    if sys.argv[2:] == ["clear"]:
        for run in runs:
            for key in [k for k in run.data.tags if is_podium_run_tag(k)]:
                client.delete_tag(run.info.run_id, key)
        for key in [k for k in exp.tags if k.startswith("podium")]:
            client.delete_experiment_tag(exp.experiment_id, key)
        continue
    tags = {r.info.run_name: {k: v for k, v in r.data.tags.items() if is_podium_run_tag(k)} for r in runs}
    if any(tags.values()):
        board[exp.name] = dict(sorted(tags.items()))
        # The selection statistics (PBO, the model confidence set), as JSON; without its time.
        selection = json.loads(exp.tags.get("podium.selection", "{}"))
        board[exp.name]["podium.selection"] = {k: v for k, v in selection.items() if not k.endswith("_at")}
print(json.dumps(board, sort_keys=True))
EOF
tags() { "$HOST_PY" "$WORK/tags.py" "$HOST_URI" "$@"; }

step "sidecar ranks the sweep"
deadline=$((SECONDS + 90))
until [ "$(tags)" != "{}" ]; do
  [ $SECONDS -lt $deadline ] || fail "no run ranked 90 s after the sweep"
  sleep 2
done
# The pass that wrote the first tags goes on writing the board: read until two reads agree.
tags >"$WORK/tags-sidecar.json"
until sleep 2 && tags >"$WORK/tags-again.json" && cmp -s "$WORK/tags-sidecar.json" "$WORK/tags-again.json"; do
  [ $SECONDS -lt $deadline ] || fail "the board still changed 90 s after the sweep"
  mv "$WORK/tags-again.json" "$WORK/tags-sidecar.json"
done
"$HOST_PY" - "$WORK/tags-sidecar.json" <<'EOF'
import json
import sys

for name, board in json.load(open(sys.argv[1])).items():
    selection = board.pop("podium.selection")
    first = [run for run, tags in board.items() if tags.get("model_rank") == "1"]
    tagged = sum(1 for tags in board.values() if tags)
    print(f"   {name}: {tagged} of {len(board)} runs tagged, model_rank 1: {first}; selection: {sorted(selection)}")
EOF

step "SIGTERM: the sidecar stops with exit 0"
"$ENGINE" stop -t 60 "$NAME-watcher" >/dev/null
code=$("$ENGINE" inspect --format '{{.State.ExitCode}}' "$NAME-watcher")
[ "$code" = 0 ] || fail "the sidecar exited $code on SIGTERM"
"$ENGINE" rm "$NAME-watcher" >/dev/null
echo "   exit code 0"

step "--once: sidecar image against host watcher"
tags clear >/dev/null
[ "$(tags)" = "{}" ] || fail "the tags were not cleared"
MLFLOW_TRACKING_URI=$HOST_URI "$HOST_PY" -m watcher --config "$WORK/watcher.yaml" --once --log-format json \
  >"$WORK/host-once.log" 2>&1 </dev/null || { tail "$WORK/host-once.log" >&2; fail "the host's --once failed"; }
tags >"$WORK/tags-host.json"
tags clear >/dev/null
"$ENGINE" run --rm --no-healthcheck "${IN_POD[@]}" -e MLFLOW_TRACKING_URI=http://localhost:5000 "${CONFIG_MOUNT[@]}" "$WATCHER" --once \
  >"$WORK/sidecar-once.log" 2>&1 || { tail "$WORK/sidecar-once.log" >&2; fail "the sidecar's --once failed"; }
tags >"$WORK/tags-once.json"
cmp -s "$WORK/tags-sidecar.json" "$WORK/tags-host.json" \
  || { diff "$WORK/tags-sidecar.json" "$WORK/tags-host.json" >&2; fail "the host's --once tagged otherwise than the sidecar daemon"; }
cmp -s "$WORK/tags-host.json" "$WORK/tags-once.json" \
  || { diff "$WORK/tags-host.json" "$WORK/tags-once.json" >&2; fail "the sidecar's --once tagged otherwise than the host's"; }
echo "   the same tags from the sidecar daemon, the host's --once and the sidecar's --once"

step "check-config: a mounted config, then a bad one"
"$ENGINE" run --rm --no-healthcheck "${CONFIG_MOUNT[@]}" "$WATCHER" check-config >"$WORK/check.out" 2>&1 \
  || { cat "$WORK/check.out" >&2; fail "check-config of the mounted config failed"; }
grep -qE "^poll_interval_seconds: 2(\.0)?$" "$WORK/check.out" || fail "check-config did not print the mounted config"
printf 'poll_interval_seconds: soon\n' >"$WORK/bad.yaml"
chmod 0644 "$WORK/bad.yaml"
set +e
"$ENGINE" run --rm --no-healthcheck -v "$WORK/bad.yaml:/etc/podium/watcher.yaml:ro" "$WATCHER" check-config >"$WORK/bad.out" 2>"$WORK/bad.err"
code=$?
set -e
[ "$code" = 2 ] || fail "a bad config exited $code, not 2"
[ "$(wc -l <"$WORK/bad.err")" = 1 ] || { cat "$WORK/bad.err" >&2; fail "a bad config printed more than one line"; }
grep -q poll_interval_seconds "$WORK/bad.err" || fail "the bad config's message does not name the key"
echo "   exit 2: $(cat "$WORK/bad.err")"

step "HEALTHCHECK by hand: healthy, then unhealthy without the server"
healthcheck() {
  if [ "$ENGINE" = podman ]; then
    podman healthcheck run "$NAME-watcher" >/dev/null 2>&1
  else # the image's own HEALTHCHECK command, run the same way
    local cmd
    cmd=$(docker inspect --format '{{json .Config.Healthcheck.Test}}' "$NAME-watcher")
    # shellcheck disable=SC2046
    eval docker exec "$NAME-watcher" $("$HOST_PY" -c 'import json, shlex, sys; print(shlex.join(json.loads(sys.argv[1])[1:]))' "$cmd") >/dev/null 2>&1
  fi
}
start_sidecar
sleep 3
healthcheck || fail "the HEALTHCHECK failed with the server up"
echo "   healthy with the server up"
"$ENGINE" stop -t 10 "$NAME-mlflow" >/dev/null
deadline=$((SECONDS + 60))
while healthcheck; do
  [ $SECONDS -lt $deadline ] || fail "the HEALTHCHECK still passes 60 s after the server stopped"
  sleep 2
done
echo "   unhealthy $((SECONDS - STEP_START))s into the step, server stopped: $(curl -sS "http://127.0.0.1:$API_PORT/healthz")"

step "compose"
# docker-compose.yml needs postgres:16-alpine from a registry; say so where none serves it.
if "$ENGINE" image inspect docker.io/library/postgres:16-alpine >/dev/null 2>&1 \
  || timeout 60 "$ENGINE" pull -q docker.io/library/postgres:16-alpine >/dev/null 2>&1; then
  echo "   postgres:16-alpine is available: 'docker compose up --build' runs the whole loop (docs/deployment.md)"
else
  echo "   NOT RUN: postgres:16-alpine cannot be pulled here (no image registry), so docker-compose.yml is not started"
fi
step ""
echo "== all smoke tests passed in $((SECONDS - START))s ($FULL $(mb "$full_size") MB, $WATCHER $(mb "$watcher_size") MB)"
