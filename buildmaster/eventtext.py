"""An event of a build's or a builder's history as a sentence a page can show. Pure.

Events are recorded with a kind (``dispatched``, ``failure``, ...) and a message; the
sentence names the builder where the message does not, and says what followed.
"""

from __future__ import annotations

__all__ = ["describe_event"]


def describe_event(kind: str, message: str, builder: str | None) -> str:
    """``dispatched to bob``; ``builder failure on bob: (111, 'Connection refused') (...)``;
    ``requeued: ...``. The date is the page's to show."""
    on = f" on {builder}" if builder else ""
    by = f" by {builder}" if builder else ""
    if kind == "failure":
        return f"builder failure{on}: {message}"
    if kind == "finished":
        return f"finished: {message}"
    if kind == "state":
        return f"state {message}"
    if kind == "lost":
        return f"lost{by}, requeued: {message}"
    if kind == "given-back":
        return f"given back{by}, requeued"
    if kind == "requeued":
        return f"requeued: {message}"
    if kind == "released":
        return f"claim released{on}: {message}"
    if kind == "suspended":
        return f"suspended: {message}"
    if kind == "resumed":
        return "back in the queue"
    if kind == "failed":
        return f"{builder or 'builder'} marked as failed: {message}"
    if kind == "restored":
        return f"{builder or 'builder'} back in service: {message}"
    return message
