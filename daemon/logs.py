"""structlog setup: JSON lines on stdout (journald), human-readable on a terminal."""

from __future__ import annotations

import logging
import sys

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


def setup_logging(level: str = "info", json: bool | None = None) -> None:
    if json is None:
        json = not sys.stdout.isatty()
    renderer = structlog.processors.JSONRenderer() if json \
        else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "lbd") -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)
