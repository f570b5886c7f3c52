"""What the container image does, performed without a container engine (scripts/image.sh
builds and runs the real images where podman or docker is installed).

The Dockerfile is read, not paraphrased: its build-stage `COPY` lines give the build context,
its runtime `ENV`, `ENTRYPOINT`, `CMD` and `HEALTHCHECK` are what the tests execute. Then, as the
image does: build the wheel with `pip wheel --no-deps` from that context (build isolation, as in
the image), install it into a fresh venv, start the image's command from that venv against a
real `mlflow server`, probe it with the image's own HEALTHCHECK command, send SIGTERM.

One shortcut, for speed: the image installs the wheel *with* its dependencies from the package
index (mlflow, xgboost, ... several hundred MB, minutes on this machine). Here the wheel goes in
with `--no-deps`, and a `.pth` file puts the project's `.venv` site-packages *after* the fresh
venv's own, so the dependencies resolve from there while `watcher`/`trainer` come from the
wheel (asserted), and the wheel's declared requirements are checked against what is installed.
The `.pth` line only appends a path: the `.venv`'s own `.pth` files (its editable install of
this repo) are not processed, and every process runs outside the work tree.

docker-compose.yml is checked the same way: its overrides are validated by the watcher's own
settings loader, and its mlflow command is started for real to show that the Host header the
sidecar sends (`mlflow:5000`) is accepted while another is refused.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.support.mlflow_server import ServerHandle, free_port, wait_healthy
from trainer.cli import build_parser as build_trainer_parser
from watcher.api import check_bind, resolve_token
from watcher.settings import load_settings

pytestmark = [pytest.mark.server, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
DEPS_SITE = (
    Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
)
IMAGE_VENV = "/opt/venv"
IMAGE_CONFIG_DIR = "/etc/podium"
STARTUP_S = 120.0


# ---- reading the Dockerfile ----------------------------------------------------------------------


def instructions(dockerfile: Path) -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) with continuations joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    out: list[tuple[str, str, str]] = []
    stage = ""
    for line in lines:
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            match = re.search(r"\bAS\s+(\S+)", rest, re.IGNORECASE)
            stage = match.group(1) if match else rest
        out.append((stage, op, rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return [str(v) for v in value]


@dataclass
class Image:
    """The image's runtime contract, mapped onto a local venv and config directory."""

    root: Path
    venv: Path
    config_dir: Path
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    healthcheck: list[str]

    def run_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "WATCHER_"))}
        env.pop("PYTHONPATH", None)
        env.update(self.env)
        env.update(extra)
        return env

    def argv(self, args: list[str], env: dict[str, str]) -> list[str]:
        exe = shutil.which(args[0], path=env["PATH"])
        assert exe is not None, args[0]
        assert exe.startswith(str(self.venv)), exe
        return [exe, *args[1:]]


