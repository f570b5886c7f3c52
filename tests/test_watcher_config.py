"""Config validation through the CLI: exit 2 and one message naming file, rule and field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from watcher import cli
from watcher.settings import load_settings

GOOD_RULE: dict[str, Any] = {
    "name": "wf-xgboost",
    "experiments": ["wf_xgboost_*"],
    "metric": "avg_test_r2",
    "top_n": 10,
    "production_candidates": 3,
}


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "watcher.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def run_watcher(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m watcher ARGS`` as a process: what a user's shell sees."""
    return subprocess.run(
        [sys.executable, "-m", "watcher", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def with_rule(**changes: Any) -> dict[str, Any]:
    rule = {**GOOD_RULE, **changes}
    return {"rules": [{**GOOD_RULE, "name": "first"}, {k: v for k, v in rule.items() if v is not None}]}


CASES = [
    pytest.param(
        with_rule(metrik="x"),
        ["rule #2 'wf-xgboost' (rules[1])", "unknown key 'metrik'", "did you mean 'metric'"],
        id="unknown-key",
    ),
    pytest.param(
        with_rule(top_n=0),
        ["rule #2 'wf-xgboost' (rules[1])", "field 'top_n'", "greater than or equal to 1"],
        id="top-n",
    ),
    pytest.param(
        with_rule(top_n=201),
        ["rule #2 'wf-xgboost' (rules[1])", "field 'top_n'", "less than or equal to 200"],
        id="top-n-above-the-kept-board",
    ),
    pytest.param(
        with_rule(production_candidates=11),
        ["rules[1]", "field 'production_candidates'", "between 0 and top_n (10) (got 11)"],
        id="candidates-above-top-n",
    ),
    pytest.param(
        with_rule(production_candidates=-1),
        ["rules[1]", "field 'production_candidates'"],
        id="candidates-negative",
    ),
    pytest.param(
        with_rule(metric=None),
        ["rule #2 'wf-xgboost' (rules[1])", "field 'metric' is required"],
        id="missing-metric",
    ),
    pytest.param(
        with_rule(trigger="sometimes"),
        ["rules[1]", "field 'trigger'", "experiment_finished"],
        id="unknown-trigger",
    ),
    pytest.param(
        with_rule(notify=["team"]),
        ["rule #2 'wf-xgboost' (rules[1])", "field 'notify'", "webhook 'team' is not defined"],
        id="undefined-webhook",
    ),
    pytest.param(
        with_rule(filter="metrics.num_folds >= 3 OR params.x = 1"),
        ["rule #2 'wf-xgboost' (rules[1])", "field 'filter'", "not a valid MLflow run filter"],
        id="bad-filter",
    ),
    pytest.param(
        with_rule(filter="metrics.num_folds >>= 3"),
        ["rules[1]", "field 'filter'", "operator '>>=' is not allowed for metric 'num_folds'"],
        id="bad-filter-operator",
    ),
    pytest.param(
        {"poll_interval_seconds": 0, "rules": [GOOD_RULE]},
        ["field 'poll_interval_seconds'", "greater than 0"],
        id="poll-interval",
    ),
    pytest.param(
        {"holder_check_seconds": -1, "rules": [GOOD_RULE]},
        ["field 'holder_check_seconds'", "greater than or equal to 0 (got -1)"],
        id="holder-check-negative",
    ),
    pytest.param(
        {"holder_check_seconds": float("inf"), "rules": [GOOD_RULE]},
        ["field 'holder_check_seconds'", "less than or equal to 86400"],
        id="holder-check-infinite",
    ),
    pytest.param(
        {"experiment_list_seconds": -5, "rules": [GOOD_RULE]},
        ["field 'experiment_list_seconds'", "greater than or equal to 0 (got -5)"],
        id="experiment-list-negative",
    ),
    pytest.param(
        {"experiment_list_seconds": 86401, "rules": [GOOD_RULE]},
        ["field 'experiment_list_seconds'", "less than or equal to 86400"],
        id="experiment-list-huge",
    ),
    pytest.param(
        {"experiment_list_seconds": False, "rules": [GOOD_RULE]},
        ["field 'experiment_list_seconds'", "not true/false (got False)"],
        id="experiment-list-boolean",
    ),
    pytest.param(
        {"poll_interval_seconds": 1e308, "rules": [GOOD_RULE]},
        ["field 'poll_interval_seconds'", "less than or equal to 86400"],
        id="poll-interval-huge",
    ),
    pytest.param(
        {"holder_check_seconds": True, "rules": [GOOD_RULE]},
        ["field 'holder_check_seconds'", "not true/false (got True)"],
        id="holder-check-boolean",
    ),
    pytest.param(
        {"poll_interval_seconds": True, "rules": [GOOD_RULE]},
        ["field 'poll_interval_seconds'", "not true/false (got True)"],
        id="poll-interval-boolean",
    ),
    pytest.param(
        {"max_rankings_per_pass": 0, "rules": [GOOD_RULE]},
        ["field 'max_rankings_per_pass'", "greater than or equal to 1 (got 0)"],
        id="max-rankings-zero",
    ),
    pytest.param(
        {"max_rankings_per_pass": True, "rules": [GOOD_RULE]},
        ["field 'max_rankings_per_pass'", "whole number (got True)"],
        id="max-rankings-boolean",
    ),
    pytest.param(
        {"write_concurrency": 2.5, "rules": [GOOD_RULE]},
        ["field 'write_concurrency'", "whole number (got 2.5)"],
        id="write-concurrency-fraction",
    ),
    pytest.param(
        {"write_concurrency": 64, "rules": [GOOD_RULE]},
        ["field 'write_concurrency'", "less than or equal to 32 (got 64)"],
        id="write-concurrency-too-many",
    ),
    pytest.param({"rules": [GOOD_RULE], "polling": 3}, ["unknown key 'polling'"], id="unknown-top-level-key"),
    pytest.param({"rules": [GOOD_RULE, GOOD_RULE]}, ["rules[1]", "duplicate rule name"], id="duplicate-rule"),
    pytest.param("rules:\n  - name: x\n   metric: [1\n", ["invalid YAML at line"], id="yaml-syntax"),
    pytest.param(
        with_rule(experiments=["wf_*", ""]),
        ["rule #2 'wf-xgboost' (rules[1])", "field 'experiments'", "pattern #2 is empty"],
        id="empty-pattern",
    ),
    pytest.param(
        with_rule(alerts=["failed", "crashed"]),
        ["rules[1]", "field 'alerts'", "'failed' or 'stalled'"],
        id="unknown-alert",
    ),
    pytest.param(
        with_rule(stalled_after_minutes=0),
        ["rules[1]", "field 'stalled_after_minutes'", "greater than or equal to 1"],
        id="stalled-after-zero",
    ),
    pytest.param(
        with_rule(stalled_after_minutes=1.5),
        ["rules[1]", "field 'stalled_after_minutes'", "valid integer"],
        id="stalled-after-fraction",
    ),
    pytest.param(
        with_rule(top_n=True),
        ["rules[1]", "field 'top_n'", "valid integer (got True)"],
        id="top-n-boolean",
    ),
    pytest.param(
        with_rule(selection={"blocks": 7}),
        ["rule #2 'wf-xgboost' (rules[1])", "field 'selection.blocks'", "even number from 2 to 20 (got 7)"],
        id="selection-odd-blocks",
    ),
    pytest.param(
        with_rule(selection={"alpha": 1.0}),
        [
            "rule #2 'wf-xgboost' (rules[1])",
            "field 'selection.alpha'",
            "between 0 and 1, both excluded (got 1.0)",
        ],
        id="selection-alpha-one",
    ),
    pytest.param(
        with_rule(selection={"alpha": 0}),
        ["rules[1]", "field 'selection.alpha'", "(got 0)"],
        id="selection-alpha-zero",
    ),
    pytest.param(
        with_rule(selection={"max_pbo": 1.5}),
        ["rule #2 'wf-xgboost' (rules[1])", "field 'selection.max_pbo'", "between 0 and 1 (got 1.5)"],
        id="selection-max-pbo",
    ),
    pytest.param(
        with_rule(selection={"sharpe_metric": "oos_sharpe", "min_dsr": 1.5}),
        ["rule #2 'wf-xgboost' (rules[1])", "field 'selection.min_dsr'", "between 0 and 1 (got 1.5)"],
        id="selection-min-dsr",
    ),
    pytest.param(
        with_rule(selection={"min_dsr": 0.95}),
        ["rule #2 'wf-xgboost' (rules[1])", "field 'selection'", "min_dsr needs sharpe_metric"],
        id="selection-min-dsr-without-sharpe-metric",
    ),
    pytest.param(
        with_rule(selection={"sharpe_metric": "oos sharpe"}),
        ["rule #2 'wf-xgboost' (rules[1])", "field 'selection.sharpe_metric'", "must name one metric"],
        id="selection-sharpe-metric-not-a-name",
    ),
    pytest.param(
        with_rule(selection={"fold_metric": "  "}),
        ["rule #2 'wf-xgboost' (rules[1])", "field 'selection.fold_metric'", "must name a metric"],
        id="selection-fold-metric-blank",
    ),
    pytest.param(
        with_rule(selection={"fold_metric": ""}),
        ["rules[1]", "field 'selection.fold_metric'", "at least 1 character"],
        id="selection-fold-metric-empty",
    ),
    pytest.param(
        with_rule(selection={"max_pbo": True}),
        ["rule #2 'wf-xgboost' (rules[1])", "field 'selection.max_pbo'", "not true/false"],
        id="selection-max-pbo-boolean",
    ),
    pytest.param(
        with_rule(metric="avg_test_rmse", ascending=True, selection={"max_pbo": 0.5}),
        ["rule #2 'wf-xgboost' (rules[1])", "field 'selection'", "fold_metric must be given"],
        id="selection-default-fold-metric-lower-is-better",
    ),
    pytest.param(
        with_rule(selection={"block": 8}),
        ["rules[1]", "unknown key 'block'", "did you mean 'blocks'"],
        id="selection-unknown-key",
    ),
    pytest.param(
        "rules:\n  - name: x\n    experiments: [x]\n    metric: m\n    metric: n\n",
        ["invalid YAML at line 5", "key 'metric' appears twice"],
        id="duplicate-key",
    ),
    pytest.param(
        {"webhooks": [{"name": "team", "url": "not a url"}], "rules": [{**GOOD_RULE, "notify": ["team"]}]},
        ["webhook #1 'team' (webhooks[0])", "field 'url'", "http:// or https://"],
        id="webhook-url-not-http",
    ),
    pytest.param(
        {
            "webhooks": [{"name": "team", "url_env": "PODIUM_TEST_UNSET_HOOK"}],
            "rules": [{**GOOD_RULE, "notify": ["team"]}],
        },
        ["webhook 'team'", "environment variable PODIUM_TEST_UNSET_HOOK (url_env) is not set"],
        id="unset-url-env",
    ),
]


@pytest.mark.parametrize("command", [["check-config"], ["--once"]], ids=["check-config", "once"])
@pytest.mark.parametrize(("config", "expected"), CASES)
def test_bad_config_exits_2_with_one_message_naming_file_rule_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], config: Any, expected: list[str]
) -> None:
    path = write(tmp_path, config)
    assert cli.main([*command, "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: ")
    assert len(err.splitlines()) == 1
    assert err.count("(got ") <= 1  # the offending value is shown once
    for part in expected:
        assert part in err


@pytest.mark.parametrize("command", [["check-config"], ["--once"]], ids=["check-config", "once"])
def test_a_config_file_that_is_not_utf8_is_exit_2_with_one_line(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(
        yaml.safe_dump({"rules": [GOOD_RULE]}).replace("wf-xgboost", "wf-xgb\xf6ost").encode("latin-1")
    )
    proc = run_watcher(*command, "--config", str(path))
    assert (proc.returncode, "Traceback" in proc.stderr) == (2, False)
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"error: {path}: the config file is not UTF-8 text")


@pytest.mark.parametrize("command", [["check-config"], ["--once"]], ids=["check-config", "once"])
def test_a_list_from_the_environment_that_is_not_json_is_exit_2_naming_the_variable(
    tmp_path: Path, command: list[str]
) -> None:
    path = write(tmp_path, {"rules": [GOOD_RULE]})
    proc = run_watcher(*command, "--config", str(path), env={**os.environ, "WATCHER_RULES": "not json"})
    assert (proc.returncode, "Traceback" in proc.stderr) == (2, False)
    assert (
        proc.stderr.strip()
        == f"error: {path}: environment variable WATCHER_RULES: not valid JSON (a list or mapping such as '[...]' is expected)"
    )


def test_a_missing_config_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert cli.main(["--once", "--config", str(missing)]) == 2
    assert f"{missing}: config file not found" in capsys.readouterr().err


def test_environment_overrides_the_file_and_is_validated_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, {"rules": [GOOD_RULE]})
    monkeypatch.setenv("WATCHER_HTTP__PORT", "9000")
    monkeypatch.setenv("WATCHER_POLL_INTERVAL_SECONDS", "5")
    settings = load_settings(path)
    assert (settings.http.port, settings.poll_interval_seconds) == (9000, 5.0)
    monkeypatch.setenv("WATCHER_POLL_INTERVAL_SECONDS", "-1")
    assert cli.main(["check-config", "--config", str(path)]) == 2
    assert "field 'poll_interval_seconds'" in capsys.readouterr().err


