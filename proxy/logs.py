"""Logging set-up: one handler on stderr, plain text or one JSON object per line, re-applied whole on reload.

Text is ``2026-01-02 03:04:05,678 INFO proxy.app: message`` as it always was. JSON is one object per line with
``time`` (RFC 3339, UTC), ``level``, ``logger`` and ``message``, followed by the fields a line carries (an access
line's, the start-up line's, ``exc_info`` for a traceback): python-json-logger's formatter, configured here.

The access log (``proxy.access``) is written at INFO whatever ``[log] level`` says: turning it on with ``access =
true`` is the operator's request for those lines, as nginx's access_log is independent of its error_log level.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

from proxy.config import LogSettings

__all__ = ["ACCESS_LOGGER", "TEXT_FORMAT", "access_stream", "configure_logging", "json_formatter"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_LOGGER = "proxy.access"  # the access log's logger (proxy.access_log)


class _Handler(logging.StreamHandler[TextIO]):
    """The handler this module installs (told apart from others, such as pytest's, when it is replaced)."""


# The handler `configure_logging` installed last: the access log writes its lines to its stream directly.
_installed: list[_Handler] = []


def access_stream() -> TextIO | None:
    """The stream the installed handler writes to, where access lines go (None before `configure_logging`)."""
    return _installed[0].stream if _installed else None


def json_formatter() -> logging.Formatter:
    """``{"time": ..., "level": ..., "logger": ..., "message": ..., <the record's extra fields>}``, one per line."""
    return JsonFormatter(
        "%(time)s %(levelname)s %(name)s %(message)s",  # "time" named first only to come first: `timestamp` fills it
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",  # from the record's creation time, in UTC, as datetime.isoformat() writes it
        json_ensure_ascii=False,
    )


def configure_logging(settings: LogSettings, level_override: str | None = None, stream: TextIO | None = None) -> None:
    """Route the process's logs to `stream` (default: stderr) as `settings` say; `level_override` (the CLI's
    ``--log-level``) wins over ``settings.level``. Called again on reload: the handler is replaced whole, so a line
    is written in one format or the other, never half."""
    root = logging.getLogger()
    handler = _Handler(sys.stderr if stream is None else stream)
    handler.setFormatter(json_formatter() if settings.format == "json" else logging.Formatter(TEXT_FORMAT))
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    _installed[:] = [handler]
    root.setLevel((level_override or settings.level).upper())
    logging.captureWarnings(True)  # Python's warnings as log lines too (JSON ones, in that format), not bare text
    # The access lines are asked for by `access` alone; with it off, the logger is silent whatever the level.
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO if settings.access else logging.CRITICAL + 1)
