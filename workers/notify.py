"""Notifications through apprise: one message per job, for the states asked for, and one per
step of a rollout."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence

import apprise

from workers.apprise_client import new_sender
from workers.report import ContainerReport, JobReport, UpdateState
from workers.rollout_state import Rollout, Step
from workers.settings import Settings

log = logging.getLogger("podhook.notify")

# URL credentials that a reason might quote (a registry or proxy error echoing its URL).
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
MAX_REASON = 500

_STATE_TYPES = {
    "failed": apprise.NotifyType.FAILURE,
    "rolled_back": apprise.NotifyType.WARNING,
}


def notify_outcome(settings: Settings, report: JobReport) -> bool | None:
    """Send one message about a job's ``report`` to every URL of ``settings.notify_urls``.

    The message names the host, the pushed image and digest, the job, and for each container
    whose state is in ``settings.notify_on``: its unit, state, reason and old and new image
    ids; a report whose job could not list the containers is one ``failed`` row for all of
    them. Returns None when there is nothing to send (no URL, or no row in those states), True
    when every service took it, False when one did not (logged at warning). Never raises for a
    notification that fails, and never puts a configured secret in the message.
    """
    rows = [row for row in _told_rows(report) if row.state.value in settings.notify_on]
    if not settings.notify_urls or not rows:
        return None
    title, body = format_message(report, rows)
    body = _scrub(body, _secrets(settings))
    title = _scrub(title, _secrets(settings))
    notify_type = apprise.NotifyType.SUCCESS
    for state in ("rolled_back", "failed"):  # the worst state present sets the colour
        if any(row.state.value == state for row in rows):
            notify_type = _STATE_TYPES[state]
    sender = new_sender(settings.notify_urls)
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
        log.warning("notification of job %s failed: %s", report.job, type(error).__name__)
        return False
    if not sent:
        log.warning(
            "notification of job %s failed for at least one of %d URLs",
            report.job,
            len(settings.notify_urls),
        )
    return sent


def _told_rows(report: JobReport) -> list[ContainerReport]:
    """The report's rows, and for a job that could not list the containers, one failed row
    standing for all of them."""
    rows = list(report.rows)
    if report.error is not None:
        rows.append(
            ContainerReport(
                container_id="",
                container_name="(every container of this host)",
                unit=None,
                image="",
                policy="",
                state=UpdateState.FAILED,
                reason=f"cannot reach Podman or systemd: {report.error}",
            )
        )
    return rows


def format_message(report: JobReport, rows: Sequence[ContainerReport]) -> tuple[str, str]:
    """The title and plain-text body of the message about ``rows`` of ``report``.

    A push's job is named by its image and digest; a reconcile (no push) by that word, each
    container then with its own image. Every row's reason is told: for a misconfigured
    container, Podman's words for what is wrong.
    """
    event = report.event
    host = report.host or "?"
    states = sorted({row.state.value for row in rows})
    if report.kind == "reconcile" or event is None:
        subject = "reconcile"
        lines = [f"host: {host}", "reconcile: every labeled container"]
    else:
        subject = event.reference
        lines = [
            f"host: {host}",
            f"image: {subject}",
            f"digest: {event.digest or '(not given by the sender)'}",
        ]
    title = f"podhook: {subject} on {host}: {', '.join(states)}"
    lines.append(f"job: {report.job or '-'}")
    for row in rows:
        lines += [
            "",
            f"container: {row.container_name}",
            f"unit: {row.unit or '-'}",
        ]
        if subject == "reconcile":
            lines.append(f"image: {row.image or '-'}")
        lines += [
            f"state: {row.state.value}",
            f"reason: {_shorten(row.reason or '-')}",
            f"old image: {row.old_image or '-'}",
            f"new image: {row.new_image or '-'}",
        ]
    return title, "\n".join(lines)


def notify_rollout(settings: Settings, rollout: Rollout, steps: Sequence[Step]) -> bool | None:
    """Send one message about the latest ``steps`` of ``rollout`` (a wave started or soaking,
    the rollout halted, done, aborted, superseded) to every URL of ``settings.notify_urls``.

    The message names the image and digest, the rollout's state and the failing check when it
    halted, each wave with its hosts and their states, and links to the status page when
    ``status_url`` is set. Returns None without URLs, else whether every service took it;
    never raises, and never puts a configured secret in the message.
    """
    if not settings.notify_urls or not steps:
        return None
    title, body = format_rollout_message(rollout, steps, settings.status_url)
    secrets = _secrets(settings)
    halted = rollout.state.value in ("halted", "aborted")
    sender = new_sender(settings.notify_urls)
    try:
        sent = bool(
            sender.notify(
                title=_scrub(title, secrets),
                body=_scrub(body, secrets),
                notify_type=apprise.NotifyType.FAILURE if halted else apprise.NotifyType.INFO,
                body_format=apprise.NotifyFormat.TEXT,
            )
        )
    except Exception as error:  # a notification never fails the rollout it reports on
        log.warning("notification of rollout %s failed: %s", rollout.id, type(error).__name__)
        return False
    if not sent:
        log.warning("notification of rollout %s failed for at least one URL", rollout.id)
    return sent


def format_rollout_message(
    rollout: Rollout, steps: Sequence[Step], status_url: str | None = None
) -> tuple[str, str]:
    """The title and plain-text body of the message about ``steps`` of ``rollout``."""
    title = f"podhook: rollout of {rollout.reference}: {steps[-1].text}"
    lines = [
        f"image: {rollout.reference}",
        f"digest: {rollout.digest}",
        f"rollout: {rollout.id} ({rollout.state.value})",
    ]
    if rollout.reason:
        lines.append(f"reason: {_shorten(rollout.reason)}")
    lines += ["", *(f"- {step.text}" for step in steps)]
    for number, wave in enumerate(rollout.waves, start=1):
        lines += ["", f"wave {number} {wave.name} ({wave.selector}): {wave.state()}"]
        for host, record in sorted(wave.hosts.items()):
            reason = f": {_shorten(record.reason)}" if record.reason else ""
            lines.append(f"  {host}: {record.state.value}{reason}")
    if status_url:
        lines += ["", f"status: {status_url.rstrip('/')}/#rollout-{rollout.id}"]
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
