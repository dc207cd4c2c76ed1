"""The embedded default: a private PostgreSQL cluster in the state directory, its database and
the two roles that use it.

The cluster (:class:`~buildmaster.store.cluster.PostgresCluster`) listens only on a Unix
socket inside ``STATE_DIR/postgres`` (mode 0700) and lets in only the operating system user
that runs the master (``peer`` authentication). In it:

* the cluster's superuser (``postgres``) owns database ``buildmaster`` and applies the schema
  migrations at start;
* the master does its work as role ``buildmaster``, which is not a superuser, may not create
  roles or databases, and may only read and change the rows of the schema's tables (and use
  its sequences): :data:`WORK_GRANTS`. LISTEN/NOTIFY and advisory locks need no grant.

The same two-role split serves a managed PostgreSQL (``--dsn``): README.md says how.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from buildmaster.store.cluster import PostgresCluster
from buildmaster.store.database import Database
from buildmaster.store.schema import migrate

__all__ = [
    "DATABASE",
    "WORK_ROLE",
    "WORK_GRANTS",
    "embedded_cluster",
    "prepare_database",
]

#: The database the master uses in its embedded cluster.
DATABASE = "buildmaster"
#: The role the master works as (not a superuser).
WORK_ROLE = "buildmaster"
#: What the work role may do, run by the owner of the database (the role that migrates):
#: rows and sequences of the tables there are now, and of those later migrations create.
WORK_GRANTS = (
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
    "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {role}",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA public"
    " GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {role}",
)


def embedded_cluster(state_dir: Path) -> PostgresCluster:
    """The durable private cluster in ``state_dir/postgres`` (not started)."""
    return PostgresCluster(directory=state_dir / "postgres", fsync=True, roles=(WORK_ROLE,))


async def prepare_database(reactor: Any, cluster: PostgresCluster) -> tuple[str, list[int]]:
    """Create the work role and the database when missing, apply the migrations as the
    database's owner and grant the work role what it needs.

    :param cluster: the running embedded cluster.
    :returns: the work role's connection string and the migrations applied now.
    :raises DatabaseError: when the server refuses any of it.
    """
    admin = Database(reactor, cluster.dsn("postgres"), size=1)
    await admin.connect()
    try:
        # a role (and database) name cannot be a parameter: these are our own constants
        if not await admin.query("SELECT 1 FROM pg_roles WHERE rolname = %s", (WORK_ROLE,)):
            await admin.execute(
                f'CREATE ROLE "{WORK_ROLE}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE'
            )
        if not await admin.query("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)):
            await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    owner = Database(reactor, cluster.dsn(DATABASE), size=1)
    await owner.connect()
    try:
        applied = await migrate(owner)
        for grant in WORK_GRANTS:
            await owner.execute(grant.format(role=f'"{WORK_ROLE}"'))
    finally:
        await owner.close()
    return cluster.dsn(DATABASE, user=WORK_ROLE), applied
