"""Structured logging for every process: key-value events, JSON when not on a terminal.

Context (request id, user, message id, task id) is bound with structlog's contextvars at the
edges (a request, a task) and cleared when that edge ends.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: int = logging.INFO) -> None:
    on_terminal = sys.stderr.isatty()
    renderer = structlog.dev.ConsoleRenderer(colors=False) if on_terminal else structlog.processors.JSONRenderer()
    # In JSON, an exception's traceback goes into the line as text (the console renderer prints it).
    exceptions = [] if on_terminal else [structlog.processors.format_exc_info]
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *exceptions, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
