"""Schema migrations: numbered SQL files applied in order, recorded in ``schema_version``.

Files live in ``buildmaster/store/migrations`` and are named ``NNNN_what.sql``; version
numbers start at 1 and have no gaps. :func:`migrate` applies the missing ones, each in the
same transaction as the row that records it, under an advisory lock so that two masters
starting together do not both migrate. Applying twice changes nothing. A database that has a
newer version than the code knows is refused with :class:`SchemaTooNew`.

Also a command: ``python -m buildmaster.store.schema --dsn DSN`` migrates a database.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Any

import attrs

from buildmaster.store.database import Database, DatabaseError, Transaction

__all__ = ["Migration", "SchemaTooNew", "load_migrations", "migrate", "current_version", "LATEST"]

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
#: pg_advisory_xact_lock key for migrations ("bm" "schema")
_LOCK_KEY = 0x626D_5343


@attrs.frozen
class Migration:
    version: int
    name: str
    sql: str


class SchemaTooNew(DatabaseError):
    """The database was migrated by a newer buildmaster than this one."""


@cache
def load_migrations() -> tuple[Migration, ...]:
    """The migrations shipped with this code, in order.

    :raises ValueError: when a file name is malformed or the numbering has a gap.
    """
    found = []
    for entry in resources.files("buildmaster.store").joinpath("migrations").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _NAME.match(entry.name)
        if match is None:
            raise ValueError(f"malformed migration file name: {entry.name}")
        found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise ValueError(f"migration {expected} is missing (found {migration.version})")
    return tuple(found)


LATEST = len(load_migrations())


async def _current(tx: Transaction) -> int:
    await tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version integer PRIMARY KEY,"
        " name text NOT NULL,"
        " applied timestamptz NOT NULL DEFAULT now())"
    )
    row = await tx.query_one("SELECT coalesce(max(version), 0) FROM schema_version")
    assert row is not None
    return int(row[0])


async def _migrate(tx: Transaction) -> list[int]:
    await tx.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
    version = await _current(tx)
    migrations = load_migrations()
    if version > len(migrations):
        raise SchemaTooNew(
            f"the database is at schema version {version}, but this buildmaster only knows "
            f"versions up to {len(migrations)}: upgrade buildmaster (or point it at another database)"
        )
    applied = []
    for migration in migrations[version:]:
        await tx.execute(migration.sql)
        await tx.execute(
            "INSERT INTO schema_version (version, name) VALUES (%s, %s)",
            (migration.version, migration.name),
        )
        applied.append(migration.version)
    return applied


async def migrate(db: Database) -> list[int]:
    """Bring the database up to the newest schema.

    :returns: the versions applied now (empty when it was already current).
    :raises SchemaTooNew: when the database is newer than this code.
    """
    return await db.transaction(_migrate, retries=0)


async def current_version(db: Database) -> int:
    """The schema version of the database (0 for an empty database)."""
    rows = await db.query("SELECT to_regclass('schema_version') IS NOT NULL")
    if not rows[0][0]:
        return 0
    rows = await db.query("SELECT coalesce(max(version), 0) FROM schema_version")
    return int(rows[0][0])


async def check_current(db: Database) -> None:
    """Raise unless the database has exactly the schema this code expects."""
    version = await current_version(db)
    if version > LATEST:
        raise SchemaTooNew(
            f"the database is at schema version {version}, newer than this buildmaster ({LATEST})"
        )
    if version < LATEST:
        raise DatabaseError(
            f"the database is at schema version {version}; run the migrations (latest {LATEST})"
        )


def main(argv: list[str] | None = None) -> None:
    """``python -m buildmaster.store.schema --dsn DSN``: migrate a database, then exit."""
    import argparse

    from twisted.internet import defer, task

    parser = argparse.ArgumentParser(description="Apply buildmaster's schema migrations.")
    parser.add_argument("--dsn", required=True, help="libpq connection string of the database")
    options = parser.parse_args(argv)

    async def run(reactor: Any) -> None:
        db = Database(reactor, options.dsn, size=1)
        await db.connect()
        try:
            applied = await migrate(db)
        finally:
            await db.close()
        print(f"applied migrations: {applied}" if applied else "schema already current")

    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
