"""Logging setup for the app and the CLI: one line per record, user values shortened.

A 1 MB prompt, path or recipe sent to the app must not be echoed whole into the server log
(lines over 100 kB were seen): every string argument of a record is cut to `MAX_VALUE_CHARS`,
the formatted message to `MAX_MESSAGE_CHARS`, and each line of a traceback likewise.
"""

from __future__ import annotations

import logging

MAX_VALUE_CHARS = 200
MAX_MESSAGE_CHARS = 4000
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _short_arg(value):
    if isinstance(value, str):
        return _cut(value, MAX_VALUE_CHARS)
    if isinstance(value, bytes):
        return _cut(repr(value), MAX_VALUE_CHARS)
    return value


class ShortenValues(logging.Filter):
    """Shortens long values in every record that passes the handler it is attached to."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_short_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _short_arg(v) for k, v in record.args.items()}
        message = record.getMessage()
        if len(message) > MAX_MESSAGE_CHARS:
            record.msg, record.args = _cut(message, MAX_MESSAGE_CHARS), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and len(record.exc_text) > MAX_MESSAGE_CHARS:
            record.exc_text = "\n".join(_cut(line, MAX_MESSAGE_CHARS // 4) for line in record.exc_text.splitlines())
        return True


def setup_logging(level: int = logging.INFO) -> None:
    """basicConfig with `FORMAT`, and `ShortenValues` on every root handler."""
    logging.basicConfig(level=level, format=FORMAT)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, ShortenValues) for f in handler.filters):
            handler.addFilter(ShortenValues())
