"""A container's own update policy, from labels next to ``io.containers.autoupdate``:

- ``io.podhook.window``: when its unit may restart, e.g. ``Mon-Fri 02:00-05:00 Europe/Berlin``
  (days optional, every day when absent; an end before the start crosses midnight; several
  windows separated by ``;``; the time zone optional, UTC when absent);
- ``io.podhook.min-age``: how long podhook must have known an image before it runs it
  (``90m``, ``24h``, ``7d``, ``1h30m``, or seconds);
- ``io.podhook.approval``: ``required`` for an update to wait until someone approves it.

Pure: parsing and time arithmetic only (docs/rollouts.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WINDOW_LABEL = "io.podhook.window"
MIN_AGE_LABEL = "io.podhook.min-age"
APPROVAL_LABEL = "io.podhook.approval"

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_HOURS = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


class LabelError(ValueError):
    """Raised for an update policy label that cannot be read; the message names the label."""


@dataclass(frozen=True)
class Window:
    """Weekly opening hours in one time zone: on ``days`` (0 = Monday), from ``start`` to
    ``end`` in local wall-clock time, ending on the next day when ``overnight`` (an end at or
    before the start, or 24:00). Ends are wall-clock times, so a day that changes to or from
    daylight saving time keeps its hours."""

    days: frozenset[int]
    start: time
    end: time
    overnight: bool
    zone: ZoneInfo

    def opening(self, now: float) -> tuple[float, float] | None:
        """The (start, end) Unix times of the opening that contains ``now``, else None."""
        for start, end in self._openings_around(now):
            if start <= now < end:
                return start, end
        return None

    def next_start(self, now: float) -> float:
        """The first opening that starts after ``now`` (Unix time)."""
        return min(start for start, _ in self._openings_around(now) if start > now)

    def _openings_around(self, now: float) -> list[tuple[float, float]]:
        today = datetime.fromtimestamp(now, self.zone).date()
        openings = []
        for offset in range(-1, 9):
            day = today + timedelta(days=offset)
            if day.weekday() in self.days:
                start = datetime.combine(day, self.start, tzinfo=self.zone)
                last = day + timedelta(days=1) if self.overnight else day
                end = datetime.combine(last, self.end, tzinfo=self.zone)
                openings.append((start.timestamp(), end.timestamp()))
        return openings


@dataclass(frozen=True)
class MaintenanceWindows:
    """The windows of one ``io.podhook.window`` label; ``text`` as written."""

    windows: tuple[Window, ...]
    text: str

    def next_opening(self, now: float) -> float | None:
        """None when an update may run at ``now``; else when the next window opens."""
        if any(w.opening(now) is not None for w in self.windows):
            return None
        return min(w.next_start(now) for w in self.windows)


def parse_window(text: str) -> MaintenanceWindows:
    """Read an ``io.podhook.window`` label. Raises LabelError saying what is wrong."""
    windows = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        windows.append(_parse_one_window(part))
    if not windows:
        raise LabelError(f"label {WINDOW_LABEL}: empty; expected e.g. 'Mon-Fri 02:00-05:00 UTC'")
    return MaintenanceWindows(tuple(windows), text.strip())


def _parse_one_window(text: str) -> Window:
    words = text.split()
    zone = ZoneInfo("UTC")
    days = frozenset(range(7))
    hours_at = next((i for i, w in enumerate(words) if _HOURS.match(w)), None)
    if hours_at is None or hours_at > 1 or len(words) > hours_at + 2:
        raise LabelError(
            f"label {WINDOW_LABEL}: {text!r} is not '[days] HH:MM-HH:MM [time zone]', "
            "e.g. 'Mon-Fri 02:00-05:00 Europe/Berlin'"
        )
    if hours_at == 1:
        days = _parse_days(words[0])
    if len(words) == hours_at + 2:
        try:
            zone = ZoneInfo(words[-1])
        except (ZoneInfoNotFoundError, ValueError):
            raise LabelError(f"label {WINDOW_LABEL}: unknown time zone {words[-1]!r}") from None
    match = _HOURS.match(words[hours_at])
    assert match is not None
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2):
        raise LabelError(f"label {WINDOW_LABEL}: {words[hours_at]!r} is not a time range")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    overnight = end <= start or h2 == 24
    return Window(days, time(h1, m1), time(h2 % 24, m2), overnight, zone)


def _parse_days(text: str) -> frozenset[int]:
    if text.lower() in ("daily", "*"):
        return frozenset(range(7))
    days: set[int] = set()
    for item in text.lower().split(","):
        first, _, last = item.partition("-")
        if first[:3] not in DAYS or (last and last[:3] not in DAYS):
            raise LabelError(
                f"label {WINDOW_LABEL}: {text!r} is not a list of days such as 'Mon-Fri' or "
                "'Sat,Sun'"
            )
        a = DAYS.index(first[:3])
        b = DAYS.index(last[:3]) if last else a
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(days)


def parse_duration(text: str, label: str = MIN_AGE_LABEL) -> float:
    """``90m``, ``24h``, ``7d``, ``1h30m`` or a number of seconds, in seconds. Raises
    LabelError naming ``label``."""
    text = text.strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise LabelError(
                f"label {label}: {text!r} is not a duration such as '90m', '24h' or '7d'"
            ) from None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not 0 <= seconds <= 365 * 86400:
        raise LabelError(f"label {label}: {text!r} must be between 0 and 365 days")
    return seconds


@dataclass(frozen=True)
class UpdatePolicy:
    """What a container's labels ask of its updates (None/False: nothing asked)."""

    window: MaintenanceWindows | None = None
    min_age: float | None = None
    approval: bool = False

    @property
    def asks_anything(self) -> bool:
        """Whether any update of the container may have to wait."""
        return self.window is not None or bool(self.min_age) or self.approval


def read_policy(labels: Mapping[str, str]) -> UpdatePolicy:
    """The update policy of a container with ``labels``. Raises LabelError for a label that
    cannot be read (the container is then a configuration error, as a bad autoupdate policy
    is)."""
    window = labels.get(WINDOW_LABEL)
    min_age = labels.get(MIN_AGE_LABEL)
    approval = (labels.get(APPROVAL_LABEL) or "").strip().lower()
    if approval not in ("", "required", "none"):
        raise LabelError(f"label {APPROVAL_LABEL}: {approval!r} is not 'required' or 'none'")
    return UpdatePolicy(
        window=parse_window(window) if window else None,
        min_age=parse_duration(min_age) if min_age else None,
        approval=approval == "required",
    )


def format_time(moment: float, zone: str | None = None) -> str:
    """A Unix time as ``2026-12-02 03:00:00 UTC`` (or in ``zone``)."""
    tz = ZoneInfo(zone or "UTC")
    return datetime.fromtimestamp(moment, tz).strftime("%Y-%m-%d %H:%M:%S %Z")
