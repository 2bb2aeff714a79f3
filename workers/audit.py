"""The audit trail: each delivery and each job outcome, in a capped Redis stream."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from redis import Redis

AUDIT_STREAM = "podhook:audit"
# A hard cap on top of the time-based trim, so a flood of deliveries cannot fill Redis.
AUDIT_MAX_ENTRIES = 100_000
_PAGE = 500


@dataclass(frozen=True)
class AuditEntry:
    """One step of a push's story: a ``delivery`` received or a job ``outcome``."""

    id: str
    time: float
    kind: str
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"id": self.id, "time": self.time, "kind": self.kind, **self.data}


def append(pipe: Any, kind: str, data: dict[str, Any], retention_seconds: int) -> None:
    """Queue on pipeline ``pipe`` the append of an entry and the trim of entries older than
    ``retention_seconds`` (two commands; the first one's reply is the entry's id)."""
    oldest_ms = int((time.time() - retention_seconds) * 1000)
    pipe.xadd(
        AUDIT_STREAM,
        {"kind": kind, "data": json.dumps(data, separators=(",", ":"))},
        minid=oldest_ms,
        approximate=True,
    )
    pipe.xtrim(AUDIT_STREAM, maxlen=AUDIT_MAX_ENTRIES, approximate=True)


def record(redis: Redis, kind: str, data: dict[str, Any], retention_seconds: int) -> str:
    """Append an entry, trimming entries older than ``retention_seconds``. Returns its id."""
    pipe = redis.pipeline(transaction=False)  # one round trip for both
    append(pipe, kind, data, retention_seconds)
    entry_id = pipe.execute()[0]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def read(
    redis: Redis,
    *,
    since: float | None = None,
    kind: str | None = None,
    limit: int = 200,
) -> list[AuditEntry]:
    """Entries newest first, at most ``limit``, optionally only of one kind or after ``since``.

    Reads the stream in pages, so a short answer never loads the whole trail.
    """
    start = f"{int(since * 1000)}-0" if since else "-"
    newest = "+"
    entries: list[AuditEntry] = []
    while len(entries) < limit:
        page: list[tuple[bytes, dict[bytes, bytes]]] = redis.xrevrange(  # type: ignore[assignment]
            AUDIT_STREAM, max=newest, min=start, count=_PAGE
        )
        for raw_id, fields in page:
            entry_id = raw_id.decode()
            entry_kind = fields[b"kind"].decode()
            if kind and entry_kind != kind:
                continue
            entries.append(
                AuditEntry(
                    id=entry_id,
                    time=int(entry_id.split("-")[0]) / 1000,
                    kind=entry_kind,
                    data=json.loads(fields[b"data"]),
                )
            )
            if len(entries) >= limit:
                break
        if len(page) < _PAGE:
            break
        newest = "(" + page[-1][0].decode()  # exclusive: continue below the last entry read
    return entries
