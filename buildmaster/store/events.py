"""The event history of builds and builders: what happened, and why."""

from __future__ import annotations

from typing import Any

from buildmaster.model import Event
from buildmaster.store.database import Database, Transaction

__all__ = ["EventQueries", "record_event"]

_COLUMNS = "id, date, build, builder, kind, message"


def _event(row: tuple[Any, ...]) -> Event:
    return Event(*row)


async def record_event(
    tx: Transaction, kind: str, message: str, build: int | None = None, builder: int | None = None
) -> None:
    """Record an event inside the caller's transaction."""
    await tx.execute(
        "INSERT INTO event (build, builder, kind, message) VALUES (%s, %s, %s, %s)",
        (build, builder, kind, message),
    )


class EventQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(
        self, kind: str, message: str, build: int | None = None, builder: int | None = None
    ) -> None:
        await self._db.transaction(record_event, kind, message, build, builder)

    async def for_build(self, build_id: int) -> list[Event]:
        """The build's events, oldest first."""
        rows = await self._db.query(
            f"SELECT {_COLUMNS} FROM event WHERE build = %s ORDER BY id", (build_id,)
        )
        return [_event(r) for r in rows]

    async def for_builder(self, builder_id: int) -> list[Event]:
        """The builder's events, oldest first."""
        rows = await self._db.query(
            f"SELECT {_COLUMNS} FROM event WHERE builder = %s ORDER BY id", (builder_id,)
        )
        return [_event(r) for r in rows]