def test_the_scale_keys_default_come_from_the_environment_and_are_checked_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, {"rules": [GOOD_RULE]})
    settings = load_settings(path)
    assert (settings.holder_check_seconds, settings.max_rankings_per_pass, settings.write_concurrency) == (
        60.0,
        100,
        4,
    )
    monkeypatch.setenv("WATCHER_HOLDER_CHECK_SECONDS", "0")
    monkeypatch.setenv("WATCHER_MAX_RANKINGS_PER_PASS", "25")
    monkeypatch.setenv("WATCHER_WRITE_CONCURRENCY", "1")
    settings = load_settings(path)
    assert (settings.holder_check_seconds, settings.max_rankings_per_pass, settings.write_concurrency) == (
        0.0,
        25,
        1,
    )
    monkeypatch.setenv("WATCHER_MAX_RANKINGS_PER_PASS", "many")
    assert cli.main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "environment variable WATCHER_MAX_RANKINGS_PER_PASS: field 'max_rankings_per_pass'" in err
    assert "(got 'many')" in err
    monkeypatch.setenv("WATCHER_MAX_RANKINGS_PER_PASS", "25")
    monkeypatch.setenv("WATCHER_HOLDER_CHECK_SECONDS", "abc")
    assert cli.main(["check-config", "--config", str(path)]) == 2
    assert (
        "environment variable WATCHER_HOLDER_CHECK_SECONDS: field 'holder_check_seconds'"
        in capsys.readouterr().err
    )
    monkeypatch.setenv("WATCHER_HOLDER_CHECK_SECONDS", "0")
    assert load_settings(path).experiment_list_seconds == 60.0
    monkeypatch.setenv("WATCHER_EXPERIMENT_LIST_SECONDS", "0")
    assert load_settings(path).experiment_list_seconds == 0.0
    monkeypatch.setenv("WATCHER_EXPERIMENT_LIST_SECONDS", "-1")
    assert cli.main(["check-config", "--config", str(path)]) == 2
    assert (
        "environment variable WATCHER_EXPERIMENT_LIST_SECONDS: field 'experiment_list_seconds'"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("WATCHER_HTTP__PORT", "abc", "field 'port': Input should be a valid integer"),
        ("WATCHER_RULES__0__TOP_N", "0", "field 'top_n': Input should be greater than or equal to 1"),
        ("WATCHER_RULES__0__SELECTION__ALPHA", "2", "field 'selection.alpha'"),
    ],
)
def test_a_bad_nested_value_from_the_environment_names_its_variable_not_the_file(
    tmp_path: Path, variable: str, value: str, expected: str
) -> None:
    """The file holds nothing wrong (and no such key): the message must send the user to the
    variable that set the value."""
    path = write(tmp_path, {"rules": [GOOD_RULE]})
    proc = run_watcher("check-config", "--config", str(path), env={**os.environ, variable: value})
    assert (proc.returncode, "Traceback" in proc.stderr) == (2, False)
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"error: {path}: environment variable {variable}: {expected}")


