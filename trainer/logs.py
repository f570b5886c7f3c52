"""Logging set-up shared by the command line and the worker processes (structlog to stderr)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def _stderr_logger(*args: Any) -> structlog.PrintLogger:
    # looked up per logger, so a replaced sys.stderr (tests, redirection) is honoured
    return structlog.PrintLogger(sys.stderr)


def configure_logging(level: int = logging.INFO) -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,  # e.g. the data file being read
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
