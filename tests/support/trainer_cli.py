"""Running `python -m trainer train` in a test, and what a test checks after it: the experiment's
runs, or after a refusal one error line and no store."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import mlflow
import structlog

from trainer import cli


def error_line(err: str) -> str:
    """The single error message (log lines about loading data may precede it)."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:") or ": error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def store_untouched(sqlite_uri: str) -> bool:
    """No MLflow call made the sqlite store's file, so no run exists."""
    return not Path(sqlite_uri.removeprefix("sqlite:///")).exists()


def train(argv: list[str]) -> str:
    """`python -m trainer train ARGV` in this process; asserts exit 0 and returns what it printed."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = cli.main(["train", *argv])
    finally:
        structlog.reset_defaults()  # the command configured logging for a terminal
    assert code == 0, out.getvalue()
    return out.getvalue()


def experiment_runs(uri: str, prefix: str) -> tuple[str, list[mlflow.entities.Run]]:
    """The name and runs of the one experiment whose name starts with ``prefix``."""
    client = mlflow.MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name.startswith(prefix)]
    return experiment.name, client.search_runs([experiment.experiment_id])