def test_check_config_prints_the_effective_config_with_secrets_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        {
            "tracking_uri": "postgresql://podium:hunter2@db:5432/mlflow",
            "webhooks": [
                {
                    "name": "slack",
                    "url": "https://hooks.slack.com/services/T000/B000/XXXXSECRET",
                    "format": "slack",
                },
                {"name": "team", "url_env": "PODIUM_TEST_HOOK", "secret_env": "PODIUM_TEST_SECRET"},
            ],
            "rules": [{**GOOD_RULE, "notify": ["slack", "team"]}],
        },
    )
    monkeypatch.setenv("PODIUM_TEST_HOOK", "https://example.com/hook?token=abc")
    monkeypatch.setenv("PODIUM_TEST_SECRET", "s3cr3t-value")
    assert cli.main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    for secret in ("hunter2", "XXXXSECRET", "T000", "token=abc", "s3cr3t-value"):
        assert secret not in out
    shown = yaml.safe_load(out)
    assert shown["tracking_uri"] == "postgresql://podium:***@db:5432/mlflow"
    assert shown["webhooks"][0]["url"] == "https://hooks.slack.com/***"
    assert shown["webhooks"][1]["url_env"] == "PODIUM_TEST_HOOK (set)"
    assert shown["webhooks"][1]["secret_env"] == "PODIUM_TEST_SECRET (set)"
    assert shown["rules"][0]["metric"] == "avg_test_r2"


