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

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from buildmaster.store.cluster import ClusterDirectoryError, PostgresCluster
from buildmaster.store.database import Database
from buildmaster.store.schema import migrate

__all__ = [
    "DATABASE",
    "WORK_ROLE",
    "WORK_GRANTS",
    "embedded_cluster",
    "relocate_demo",
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


#: in a state dir: where its cluster lives when not in ``postgres/`` (see :func:`relocate_demo`)
LOCATION_FILE = "postgres.location"


def embedded_cluster(state_dir: Path) -> PostgresCluster:
    """The durable private cluster of ``state_dir`` (not started): in ``state_dir/postgres``,
    or where the state dir's :data:`LOCATION_FILE` says (a demo run as root)."""
    directory = state_dir / "postgres"
    pointer = state_dir / LOCATION_FILE
    if pointer.is_file():
        directory = Path(pointer.read_text().strip())
    return PostgresCluster(directory=directory, fsync=True, roles=(WORK_ROLE,))


def relocate_demo(state_dir: Path) -> PostgresCluster:
    """The demo's cluster, moved out of a state dir that the server's user cannot reach.

    Run as root, the server runs as ``postgres``, which must pass through every directory
    above the cluster's, and the master changes no permission outside its state dir: a
    demo in a checkout under ``/root`` or a private temporary directory could not start.
    The demo's data is disposable, so its cluster goes to a directory of its own under the
    system's temporary directory (named after the state dir, made by root, mode 711 above
    the cluster's 700) and the state dir records where (:data:`LOCATION_FILE`, so that
    ``python -m buildmaster.tokens --state-dir`` finds it). Not for a real master: there, a
    database in a temporary directory would be lost, and an unreachable state dir is refused.
    """
    digest = hashlib.sha256(str(state_dir.absolute()).encode()).hexdigest()[:16]
    home = Path(tempfile.gettempdir()) / f"buildmaster-demo-{digest}"
    home.mkdir(mode=0o711, exist_ok=True)
    if home.is_symlink() or home.stat().st_uid != os.geteuid():
        raise ClusterDirectoryError(
            f"{home} is not this user's: remove it, or give the demo a"
            " --state-dir the postgres user can reach"
        )
    os.chmod(home, 0o711)
    pointer = state_dir / LOCATION_FILE
    pointer.write_text(f"{home / 'postgres'}\n")
    os.chmod(pointer, 0o600)
    return embedded_cluster(state_dir)


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
