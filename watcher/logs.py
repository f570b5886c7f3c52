"""structlog set-up: JSON lines when not on a terminal (containers), console on a TTY."""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

LogFormat = Literal["json", "console"]


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def _current_stderr_logger(*args: object) -> structlog.PrintLogger:
    return structlog.PrintLogger(sys.stderr)


def configure(log_format: LogFormat | None = None, stream: TextIO | None = None) -> LogFormat:
    """Configure structlog (and stdlib logging of libraries) for the watcher's process."""
    out = stream if stream is not None else sys.stderr
    fmt: LogFormat = log_format or ("console" if out.isatty() else "json")
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if fmt == "json":
        # Tracebacks as data, without local variables: they could hold URLs or secrets.
        shared += [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        ]
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        # Without an explicit stream, look sys.stderr up at each call: it may be replaced
        # (pytest's capture, a daemon's redirection) after configuration.
        logger_factory=(
            structlog.PrintLoggerFactory(stream) if stream is not None else _current_stderr_logger
        ),
        cache_logger_on_first_use=False,
    )
    # Libraries (apscheduler, mlflow, uvicorn) log through stdlib logging: rendered the same
    # way (one JSON object per line in a container), warnings and up only.
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    return fmt