def test_the_shipped_example_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    example = Path(__file__).parents[1] / "config" / "watcher.yaml"
    assert cli.main(["check-config", "--config", str(example)]) == 0
    rules = yaml.safe_load(capsys.readouterr().out)["rules"]
    # the classifiers' rule first: the regression rule's pattern matches their experiments too
    assert [r["experiments"] for r in rules] == [
        ["wf_xgboost_*_dir_f*", "wf_xgboost_*_cls_f*"],
        ["wf_xgboost_*"],
    ]
    assert (rules[0]["metric"], rules[0]["selection"]["fold_metric"]) == ("avg_test_auc", "test_auc")


def test_as_a_process_bad_config_is_exit_2_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, with_rule(top_n=0))
    proc = run_watcher("--once", "--config", str(path))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{path}: rule #2 'wf-xgboost' (rules[1]): field 'top_n'" in proc.stderr


def test_a_selection_key_reads_with_its_defaults_and_without_it_there_is_none(tmp_path: Path) -> None:
    path = write(tmp_path, with_rule(selection={"max_pbo": 0.5}))
    first, second = load_settings(path).rules
    assert first.selection is None
    assert second.selection is not None
    assert (second.selection.fold_metric, second.selection.blocks, second.selection.alpha) == (
        "test_r2",
        8,
        0.1,
    )
    assert second.selection.max_pbo == 0.5


