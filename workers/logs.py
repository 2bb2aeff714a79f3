"""Log lines with fixed fields (source, delivery, job, host, unit, image, digest): text or JSON."""

from __future__ import annotations

import json
import logging
import logging.config
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from workers.settings import Settings

# Every line carries these keys in JSON (null when unknown), and the known ones in text.
FIELDS = ("source", "delivery", "job", "host", "unit", "image", "digest")

_context: ContextVar[Mapping[str, Any]] = ContextVar(
    "podhook_log_fields", default=MappingProxyType({})
)

# The attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}

# Webhook URLs may carry the endpoint's secret (/v1/webhooks/<name>/<secret>, ?token=...), and
# gunicorn's access log prints request lines whole.
_PATH_SECRET = re.compile(r"(/v1/webhooks/[^/\s?\"]+/)[^\s?\"]+")
_QUERY_SECRET = re.compile(r"([?&]token=)[^&\s\"]*")


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Give every line logged inside the block these fields, unless the line sets its own.

    Fields whose value is None are left out, so an inner block cannot erase an outer value.
    """
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields of a record: the block's context, overridden by what ``extra=`` passed."""
    fields = dict(_context.get())
    for key, value in vars(record).items():
        if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
            fields[key] = value
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the fixed fields, then other extras."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record``; values that JSON cannot hold are written as their ``str``."""
        fields = record_fields(record)
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in FIELDS:
            line[key] = fields.pop(key, None)
        line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...``, with the fixed fields that are known."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` and append its known fixed fields in their fixed order."""
        text = super().format(record)
        fields = record_fields(record)
        pairs = [f"{key}={_text_value(fields[key])}" for key in FIELDS if fields.get(key)]
        if not pairs:
            return text
        head, sep, rest = text.partition("\n")  # a traceback stays below the fields
        return f"{head} {' '.join(pairs)}{sep}{rest}"


def _text_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(c.isspace() or c == '"' for c in text) else text


class RedactSecrets(logging.Filter):
    """Replace webhook URL secrets (``/v1/webhooks/<name>/<secret>``, ``?token=``) with ``***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message in place when it holds a secret; never drops a record."""
        message = record.getMessage()
        redacted = _QUERY_SECRET.sub(r"\1***", _PATH_SECRET.sub(r"\1***", message))
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def logging_config(settings: Settings, *, verbose: bool = False) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` configuration for podhook and gunicorn.

    podhook's lines and gunicorn's error log go to stderr, gunicorn's access log to stdout,
    all in ``settings.log_format`` and with webhook URL secrets redacted.
    """
    formatter = JsonFormatter if settings.log_format == "json" else TextFormatter
    handler = {"class": "logging.StreamHandler", "formatter": "podhook", "filters": ["secrets"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"secrets": {"()": f"{__name__}.RedactSecrets"}},
        "formatters": {"podhook": {"()": f"{__name__}.{formatter.__name__}"}},
        "handlers": {
            "stderr": {**handler, "stream": "ext://sys.stderr"},
            "stdout": {**handler, "stream": "ext://sys.stdout"},
        },
        "root": {"level": "DEBUG" if verbose else "INFO", "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": ["stdout"], "propagate": False},
        },
    }


def setup_logging(settings: Settings, *, verbose: bool = False) -> None:
    """Send this process's log lines to stderr as text or JSON lines (``settings.log_format``).

    Replaces the handlers of the root logger; loggers created before keep working.
    """
    logging.config.dictConfig(logging_config(settings, verbose=verbose))
