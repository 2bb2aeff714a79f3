"""Notifications of job outcomes through apprise: one message per job, for the states asked for."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import apprise

if TYPE_CHECKING:
    from workers.settings import Settings

log = logging.getLogger("podhook.notify")

# Most apprise URLs hold their service's token; apprise prints URLs when it cannot parse one
# and in its debug lines, so its records lose every URL before any handler sees them.
_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*)://\S+")
# URL credentials that a reason might quote (a registry or proxy error echoing its URL).
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
MAX_REASON = 500

_STATE_TYPES = {
    "failed": apprise.NotifyType.FAILURE,
    "rolled_back": apprise.NotifyType.WARNING,
}


class _DropUrls(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _URL.sub(r"\1://***", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_apprise_log = logging.getLogger("apprise")
_apprise_log.addFilter(_DropUrls())
# Their debug lines print the request URLs, where notification services keep their tokens.
_apprise_log.setLevel(max(_apprise_log.getEffectiveLevel(), logging.WARNING))
_urllib3_log = logging.getLogger("urllib3")
_urllib3_log.setLevel(max(_urllib3_log.getEffectiveLevel(), logging.INFO))


def check_notify_urls(urls: Iterable[str]) -> None:
    """Raise SettingsError naming the position (never the URL) of a URL apprise cannot use."""
    from workers.settings import SettingsError

    for position, url in enumerate(urls, start=1):
        if apprise.Apprise.instantiate(url, suppress_exceptions=True) is None:
            scheme = url.partition("://")[0] if "://" in url else ""
            raise SettingsError(
                f"notify_urls: entry {position} (scheme {scheme!r}) is not a URL apprise can "
                "send to; see https://github.com/caronc/apprise/wiki"
            )


def notify_outcome(settings: Settings, report: dict[str, Any]) -> bool | None:
    """Send one message about a job's ``report`` to every URL of ``settings.notify_urls``.

    The message names the host, the pushed image and digest, the job, and for each container
    whose state is in ``settings.notify_on``: its unit, state, reason and old and new image
    ids. Returns None when there is nothing to send (no URL, or no row in those states), True
    when every service took it, False when one did not (logged at warning). Never raises for a
    notification that fails, and never puts a configured secret in the message.
    """
    rows = [row for row in report.get("containers", []) if row["state"] in settings.notify_on]
    if not settings.notify_urls or not rows:
        return None
    title, body = format_message(report, rows)
    body = _scrub(body, _secrets(settings))
    title = _scrub(title, _secrets(settings))
    notify_type = apprise.NotifyType.SUCCESS
    for state in ("rolled_back", "failed"):  # the worst state present sets the colour
        if any(row["state"] == state for row in rows):
            notify_type = _STATE_TYPES[state]
    sender = apprise.Apprise()
    for url in settings.notify_urls:
        sender.add(url)
    try:
        sent = bool(
            sender.notify(
                title=title,
                body=body,
                notify_type=notify_type,
                body_format=apprise.NotifyFormat.TEXT,
            )
        )
    except Exception as error:  # a notification never fails the job it reports on
        log.warning("notification of job %s failed: %s", report.get("job"), type(error).__name__)
        return False
    if not sent:
        log.warning(
            "notification of job %s failed for at least one of %d URLs",
            report.get("job"),
            len(settings.notify_urls),
        )
    return sent


def format_message(report: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[str, str]:
    """The title and plain-text body of the message about ``rows`` of ``report``.

    A push's job is named by its image and digest; a reconcile (``kind`` ``reconcile``, no
    push) by that word, each container then with its own image. Every row's reason is told:
    for a misconfigured container, Podman's words for what is wrong.
    """
    event = report.get("event") or {}
    host = report.get("host", "?")
    states = sorted({row["state"] for row in rows})
    if report.get("kind") == "reconcile" or not event:
        subject = "reconcile"
        lines = [f"host: {host}", "reconcile: every labeled container"]
    else:
        subject = f"{event.get('registry')}/{event.get('repository')}:{event.get('tag')}"
        lines = [
            f"host: {host}",
            f"image: {subject}",
            f"digest: {event.get('digest') or '(not given by the sender)'}",
        ]
    title = f"podhook: {subject} on {host}: {', '.join(states)}"
    lines.append(f"job: {report.get('job') or '-'}")
    for row in rows:
        lines += [
            "",
            f"container: {row['container_name']}",
            f"unit: {row.get('unit') or '-'}",
        ]
        if subject == "reconcile":
            lines.append(f"image: {row.get('image') or '-'}")
        lines += [
            f"state: {row['state']}",
            f"reason: {_shorten(row.get('reason') or '-')}",
            f"old image: {row.get('old_image') or '-'}",
            f"new image: {row.get('new_image') or '-'}",
        ]
    return title, "\n".join(lines)


def _shorten(reason: str) -> str:
    reason = _USERINFO.sub(r"\1***@", reason)
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 1] + "…"


def _secrets(settings: Settings) -> list[str]:
    found = [settings.webhook_token, settings.admin_token]
    found += [
        table.get("secret") for table in settings.endpoints.values() if isinstance(table, Mapping)
    ]
    return [secret for secret in found if secret and len(secret) >= 4]


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
