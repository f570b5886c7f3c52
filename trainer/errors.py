"""Errors the trainer turns into exit codes: InputError -> 2, TrainingError/TrackingError -> 1."""

from __future__ import annotations


class TrainerError(Exception):
    """Base class of the trainer's own errors."""


class InputError(TrainerError):
    """A user's mistake (bad option, config, file or column); the message says what to fix."""


class DataError(InputError):
    """A problem in a data file, raised where the file's name is not known. ``subject`` is what
    is wrong (``"time column 'ts'"``; None for the file as a whole); ``in_file`` words the
    message that names the file, once, where it is known."""

    def __init__(self, problem: str, subject: str | None = None) -> None:
        super().__init__(f"{subject} {problem}" if subject else problem)
        self.problem = problem
        self.subject = subject

    def in_file(self, name: str) -> InputError:
        """``"{subject} in NAME {problem}"``, or ``"data file NAME {problem}"`` (a problem that
        starts with a colon follows the name directly)."""
        if self.subject:
            return InputError(f"{self.subject} in {name} {self.problem}")
        gap = "" if self.problem.startswith(":") else " "
        return InputError(f"data file {name}{gap}{self.problem}")


class TrainingError(TrainerError):
    """Training failed for a reason that is not the user's input."""


class TrackingError(TrainerError):
    """An MLflow call failed; raised ``from`` the MLflow exception."""


def describe(e: BaseException) -> str:
    """``"TypeName: first line of the message"`` (the type name alone for an empty message)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
