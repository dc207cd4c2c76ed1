"""The builder set: the farm's machines as the database knows them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from buildmaster.enums import BuilderCleanStatus
from buildmaster.model import Builder, HasId, id_of
from buildmaster.names import check_builder_name, check_vm_host
from buildmaster.store.database import Database, NotFound, Transaction
from buildmaster.store.events import record_event

__all__ = [
    "BuilderSet",
    "BuilderBusy",
    "BUILDER_COLUMNS",
    "BUILDER_WIDTH",
    "builder_columns",
    "builder_from_row",
]


def builder_columns(alias: str = "b") -> str:
    """The columns :func:`builder_from_row` reads, from ``builder`` aliased ``alias``."""
    names = (
        "id, name, title, url, virtualized, vm_host, builderok, failnotes, failed_by_master,"
        " manual, active, failure_count, clean_status, version"
    )
    plain = ", ".join(f"{alias}.{n.strip()}" for n in names.split(","))
    return (
        f"{plain}, coalesce((SELECT array_agg(bp.processor ORDER BY bp.processor)"
        f" FROM builderprocessor bp WHERE bp.builder = {alias}.id), '{{}}')"
    )


BUILDER_COLUMNS = builder_columns("b")
BUILDER_WIDTH = 15


def builder_from_row(row: tuple[Any, ...]) -> Builder:
    return Builder(
        id=row[0],
        name=row[1],
        title=row[2],
        url=row[3],
        virtualized=row[4],
        vm_host=row[5],
        builderok=row[6],
        failnotes=row[7],
        failed_by_master=row[8],
        manual=row[9],
        active=row[10],
        failure_count=row[11],
        clean_status=BuilderCleanStatus(row[12]),
        version=row[13],
        processor_ids=tuple(row[14]),
    )


async def get_builder(tx: Transaction, builder_id: int, lock: bool = False) -> Builder:
    row = await tx.query_one(
        f"SELECT {BUILDER_COLUMNS} FROM builder b WHERE b.id = %s"
        + (" FOR UPDATE" if lock else ""),
        (builder_id,),
    )
    if row is None:
        raise NotFound(f"no builder {builder_id}")
    return builder_from_row(row)


class BuilderSet:
    """Count, list, find and change builders (Launchpad's IBuilderSet, asynchronously)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def count(self) -> int:
        """How many active builders there are."""
        rows = await self._db.query("SELECT count(*) FROM builder WHERE active")
        return int(rows[0][0])

    async def all(self, include_inactive: bool = False) -> list[Builder]:
        """Every (active) builder, by name."""
        where = "" if include_inactive else "WHERE b.active"
        rows = await self._db.query(
            f"SELECT {BUILDER_COLUMNS} FROM builder b {where} ORDER BY b.name"
        )
        return [builder_from_row(r) for r in rows]

    async def get(self, builder: HasId | int) -> Builder:
        """The builder with this id. :raises NotFound:"""
        rows = await self._db.query(
            f"SELECT {BUILDER_COLUMNS} FROM builder b WHERE b.id = %s", (id_of(builder),)
        )
        if not rows:
            raise NotFound(f"no builder {id_of(builder)}")
        return builder_from_row(rows[0])

    async def getByName(self, name: str) -> Builder:
        """The builder called ``name``. :raises NotFound:"""
        rows = await self._db.query(
            f"SELECT {BUILDER_COLUMNS} FROM builder b WHERE b.name = %s", (name,)
        )
        if not rows:
            raise NotFound(f"no builder called {name!r}")
        return builder_from_row(rows[0])

    async def new(
        self,
        name: str,
        url: str,
        processors: Sequence[HasId | int],
        virtualized: bool = False,
        vm_host: str | None = None,
        title: str = "",
        manual: bool = False,
        active: bool = True,
    ) -> Builder:
        """Register a builder.

        :raises InvalidName: for a bad name or VM host (:mod:`buildmaster.names`).
        :raises ConstraintViolation: on a duplicate name or a bad URL.
        """
        check_builder_name(name)
        if vm_host is not None:
            check_vm_host(vm_host)

        async def create(tx: Transaction) -> Builder:
            row = await tx.query_one(
                "INSERT INTO builder (name, title, url, virtualized, vm_host, manual, active)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (name, title, url, virtualized, vm_host, manual, active),
            )
            assert row is not None
            for processor in processors:
                await tx.execute(
                    "INSERT INTO builderprocessor (builder, processor) VALUES (%s, %s)",
                    (row[0], id_of(processor)),
                )
            await record_event(
                tx, "registered", f"builder {name} registered at {url}", builder=row[0]
            )
            return await get_builder(tx, row[0])

        return await self._db.transaction(create)

    async def _update(
        self, builder: HasId | int, assignments: str, args: tuple[Any, ...]
    ) -> Builder:
        async def update(tx: Transaction) -> Builder:
            count = await tx.execute(
                f"UPDATE builder SET {assignments} WHERE id = %s", (*args, id_of(builder))
            )
            if count == 0:
                raise NotFound(f"no builder {id_of(builder)}")
            return await get_builder(tx, id_of(builder))

        return await self._db.transaction(update)

    async def set_builderok(
        self,
        builder: HasId | int,
        builderok: bool,
        failnotes: str | None = None,
        by_master: bool = False,
    ) -> Builder:
        """Put a builder in or out of service.

        ``by_master`` marks an automatic failure (the master re-probes such a builder and
        brings it back by itself); an operator's decision (``by_master=False``) sticks.
        Setting ``builderok`` clears the failure count.
        """
        if builderok:
            return await self._update(
                builder,
                "builderok = true, failnotes = %s, failed_by_master = false, failure_count = 0",
                (failnotes,),
            )
        return await self._update(
            builder,
            "builderok = false, failnotes = %s, failed_by_master = %s",
            (failnotes, by_master),
        )

    async def set_virtualized(self, builder: HasId | int, virtualized: bool) -> Builder:
        return await self._update(builder, "virtualized = %s", (virtualized,))

    async def set_trusted(self, builder: HasId | int, trusted: bool) -> Builder:
        """The seed's vocabulary: a trusted builder is a non-virtualized one."""
        return await self.set_virtualized(builder, not trusted)

    async def set_vm_host(self, builder: HasId | int, vm_host: str | None) -> Builder:
        """:raises InvalidName: for a bad VM host (:mod:`buildmaster.names`)."""
        if vm_host is not None:
            check_vm_host(vm_host)
        return await self._update(builder, "vm_host = %s", (vm_host,))

    async def set_manual(self, builder: HasId | int, manual: bool) -> Builder:
        """Manual mode: the builder is scanned and its builds collected, never dispatched to."""
        return await self._update(builder, "manual = %s", (manual,))

    async def set_active(self, builder: HasId | int, active: bool) -> Builder:
        return await self._update(builder, "active = %s", (active,))

    async def set_url(self, builder: HasId | int, url: str) -> Builder:
        return await self._update(builder, "url = %s", (url,))

    async def set_processors(
        self, builder: HasId | int, processors: Sequence[HasId | int]
    ) -> Builder:
        """Replace the processors the builder builds for."""

        async def replace(tx: Transaction) -> Builder:
            fresh = await get_builder(tx, id_of(builder), lock=True)
            await tx.execute("DELETE FROM builderprocessor WHERE builder = %s", (fresh.id,))
            await tx.execute(
                "INSERT INTO builderprocessor (builder, processor)"
                " SELECT %s, p FROM unnest(%s::integer[]) AS p",
                (fresh.id, sorted({id_of(p) for p in processors})),
            )
            return await get_builder(tx, fresh.id)

        return await self._db.transaction(replace)

    async def remove(self, builder: HasId | int) -> bool:
        """Remove a builder that has no job: deleted if it never built anything, otherwise
        made inactive (its history stays, it is no longer scanned).

        :returns: whether it was deleted (``False``: made inactive).
        :raises BuilderBusy: when it has a job.
        :raises NotFound:
        """

        async def remove(tx: Transaction) -> bool:
            fresh = await get_builder(tx, id_of(builder), lock=True)
            job = await tx.query_one(
                "SELECT build FROM buildqueue WHERE builder = %s FOR UPDATE", (fresh.id,)
            )
            if job is not None:
                raise BuilderBusy(fresh.name, int(job[0]))
            built = await tx.query_one(
                "SELECT 1 FROM build WHERE builder = %s LIMIT 1", (fresh.id,)
            )
            if built is None:
                await tx.execute("DELETE FROM builder WHERE id = %s", (fresh.id,))
                return True
            await tx.execute("UPDATE builder SET active = false WHERE id = %s", (fresh.id,))
            await record_event(tx, "removed", f"builder {fresh.name} removed", builder=fresh.id)
            return False

        return await self._db.transaction(remove)


class BuilderBusy(Exception):
    """A builder that has a job cannot be removed."""

    def __init__(self, name: str, build_id: int) -> None:
        super().__init__(f"builder {name} has build {build_id}")
        self.name = name
        self.build_id = build_id
