"""Print job rows the way `podman auto-update` prints its report: table, json or a template."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from workers.report import PODMAN_UPDATED, UpdateState

COLUMNS = ("Unit", "Container", "ContainerName", "ContainerID", "Image", "Policy", "Updated")
TABLE_COLUMNS = ("Unit", "Container", "Image", "Policy", "Updated")
_FIELD = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")
# Podman prints tables through containers/common's pkg/report: a Go tabwriter with cells at
# least 12 wide and 2 spaces of padding, the last cell of a line unpadded, headers from the
# field names split at their capitals ("ContainerID" -> "CONTAINER ID").
_MIN_WIDTH = 12
_PADDING = 2
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z][a-z]*|[a-z]+|[0-9]+")


class FormatError(ValueError):
    """Raised for a --format that names no known field."""


def podman_row(row: Mapping[str, Any], host: str | None = None) -> dict[str, str]:
    """One report row (``ContainerReport.to_dict()``) as `podman auto-update` names its fields;
    with ``host``, a ``Host`` field first."""
    container_id = str(row.get("container_id", ""))
    name = str(row.get("container_name", ""))
    state = UpdateState(row.get("state", "failed"))
    policy = str(row.get("policy", ""))
    fields = {
        "Unit": str(row.get("unit") or ""),
        "Container": f"{container_id[:12]} ({name})",
        "ContainerName": name,
        "ContainerID": container_id,
        "Image": str(row.get("image", "")),
        "Policy": "registry" if policy == "image" else policy,
        "Updated": PODMAN_UPDATED[state],
    }
    return {"Host": host, **fields} if host is not None else fields


def render(rows: Iterable[Mapping[str, str]], format_: str = "table") -> str:
    """Render podman rows: ``table`` (aligned, with headers, laid out as `podman auto-update`
    lays out its own), ``json`` (an array of objects with Podman's keys), or a Go-style
    template such as ``{{.Unit}},{{.Updated}}`` (one line per row; a ``table `` prefix adds
    headers and alignment). Raises FormatError for a template field that does not exist."""
    rows = list(rows)
    with_host = bool(rows) and "Host" in rows[0]
    if format_ == "json":
        return json.dumps(rows, indent=4)
    if format_ == "table":
        # Podman's own template starts each line with a tab (cmd/podman/auto-update.go,
        # "{{range . }}\t{{.Unit}}..."): an empty first column, 12 spaces wide. A table of
        # several hosts is podhook's own and starts with its HOST column instead.
        columns = (("Host",) if with_host else ("",)) + TABLE_COLUMNS
        return _table(rows, columns)
    template = format_.replace("\\t", "\t").replace("\\n", "\n")
    known = set(COLUMNS) | ({"Host"} if with_host else set())
    unknown = sorted({name for name in _FIELD.findall(template) if name not in known})
    if unknown:
        raise FormatError(
            f"template names unknown field(s) {', '.join(unknown)}; known: "
            + ", ".join(sorted(known))
        )
    if template.startswith("table "):
        columns = tuple(_FIELD.findall(template[6:]))
        return _table(rows, columns)
    # Podman ends a user's template with a newline unless it has one (pkg/report,
    # NormalizeFormat).
    end = "" if template.endswith("\n") else "\n"
    return "".join(_fill(template, row) + end for row in rows)


def _fill(template: str, row: Mapping[str, str]) -> str:
    return _FIELD.sub(lambda match: row[match.group(1)], template)


def _header(column: str) -> str:
    return " ".join(_WORD.findall(column)).upper()


def _table(rows: list[Mapping[str, str]], columns: tuple[str, ...]) -> str:
    """Rows aligned as Podman's tabwriter aligns them; a column named "" stays empty."""
    lines = [tuple(_header(c) for c in columns)] + [
        tuple(row[c] if c else "" for c in columns) for row in rows
    ]
    widths = [
        max(_MIN_WIDTH, max(len(line[i]) for line in lines) + _PADDING)
        for i in range(len(columns) - 1)
    ]
    return "".join(
        "".join(value.ljust(width) for value, width in zip(line[:-1], widths, strict=True))
        + line[-1]
        + "\n"
        for line in lines
    )
