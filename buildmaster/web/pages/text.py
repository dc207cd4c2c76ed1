"""How the pages write times, durations and states for people. Pure."""

from __future__ import annotations

import datetime

__all__ = ["duration", "moment", "ago", "state_class", "STATE_WORDS"]


def duration(seconds: float | None) -> str:
    """``42 s``, ``3 min 10 s``, ``2 h 5 min``, ``3 d 4 h``; an em dash for none."""
    if seconds is None:
        return "—"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    minutes, s = divmod(s, 60)
    if minutes < 60:
        return f"{minutes} min {s} s" if s and minutes < 10 else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def moment(when: datetime.datetime | None) -> str:
    """``2025-01-31 12:00:03`` in UTC (the pages say UTC once, in the footer)."""
    if when is None:
        return "—"
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago(when: datetime.datetime | None, now: datetime.datetime) -> str:
    """``3 min ago`` (``in 3 min`` for a time to come)."""
    if when is None:
        return "—"
    seconds = (now - when).total_seconds()
    if seconds < 0:
        return f"in {duration(-seconds)}"
    return f"{duration(seconds)} ago"


#: the CSS class of each state word: green, blue, amber, red, grey
_CLASSES = {
    "idle": "ok",
    "building": "busy",
    "cleaning": "busy",
    "manual": "warn",
    "disabled": "bad",
    "failed": "bad",
    "inactive": "off",
    "needsbuild": "wait",
    "fullybuilt": "ok",
    "failedtobuild": "bad",
    "manualdepwait": "warn",
    "chrootwait": "bad",
    "superseded": "off",
    "failedtoupload": "bad",
    "uploading": "busy",
    "gathering": "busy",
    "cancelling": "warn",
    "cancelled": "off",
}

#: build states as words
STATE_WORDS = {
    "NEEDSBUILD": "waiting",
    "FULLYBUILT": "built",
    "FAILEDTOBUILD": "failed to build",
    "MANUALDEPWAIT": "dependency wait",
    "CHROOTWAIT": "chroot problem",
    "SUPERSEDED": "superseded",
    "BUILDING": "building",
    "FAILEDTOUPLOAD": "failed to upload",
    "UPLOADING": "uploading",
    "CANCELLING": "cancelling",
    "CANCELLED": "cancelled",
    "GATHERING": "gathering results",
}


def state_class(state: str) -> str:
    """The CSS class for a builder's or a build's state (``ok``, ``busy``, ``bad``, ...)."""
    return _CLASSES.get(state.lower(), "off")
