"""Logging: structlog over the standard library.

``get_logger(name)`` works before and without ``configure_logging``: each logger
carries its own small processor chain and hands a plain stdlib record (message +
``extra`` fields) to ``logging``, so a program embedding fastping keeps control of
its own logging and fastping never prints to stdout on its own.

``configure_logging(...)`` is what the ``fastping`` command calls: JSON lines to a
rotating file (10 MB x 5 by default) and readable console output on stderr, for
fastping's records and for every other library's (asyncio, pyroute2). Calling it
again replaces the handlers it added before instead of adding more.

Levels, as the spec asks: INFO for state changes, WARNING for timeout bursts and
high latency, ERROR for permission and socket failures and for lost results.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import structlog

from .errors import ConfigError

LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS: tuple[str, ...] = ("console", "json")

# Marks the handlers configure_logging() added, so a second call replaces them.
_OURS = "_fastping_handler"

# LogRecord attributes: an event key with one of these names would make
# logging.makeRecord raise ("Attempt to overwrite 'name' in LogRecord").
_RESERVED = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
) - {"exc_info", "stack_info"}  # these two render_to_log_kwargs passes on as arguments


def _escape_reserved(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for k in [k for k in event_dict if k in _RESERVED]:
        event_dict[f"{k}_"] = event_dict.pop(k)
    return event_dict


# Runs in the caller for each log call that passes the level filter; the rendering
# happens in the handlers (ProcessorFormatter), once per handler.
_CALL_CHAIN: list[Any] = [
    structlog.stdlib.filter_by_level,
    structlog.contextvars.merge_contextvars,
    _escape_reserved,
    structlog.stdlib.render_to_log_kwargs,
]


def get_logger(name: str = "fastping") -> structlog.stdlib.BoundLogger:
    """A structlog logger writing through ``logging.getLogger(name)``:
    ``log.info("target down", target=t, loss=0.5)``."""
    return structlog.wrap_logger(  # type: ignore[no-any-return]
        logging.getLogger(name),
        processors=list(_CALL_CHAIN),
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
    )


def _pre_chain() -> list[Any]:
    # Applied to every record (structlog's and foreign ones) before rendering.
    return [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _json_formatter() -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_pre_chain(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # traceback as one string field
            structlog.processors.JSONRenderer(default=str),
        ],
    )


def _console_formatter(colors: bool) -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_pre_chain(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.dev.ConsoleRenderer(colors=colors, sort_keys=False),
        ],
    )


def configure_logging(
    level: str = "INFO",
    file: str | Path | None = None,
    max_bytes: int = 10_000_000,
    backup_count: int = 5,
    console: bool = True,
    fmt: str = "console",
) -> None:
    """Send logs to ``file`` (JSON lines, rotated at ``max_bytes``, ``backup_count``
    old files kept) and, when ``console``, to stderr (``fmt`` "console": readable
    lines, coloured on a terminal; "json": the same JSON lines as the file).
    ``level`` applies to fastping's loggers; other libraries log at WARNING and up.
    Idempotent: a second call replaces the handlers of the first."""
    lvl = str(level).upper()
    if lvl not in LEVELS:
        raise ConfigError(f"logging.level: {level!r} is not allowed: must be one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ConfigError(f"logging.format: {fmt!r} is not allowed: must be one of {', '.join(FORMATS)}")
    if max_bytes < 0:
        raise ConfigError(f"logging.max_bytes: {max_bytes!r} is not allowed: must be >= 0")
    if backup_count < 0:
        raise ConfigError(f"logging.backup_count: {backup_count!r} is not allowed: must be >= 0")

    handlers: list[logging.Handler] = []
    if file is not None:
        try:
            fh: logging.Handler = logging.handlers.RotatingFileHandler(
                file, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8"
            )
        except OSError as e:
            raise ConfigError(
                f"logging.file: cannot open {str(file)!r} for writing: {e.strerror or e}; "
                "choose a writable path"
            ) from None
        fh.setFormatter(_json_formatter())
        handlers.append(fh)
    if console:
        ch = logging.StreamHandler(sys.stderr)
        is_tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
        ch.setFormatter(_json_formatter() if fmt == "json" else _console_formatter(is_tty))
        handlers.append(ch)

    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(h)
        h.close()
    for h in handlers:
        setattr(h, _OURS, True)
        root.addHandler(h)
    logging.getLogger("fastping").setLevel(lvl)
    # Code that calls structlog.get_logger() directly goes the same way.
    structlog.configure(
        processors=list(_CALL_CHAIN),
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )


__all__ = ["FORMATS", "LEVELS", "configure_logging", "get_logger"]