def _map_image_paths(value: str, venv: Path, config_dir: Path) -> str:
    value = value.replace(IMAGE_VENV, str(venv)).replace(IMAGE_CONFIG_DIR, str(config_dir))
    return value.replace("$PATH", os.environ["PATH"])


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    root = tmp_path_factory.mktemp("image")
    steps = instructions(REPO / "Dockerfile")
    stages = [stage for stage, op, _ in steps if op == "FROM"]
    assert stages == [
        "build",
        "deps-watcher",
        "deps-full",
        "venv-watcher",
        "project-watcher",
        "project-full",
        "runtime",
        "watcher",
        "full",
    ]
    assert all("python:3.11-slim" in a for s, op, a in steps if op == "ARG" and "PYTHON_IMAGE" in a)

    # The build context as the full image's venv stage sees it (COPY <sources...> <dest>).
    context = root / "src"
    context.mkdir()
    for stage, op, args in steps:
        if stage in ("build", "project-full") and op == "COPY":
            for source in shlex.split(args)[:-1]:
                src = REPO / source
                dest = context / source
                if src.is_dir():
                    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    shutil.copy2(src, dest)
    (last_run,) = [a for s, op, a in steps if s == "project-full" and op == "RUN"][-1:]
    assert "--no-deps" in last_run  # the project last, over its dependencies' layer

    dist = root / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-cache-dir",
            "-q",
            "--wheel-dir",
            str(dist),
            str(context),
        ],
        check=True,
        cwd=root,
        timeout=300,
    )
    (wheel,) = dist.glob("*.whl")

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    venv_python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv_python), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        cwd=root,
        timeout=300,
    )
    purelib = subprocess.run(
        [str(venv_python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "_podium_test_deps.pth").write_text(f"{DEPS_SITE}\n")

    config_dir = root / "etc-podium"
    runtime_copies = [a for s, op, a in steps if s == "runtime" and op == "COPY" and "--from" not in a]
    assert runtime_copies == [f"config/ {IMAGE_CONFIG_DIR}/"]
    shutil.copytree(REPO / "config", config_dir)

    env: dict[str, str] = {}
    for _, _, args in [x for x in steps if x[0] == "runtime" and x[1] == "ENV"]:
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            env[key] = _map_image_paths(value, venv, config_dir)
    (healthcheck_args,) = [a for s, op, a in steps if s == "runtime" and op == "HEALTHCHECK"]
    (entrypoint,) = [exec_form(a) for s, op, a in steps if s == "runtime" and op == "ENTRYPOINT"]
    (cmd,) = [exec_form(a) for s, op, a in steps if s == "runtime" and op == "CMD"]
    healthcheck = exec_form(healthcheck_args.split(" CMD ", 1)[1])
    home = root / "home"
    home.mkdir()
    env["HOME"] = str(home)
    return Image(root, venv, config_dir, env, entrypoint, cmd, healthcheck)


def test_dockerfile_runs_as_non_root_with_exec_form_entrypoint():
    """The runtime stage switches to a numeric non-root user before the exec-form ENTRYPOINT
    `python -m watcher` (so SIGTERM reaches Python), and declares a HEALTHCHECK."""
    steps = [(op, a) for s, op, a in instructions(REPO / "Dockerfile") if s == "runtime"]
    ops = [op for op, _ in steps]
    (user,) = [a for op, a in steps if op == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    assert ops.index("USER") < ops.index("ENTRYPOINT")
    assert exec_form(next(a for op, a in steps if op == "ENTRYPOINT")) == ["python", "-m", "watcher"]
    assert "HEALTHCHECK" in ops


def test_dockerignore_lets_through_every_path_the_dockerfile_copies():
    """.dockerignore is an allow-list (`*`, then `!path`): every COPY source from the build
    context is on it, and the local venv and git data are not."""
    rules = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    rules = [r for r in rules if r and not r.startswith("#")]
    assert rules[0] == "*"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    for _, op, args in instructions(REPO / "Dockerfile"):
        if op == "COPY" and "--from" not in args:
            for source in shlex.split(args)[:-1]:
                assert source.rstrip("/") in allowed, source
    assert not {".venv", ".git", "mlflow.db", "mlruns", "tests"} & allowed


def test_wheel_installs_the_packages_and_its_requirements_are_met(image: Image):
    """The venv imports `watcher` and `trainer` from the installed wheel, not the work tree, and
    every requirement the wheel declares (with the image's `postgres` extra) is installed."""
    check = r"""
import importlib.metadata as md, json, trainer, watcher
from packaging.requirements import Requirement
dist = md.distribution("mlflow-podium")
missing = []
for spec in dist.requires or []:
    req = Requirement(spec)
    if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in ("", "postgres")):
        continue
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        missing.append(spec)
        continue
    if not req.specifier.contains(have, prereleases=True):
        missing.append(f"{spec} (have {have})")
print(json.dumps({"watcher": watcher.__file__, "trainer": trainer.__file__, "missing": missing,
                  "dist": str(dist.locate_file(""))}))
"""
    env = image.run_env()
    out = subprocess.run(
        [str(image.venv / "bin" / "python"), "-c", check],
        check=True,
        capture_output=True,
        text=True,
        cwd=image.root,
        env=env,
        timeout=120,
    )
    found = json.loads(out.stdout)
    assert found["watcher"].startswith(str(image.venv)), found
    assert found["trainer"].startswith(str(image.venv)), found
    assert found["dist"].startswith(str(image.venv)), found
    assert found["missing"] == []


def _make_runs(server_url: str, experiment: str, values: list[float]) -> list[str]:
    client = MlflowClient(server_url)
    exp_id = client.create_experiment(experiment)
    ids = []
    for i, value in enumerate(values):
        run = client.create_run(exp_id, run_name=f"trial_{i}")
        client.log_batch(
            run.info.run_id, metrics=[Metric("avg_test_r2", value, 0, 0), Metric("num_folds", 3.0, 0, 0)]
        )
        client.set_terminated(run.info.run_id)
        ids.append(run.info.run_id)
    return ids


# The image's rule watches wf_xgboost_*; on the shared test server the daemon must not touch
# other tests' experiments, so its rules are overridden (as JSON, like any WATCHER_* key).
WATCHED = "exp_container_watched_"
RULES_ENV = json.dumps([{"name": "container", "experiments": [f"{WATCHED}*"], "metric": "avg_test_r2"}])


@pytest.fixture
def daemon_env(image: Image, sqlite_server: ServerHandle) -> tuple[dict[str, str], str]:
    """The environment a deployment gives the container: tracking URI, port, a token, a short
    poll interval and its own rules (compose-style WATCHER_* overrides of the image's config)."""
    port = free_port()
    secret = f"tok-{uuid4().hex}"
    env = image.run_env(
        MLFLOW_TRACKING_URI=sqlite_server.url,
        WATCHER_POLL_INTERVAL_SECONDS="2",
        WATCHER_RULES=RULES_ENV,
        WATCHER_HTTP__PORT=str(port),
        WATCHER_HTTP__TOKEN_ENV="PODIUM_API_TOKEN",
        PODIUM_API_TOKEN=secret,
        MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true",
    )
    return env, secret


def _passes_ok(metrics_text: str) -> float:
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "podium_watcher_passes_total" and sample.labels == {"outcome": "ok"}:
                return sample.value
    return 0.0


def _start_daemon(image: Image, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Run the image's ENTRYPOINT + CMD from its venv, output to `log_path`."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            image.argv(image.entrypoint + image.cmd, env),
            env=env,
            cwd=image.root / "home",
            stdout=log,
            stderr=log,
        )


def _healthcheck(image: Image, env: dict[str, str]) -> int:
    return subprocess.run(
        image.argv(image.healthcheck, env), env=env, cwd=image.root, capture_output=True, timeout=60
    ).returncode


def test_image_command_serves_healthz_ranks_and_exits_0_on_sigterm(image, daemon_env, sqlite_server):
    """The image's ENTRYPOINT+CMD, run from the wheel's venv outside the work tree, passes its own
    HEALTHCHECK once the first pass succeeded, ranks on POST with the token (404 unknown
    experiment, 422 bad top_n), counts passes on /metrics, logs JSON lines that never contain
    the token, and on SIGTERM stops API and scheduler with exit code 0."""
    env, secret = daemon_env
    watched = _make_runs(sqlite_server.url, f"{WATCHED}{uuid4().hex[:8]}", [0.4, 0.3])
    name = f"exp_container_adhoc_{uuid4().hex[:8]}"  # no rule matches: POST ranks it anyway
    run_ids = _make_runs(sqlite_server.url, name, [0.2, 0.9, 0.5])
    url = f"http://127.0.0.1:{env['WATCHER_HTTP__PORT']}"
    log_path = image.root / f"daemon-{uuid4().hex[:6]}.log"
    proc = _start_daemon(image, env, log_path)
    try:
        deadline = time.monotonic() + STARTUP_S
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"{url}/healthz", timeout=5)
                status = (health.status_code, health.json()["status"], bool(health.json()["last_success_at"]))
            except httpx.TransportError:
                status = None
            # 200 "starting" comes first, then "ok" while the first pass reads, before it wrote.
            if status == (200, "ok", True):
                break
            time.sleep(0.5)
        assert status == (200, "ok", True), f"exit={proc.poll()} log:\n{log_path.read_text()[-3000:]}"
        assert _healthcheck(image, env) == 0
        # The first pass ranked the watched experiment by the env's rule.
        assert MlflowClient(sqlite_server.url).get_run(watched[0]).data.tags["model_rank"] == "1"

        params: dict[str, str | int] = {"experiment_name": name, "metric": "avg_test_r2", "top_n": 2}
        assert httpx.post(f"{url}/models/rank", params=params, timeout=60).status_code == 401
        ranked = httpx.post(
            f"{url}/models/rank", params=params, headers={"Authorization": f"Bearer {secret}"}, timeout=60
        )
        assert ranked.status_code == 200, ranked.text
        assert [m["run_id"] for m in ranked.json()["models"]] == [run_ids[1], run_ids[2]]
        assert MlflowClient(sqlite_server.url).get_run(run_ids[1]).data.tags["model_rank"] == "1"
        # The training dashboard's files ship inside the wheel (package data).
        page = httpx.get(f"{url}/", timeout=30)
        assert page.status_code == 200
        assert "Rank Top Models" in page.text
        assert httpx.get(f"{url}/static/app.js", timeout=30).status_code == 200

        auth = {"Authorization": f"Bearer {secret}"}
        unknown = {"experiment_name": f"missing_{uuid4().hex[:8]}"}
        assert httpx.post(f"{url}/models/rank", params=unknown, headers=auth, timeout=60).status_code == 404
        bad = {**params, "top_n": 0}
        assert httpx.post(f"{url}/models/rank", params=bad, headers=auth, timeout=60).status_code == 422

        # /metrics moves as the scheduler keeps passing (every 2 s here).
        first = _passes_ok(httpx.get(f"{url}/metrics", timeout=30).text)
        deadline = time.monotonic() + STARTUP_S
        while _passes_ok(httpx.get(f"{url}/metrics", timeout=30).text) <= first:
            assert time.monotonic() < deadline, "no pass counted on /metrics"
            time.sleep(0.5)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _healthcheck(image, env) != 0  # nothing listens any more

    text = log_path.read_text()
    assert secret not in text
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    names = [e.get("event") for e in events]
    assert "api_started" in names
    assert "pass_finished" in names
    assert names[-1] == "watcher_stopped"


def test_http_disabled_runs_passes_without_listening(image, daemon_env):
    """WATCHER_HTTP__ENABLED=false: the daemon passes as usual, nothing listens on the port, and
    SIGTERM still ends it with exit code 0."""
    env, _ = daemon_env
    env = {**env, "WATCHER_HTTP__ENABLED": "false"}
    log_path = image.root / f"daemon-nohttp-{uuid4().hex[:6]}.log"
    proc = _start_daemon(image, env, log_path)
    try:
        deadline = time.monotonic() + STARTUP_S
        while '"pass_finished"' not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "no pass finished"
            time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{env['WATCHER_HTTP__PORT']}/healthz", timeout=5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert '"api_started"' not in log_path.read_text()


def test_image_refuses_a_network_bind_without_a_token(image, daemon_env):
    """WATCHER_HTTP__HOST=0.0.0.0 without a token: exit 2 with one message, before any pass."""
    env, _ = daemon_env
    env = {**env, "WATCHER_HTTP__HOST": "0.0.0.0"}
    del env["WATCHER_HTTP__TOKEN_ENV"]
    done = subprocess.run(
        image.argv(image.entrypoint + image.cmd, env),
        env=env,
        cwd=image.root / "home",
        capture_output=True,
        text=True,
        timeout=STARTUP_S,
    )
    assert done.returncode == 2
    assert "allow_insecure_bind" in done.stderr
    assert "Traceback" not in done.stderr


# ---- docker-compose.yml ----------------------------------------------------------------------------


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _interpolate(value: str, given: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} with `given` as the shell env."""

    def sub(m: re.Match[str]) -> str:
        var, op, arg = m.group(1), m.group(2), m.group(3) or ""
        if var in given:
            return given[var]
        if op == ":-":
            return arg
        if op == ":?":
            raise AssertionError(f"compose needs {var}: {arg}")
        return ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", sub, value)


def _allowed_hosts(service: dict) -> list[str]:
    command = [str(c) for c in service["command"]]
    return command[command.index("--allowed-hosts") + 1].split(",")


def test_compose_services_and_tracking_hosts_line_up():
    """mlflow runs on PostgreSQL with an artifact volume; every service that talks to it uses a
    tracking URI whose host:port is in the server's --allowed-hosts (else MLflow answers 403)."""
    services = _compose()["services"]
    assert {"postgres", "mlflow", "watcher", "trainer"} <= set(services)
    mlflow = services["mlflow"]
    command = [str(c) for c in mlflow["command"]]
    assert command[command.index("--backend-store-uri") + 1].startswith("postgresql+psycopg://")
    destination = command[command.index("--artifacts-destination") + 1]
    assert any(str(v).endswith(f":{destination}") for v in mlflow["volumes"])
    allowed = _allowed_hosts(mlflow)
    for name in ("watcher", "trainer"):
        uri = services[name]["environment"]["MLFLOW_TRACKING_URI"]
        host = uri.split("://", 1)[1].split("/", 1)[0]
        assert host in allowed, (name, host, allowed)
    assert services["trainer"]["restart"] == "no"  # one-shot


def test_compose_trainer_runs_a_valid_trainer_command():
    """The one-shot trainer service's command parses with the trainer's own CLI, and the config
    file it names is one the image ships (config/ is copied to /etc/podium/)."""
    trainer = _compose()["services"]["trainer"]
    assert trainer["entrypoint"] == ["python", "-m", "trainer"]
    command = [_interpolate(str(c), {}) for c in trainer["command"]]
    args = build_trainer_parser().parse_args(command)
    assert args.command == "train"
    assert args.config.parent == Path(IMAGE_CONFIG_DIR)
    assert (REPO / "config" / args.config.name).is_file()


def test_compose_watcher_overrides_are_valid_settings_and_pass_the_bind_check(monkeypatch):
    """The watcher service's WATCHER_* overrides, applied to the image's config, load through
    the watcher's own settings (no unknown key) and satisfy the non-loopback bind check."""
    watcher_env = _compose()["services"]["watcher"]["environment"]
    shell = {"PODIUM_API_TOKEN": "compose-token"}
    for key in list(os.environ):
        if key.startswith("WATCHER_"):
            monkeypatch.delenv(key)
    resolved = {k: _interpolate(str(v), shell) for k, v in watcher_env.items()}
    for key, value in resolved.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(REPO / "config" / "watcher.yaml")
    assert settings.http.host == "0.0.0.0"
    assert settings.http.token_env == "PODIUM_API_TOKEN"
    token = resolve_token(settings.http, resolved)
    assert token == "compose-token"
    check_bind(settings.http, token)  # raises ConfigError if the compose file were insecure


def test_compose_mlflow_command_accepts_the_sidecars_host_header(tmp_path: Path):
    """The compose mlflow command (PostgreSQL and volume swapped for a sqlite file and a tmp
    dir) answers the sidecar's `Host: mlflow:5000` and refuses an unlisted host with 403."""
    mlflow = _compose()["services"]["mlflow"]
    command = [str(c) for c in mlflow["command"]]
    port = free_port()
    swap = {
        "--backend-store-uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--artifacts-destination": str(tmp_path / "artifacts"),
        "--host": "127.0.0.1",
        "--port": str(port),
        "--workers": "1",
    }
    args = list(command)
    for flag, value in swap.items():
        args[args.index(flag) + 1] = value
    assert mlflow["entrypoint"] == ["mlflow", "server"]
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - the server process owns it
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"},
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc=proc)
        path = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search"
        payload = {"max_results": 1}
        sidecar = httpx.post(path, json=payload, headers={"Host": "mlflow:5000"}, timeout=30)
        stranger = httpx.post(path, json=payload, headers={"Host": "evil.example:5000"}, timeout=30)
        assert sidecar.status_code == 200, sidecar.text
        assert stranger.status_code == 403
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
