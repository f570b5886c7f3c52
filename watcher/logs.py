"""structlog set-up: JSON lines when not on a terminal (containers), console on a TTY."""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

LogFormat = Literal["json", "console"]


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
        shared += [structlog.processors.dict_tracebacks]
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
    # Libraries (apscheduler, mlflow, uvicorn) log through stdlib logging: same stream,
    # warnings and up only, so their lines do not drown the watcher's own events.
    logging.basicConfig(
        stream=out, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True
    )
    return fmt
