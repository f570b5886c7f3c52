"""Errors the trainer turns into exit codes: InputError -> 2, TrainingError/TrackingError -> 1."""

from __future__ import annotations


class TrainerError(Exception):
    """Base class of the trainer's own errors."""


class InputError(TrainerError):
    """A user's mistake (bad option, config, file or column); the message says what to fix."""


class TrainingError(TrainerError):
    """Training failed for a reason that is not the user's input."""


class TrackingError(TrainerError):
    """An MLflow call failed; raised ``from`` the MLflow exception."""


def describe(e: BaseException) -> str:
    """``"TypeName: first line of the message"`` (the type name alone for an empty message)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
