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
from urllib.parse import unquote, unquote_plus

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
# gunicorn's access log prints request lines whole, as the client sent them: percent-encoded
# (dockerhub%2F<secret>, ?%74oken=), with doubled slashes. Every word of a line that could be
# a URL is decoded and normalized as the app would route it before it is looked at.
_WORD = re.compile(r"[^\s\"'<>]+")
_WEBHOOK_PATH = re.compile(r"/webhooks/[^/]*(?P<secret>/.*)$", re.IGNORECASE)
_SECRET_PARAMS = ("token", "secret")
# Characters that would break a text line or a terminal, and lone surrogates, which no UTF-8
# stream can write: each is shown as an escape (\x1b, \u2028, \udc80).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# What JSON leaves unescaped in ensure_ascii=False output of those.
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def escape_unsafe(text: str) -> str:
    """``text`` with control characters, line separators and lone surrogates escaped."""
    return _UNSAFE.sub(_escape_char, text)


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _decoded(text: str, plus: bool = False) -> str:
    # Decoded until it no longer changes (a few rounds): %252F is still a slash to someone.
    unquote_once = unquote_plus if plus else unquote
    for _ in range(4):
        decoded = unquote_once(text)
        if decoded == text:
            break
        text = decoded
    return text


def redact_url(word: str) -> str | None:
    """``word`` as a decoded, normalized URL with its webhook secrets replaced by ``***``.

    None when it holds none: a path under ``/webhooks/<name>/`` (any case, however encoded,
    slashes doubled or not) loses what follows the name, and a query parameter whose decoded
    name is ``token`` or ``secret`` loses its value.
    """
    if "/" not in word and "%" not in word and "?" not in word:
        return None
    path, mark, query = word.partition("?")
    path = re.sub(r"/{2,}", "/", _decoded(path).replace("\\", "/"))
    redacted = False
    found = _WEBHOOK_PATH.search(path)
    if found:
        path = path[: found.start("secret")] + "/***"
        redacted = True
    params = []
    for param in re.split(r"[&;]", query) if mark else []:
        name, equals, _ = param.partition("=")
        if equals and _decoded(name, plus=True).strip().lower() in _SECRET_PARAMS:
            params.append(f"{_decoded(name, plus=True).strip()}=***")
            redacted = True
        else:
            params.append(param)
    if not redacted:
        return None
    return path + (mark + "&".join(params) if mark else "")


def redact_secrets(text: str) -> str:
    """``text`` with every word that is a URL holding a webhook secret redacted (redact_url)."""
    return _WORD.sub(lambda m: redact_url(m.group()) or m.group(), text)


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
        text = json.dumps(line, default=str, ensure_ascii=False)
        # Inside JSON strings only, so escaping them keeps the line valid JSON.
        return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...``, with the fixed fields that are known."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        """The line's head, its message's control characters escaped (no forged lines)."""
        record.message = escape_unsafe(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802 (logging's name)
        """The traceback, each of its lines escaped as a message is."""
        return "\n".join(escape_unsafe(line) for line in super().formatException(ei).split("\n"))

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` and append its known fixed fields in their fixed order."""
        text = super().format(record)
        fields = record_fields(record)
        pairs = [f"{key}={_text_value(fields[key])}" for key in FIELDS if fields.get(key)]
        if not pairs:
            return text
        head, sep, rest = text.partition("\n")  # a traceback stays below the fields
        return f"{head} {' '.join(pairs)}{sep}{rest}"


# Whitespace or a quote make a text log value need quoting, as does anything isprintable()
# rejects (control characters, line separators, lone surrogates). Both checks run in C.
_SPACE_OR_QUOTE = re.compile(r'[\s"]')


def _text_value(value: Any) -> str:
    text = str(value)
    if not text or not text.isprintable() or _SPACE_OR_QUOTE.search(text):
        # Quoted and escaped: a value cannot end the line or forge another field.
        return escape_unsafe(json.dumps(text, ensure_ascii=False))
    return text


class RedactSecrets(logging.Filter):
    """Replace webhook URL secrets (``/v1/webhooks/<name>/<secret>``, ``?token=``) with ``***``.

    However the URL was encoded: see ``redact_url``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message in place when it holds a secret; never drops a record."""
        message = record.getMessage()
        redacted = redact_secrets(message)
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
