"""What a person reads: aligned tables, times in words ("12 min ago"), JSON for scripts."""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any

import click

__all__ = ["ago", "emit_json", "fields", "parse_time", "span", "table", "until"]


def parse_time(value: str | None) -> datetime.datetime | None:
    """An RFC 3339 time of the API, or ``None``."""
    if value is None:
        return None
    parsed = datetime.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def span(seconds: float) -> str:
    """A length of time in words: ``45 s``, ``3 min``, ``2 h 5 min``, ``3 days``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} days"


def ago(value: str | None, now: datetime.datetime) -> str:
    """``12 min ago`` for an API time (``-`` for none)."""
    when = parse_time(value)
    if when is None:
        return "-"
    seconds = (now - when).total_seconds()
    if seconds < 1:
        return "just now"
    return f"{span(seconds)} ago"


def until(value: str | None, now: datetime.datetime) -> str:
    """``in 12 min`` for an API time to come (``now`` once it has passed)."""
    when = parse_time(value)
    if when is None:
        return "-"
    seconds = (when - now).total_seconds()
    return f"in {span(seconds)}" if seconds >= 1 else "now"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns aligned on the widest cell; the last column is not padded."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


def emit_json(data: Any) -> None:
    """The API's objects, as they came, for scripts."""
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """``name:  value`` lines, the values aligned."""
    width = max(len(name) for name, _ in pairs) + 1
    return "\n".join(f"{name + ':':<{width}}  {'-' if v is None else v}" for name, v in pairs)