def test_environment_overrides_a_key_of_one_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`WATCHER_RULES__<i>__<KEY>` changes item i only; the rest of the file's list stays."""
    path = write(tmp_path, {"rules": [GOOD_RULE, {**GOOD_RULE, "name": "second"}]})
    monkeypatch.setenv("WATCHER_RULES__1__TOP_N", "5")
    monkeypatch.setenv("WATCHER_RULES__1__REGISTRY__MODEL_NAME", "wf-model")
    settings = load_settings(path)
    assert [r.top_n for r in settings.rules] == [10, 5]
    assert settings.rules[1].registry is not None
    assert settings.rules[1].registry.model_name == "wf-model"
    monkeypatch.setenv("WATCHER_RULES__7__TOP_N", "5")
    assert cli.main(["check-config", "--config", str(path)]) == 2
    assert "WATCHER_RULES__7__TOP_N: there is no rules[7]" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["check-config"], ["--once"]], ids=["check-config", "once"])
def test_an_empty_config_file_is_exit_2_unless_the_environment_gives_rules(
    tmp_path: Path, command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "")
    assert cli.main([*command, "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err]
    assert f"config file {path} has no rules" in err
    monkeypatch.setenv("WATCHER_RULES", json.dumps([GOOD_RULE]))
    assert [r.name for r in load_settings(path).rules] == ["wf-xgboost"]


@pytest.mark.parametrize(
    ("uri", "shown"),
    [("htp://127.0.0.1:5000", "'htp://127.0.0.1:5000'"), ("htp://me:s3cret@host/x", "'htp://me:***@host/x'")],
    ids=["scheme-typo", "password-hidden"],
)
def test_a_tracking_uri_mlflow_cannot_use_is_exit_2_with_one_line_naming_the_key(
    tmp_path: Path, uri: str, shown: str
) -> None:
    """A scheme MLflow does not know (a typo) is the user's config, not a failed pass: exit 2,
    one line naming the file and `tracking_uri`, no traceback and no password."""
    path = write(tmp_path, {"tracking_uri": uri, "http": {"enabled": False}, "rules": [GOOD_RULE]})
    proc = run_watcher("--once", "--config", str(path))
    assert (proc.returncode, "Traceback" in proc.stderr) == (2, False)
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"error: {path}: field 'tracking_uri': tracking URI {shown} cannot be used")
    assert "s3cret" not in proc.stderr


def test_the_cli_lowers_mlflow_client_retries_at_start_keeping_values_already_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's default (7 retries, minutes of back-off) would hold a pass for minutes while the
    server is down: ``python -m watcher`` sets its own at start, not at import, and a value the
    environment gives wins."""
    from watcher.mlflow_io import CLIENT_ENVIRONMENT

    for name in CLIENT_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert cli.main(["check-config", "--config", str(write(tmp_path, {"rules": [GOOD_RULE]}))]) == 0
    assert {name: os.environ[name] for name in CLIENT_ENVIRONMENT} == {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "7",
    }
