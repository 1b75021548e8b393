"""No credential (nor a value a database error quotes) in gunicorn's or the gateway's logs: every log record is masked
before any handler writes it.

Gunicorn itself quotes the request URI when a response fails mid-stream ("Error handling request /t/<token>/...");
an exception's text may quote a header. ``mask`` replaces what a credential can look like in such text: a
``/t/{token}`` path segment, a ``token=`` parameter, ``Bearer``/``Basic`` values and the token cookie. A database
error's ``DETAIL`` line is masked too: PostgreSQL quotes the values of the row it refused there ("Failing row
contains (...)", "Key (...)=(...)"), a file's patient's name and ID, which the catalog's ``hide_parameters`` does
not reach (it hides only the bound parameters SQLAlchemy adds). Gunicorn
loads ``GunicornLogger`` (``--logger-class``; docker/gunicorn.conf.py), which also routes the ``gateway`` loggers
through its masked handlers.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from gunicorn.glogging import Logger

_PATTERNS = (
    (re.compile(r"/t/[^/\s?#\"']+"), "/t/***"),
    (re.compile(r"(?i)(token=)[^&\s;\"']*"), r"\1***"),
    (re.compile(r"(?i)\b(bearer|basic)(\s+|%20|\+)[^\s,;\"']+"), r"\1 ***"),
    (re.compile(r"(?m)^(DETAIL:\s*).*$"), r"\1***"),
)


def mask(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class MaskingFilter(logging.Filter):
    """Rewrites the record's message (and its traceback text) in place; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = mask(logging.Formatter().formatException(record.exc_info))
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        return True


def install(handlers: list[logging.Handler]) -> None:
    for handler in handlers:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())


class GunicornLogger(Logger):
    """Gunicorn's logger with every handler masked; the gateway's own loggers write through the same handlers
    (without this they would reach stderr through logging's last-resort handler, unmasked)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        install(self.error_log.handlers + self.access_log.handlers)
        gateway = logging.getLogger("gateway")
        gateway.handlers = list(self.error_log.handlers)
        gateway.setLevel(self.error_log.level)
        gateway.propagate = False
