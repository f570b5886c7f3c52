"""Webhook URLs and secrets never show in check-config, --dry-run or the logs of a pass."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import mlflow
import pytest
from pytest_httpserver import HTTPServer

from watcher.cli import main

SECRET = "very-secret-signing-key"
HOOK_PATH = "/services/T000/B000/XXXXsecretXXXX"


def write_config(tmp_path: Path, tracking_uri: str, experiment: str) -> Path:
    path = tmp_path / "watcher.yaml"
    path.write_text(
        f"""
tracking_uri: {tracking_uri}
http: {{enabled: false}}
webhooks:
  - name: team
    url_env: PODIUM_TEST_HOOK_URL
    format: slack
    secret_env: PODIUM_TEST_HOOK_SECRET
rules:
  - name: r
    experiments: ["{experiment}"]
    metric: avg_test_r2
    notify: [team]
""",
        encoding="utf-8",
    )
    return path


def test_secrets_stay_out_of_check_config_dry_run_and_pass_logs(
    sqlite_uri: str,
    tmp_path: Path,
    httpserver: HTTPServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    httpserver.expect_request(HOOK_PATH).respond_with_data("ok")
    monkeypatch.setenv("PODIUM_TEST_HOOK_URL", httpserver.url_for(HOOK_PATH))
    monkeypatch.setenv("PODIUM_TEST_HOOK_SECRET", SECRET)
    name = f"exp_{uuid4().hex[:8]}"
    exp_id = mlflow.create_experiment(name)
    with mlflow.start_run(experiment_id=exp_id):
        mlflow.log_metric("avg_test_r2", 0.5)
    config = str(write_config(tmp_path, sqlite_uri, name))

    assert main(["check-config", "--config", config]) == 0
    assert main(["--dry-run", "--config", config, "--log-format", "json"]) == 0
    assert len(httpserver.log) == 0  # a dry run notifies no one
    assert main(["--once", "--config", config, "--log-format", "json"]) == 0
    assert len(httpserver.log) == 1

    out = capsys.readouterr()
    # The receiver's own access log (werkzeug) may name its path; everything else must not.
    shown = "\n".join(line for line in (out.out + out.err).splitlines() if '" 200 -' not in line)
    assert "PODIUM_TEST_HOOK_URL (set)" in shown
    assert "webhook_delivered" in shown
    assert "XXXXsecretXXXX" not in shown
    assert SECRET not in shown


def test_unset_webhook_url_is_a_config_error_naming_the_variable(
    sqlite_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PODIUM_TEST_HOOK_URL", raising=False)
    monkeypatch.setenv("PODIUM_TEST_HOOK_SECRET", SECRET)
    config = str(write_config(tmp_path, sqlite_uri, "exp_none"))
    assert main(["--once", "--config", config]) == 2
    err = capsys.readouterr().err
    assert "PODIUM_TEST_HOOK_URL" in err
    assert "team" in err
    assert f"error: {config}: " in err  # names the file, like every other config error


def test_dry_run_with_an_unset_webhook_url_warns_and_still_plans(
    sqlite_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dry run sends nothing, so an unset url_env is a warning naming the variable, not exit 2."""
    monkeypatch.delenv("PODIUM_TEST_HOOK_URL", raising=False)
    monkeypatch.setenv("PODIUM_TEST_HOOK_SECRET", SECRET)
    name = f"exp_{uuid4().hex[:8]}"
    exp_id = mlflow.create_experiment(name)
    with mlflow.start_run(experiment_id=exp_id):
        mlflow.log_metric("avg_test_r2", 0.5)
    config = str(write_config(tmp_path, sqlite_uri, name))

    assert main(["--dry-run", "--config", config, "--log-format", "json"]) == 0
    out = capsys.readouterr()
    assert "dry run: 3 tag change(s) planned" in out.out
    [warning] = [line for line in out.err.splitlines() if "dry_run_webhook_unresolved" in line]
    assert "PODIUM_TEST_HOOK_URL" in warning
    assert SECRET not in out.out + out.err
