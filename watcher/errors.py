"""The watcher's own exceptions; the rest of the code never sees MLflow's types."""

from __future__ import annotations


class WatcherError(Exception):
    """Base class of every error the watcher raises on purpose."""


class ConfigError(WatcherError):
    """The config file or the environment is wrong; the CLI exits 2 with this message.

    The message names the file, the rule (index and name) or key, and what to fix.
    """


class TrackingError(WatcherError):
    """A call to the MLflow tracking server failed (raised ``from`` MLflow's exception)."""


class TrackingNotFound(TrackingError):
    """MLflow answered that what a call names (experiment, run, tag, registered model, model
    version, alias) does not exist or is deleted."""


class ExperimentNotFound(WatcherError):
    """No active experiment has the given name."""


class ExperimentGone(ExperimentNotFound):
    """The experiment was deleted while its plan was written: the rest of the plan is skipped."""


class NoRankedRuns(WatcherError):
    """The experiment has no FINISHED run with a finite value of the metric."""
