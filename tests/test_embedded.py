"""The embedded default's database is private, and the master works in it as a role that is
not a superuser; a managed database is used the same way (an owner migrates, a work role
works)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
import pytest_twisted
from twisted.internet import threads

from buildmaster.config import MasterConfig
from buildmaster.service import BuildmasterService, ServiceSettings, StartupError
from buildmaster.store import Database
from buildmaster.store.cluster import PostgresCluster
from buildmaster.store.embedded import WORK_GRANTS


def _modes(path: Path) -> dict[Path, int]:
    return {p: p.stat().st_mode for p in (path, *path.parents)}


async def _running(reactor: Any, state_dir: Path, dsn: str | None = None) -> BuildmasterService:
    """A started master (stop it with ``stopService``)."""
    service = BuildmasterService(
        reactor,
        ServiceSettings(
            state_dir=state_dir,
            dsn=dsn,
            port="tcp:0:interface=127.0.0.1",
            master=MasterConfig(scan_interval=3600),
        ),
    )
    service.startService()
    try:
        await service.when_ready()
    except Exception:
        await service.stopService()
        raise
    return service


async def _one(reactor: Any, dsn: str, sql: str) -> list[tuple[Any, ...]]:
    db = Database(reactor, dsn, size=1)
    await db.connect()
    try:
        return await db.query(sql)
    finally:
        await db.close()


@pytest_twisted.ensureDeferred
async def test_the_embedded_database_is_private_and_the_master_no_superuser(
    reactor: Any, reachable_tmp: Path, captured_log: Any
) -> None:
    before = _modes(reachable_tmp)
    state = reachable_tmp / "state"
    service = await _running(reactor, state)
    try:
        cluster = service.cluster
        assert cluster is not None and service.db is not None
        # the master's sessions work as a role that is not a superuser ...
        assert await service.db.query(
            "SELECT current_user::text, rolsuper, rolcreaterole, rolcreatedb"
            " FROM pg_roles WHERE rolname = current_user"
        ) == [("buildmaster", False, False, False)]
        # ... and cannot run programs on the server
        with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="must be superuser"):
            await service.db.query("COPY (SELECT 1) TO PROGRAM 'true'")
        sessions = await _one(
            reactor,
            cluster.dsn("buildmaster"),
            "SELECT DISTINCT usename::text FROM pg_stat_activity"
            " WHERE datname = 'buildmaster' AND pid <> pg_backend_pid()",
        )
        assert sessions == [("buildmaster",)]
        [(listen,)] = await _one(reactor, cluster.dsn(), "SHOW listen_addresses")
        assert listen == ""
        # nobody else gets in: the socket's directory is closed to other users
        assert stat.S_IMODE(cluster.directory.stat().st_mode) == 0o700
        if os.geteuid() == 0:
            other = await threads.deferToThread(
                subprocess.run,
                ["runuser", "-u", "nobody", "--", str(cluster.bindir / "psql")]
                + [cluster.dsn("buildmaster", user="buildmaster"), "-c", "SELECT 1"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert other.returncode != 0 and "Permission denied" in other.stderr, other.stderr
        # where it is, in the log
        socket = cluster.directory / ".s.PGSQL.5432"
        assert any(
            f"Private PostgreSQL: Unix socket {socket} only (no TCP)" in m
            for m in captured_log.messages()
        )
        # the librarian's secret is the farm's, in its database (no file to leak), and the
        # files directory (in the state directory by default) is marked as the farm's
        [(farm_id, secret)] = await service.db.query("SELECT id, librarian_secret FROM farm")
        assert len(bytes(secret)) == 32 and not (state / "librarian.secret").exists()
        assert (state / "librarian" / "farm-id").read_text() == f"{farm_id}\n"
        assert stat.S_IMODE(state.stat().st_mode) == (0o710 if os.geteuid() == 0 else 0o700)
    finally:
        await service.stopService()
    # nothing outside the state directory changed mode
    assert _modes(reachable_tmp) == before


@pytest_twisted.ensureDeferred
async def test_a_managed_database_is_migrated_by_its_owner_and_worked_by_another_role(
    reactor: Any, reachable_tmp: Path, captured_log: Any
) -> None:
    cluster = PostgresCluster(
        directory=reachable_tmp / "pg", fsync=False, roles=("farm_owner", "farm_worker")
    )
    await threads.deferToThread(cluster.start)
    try:
        conn = psycopg2.connect(cluster.dsn())
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE ROLE farm_owner LOGIN")
            cur.execute("CREATE ROLE farm_worker LOGIN")
            cur.execute("CREATE DATABASE farm OWNER farm_owner")
        conn.close()
        owner = cluster.dsn("farm", user="farm_owner")
        worker = cluster.dsn("farm", user="farm_worker")

        # the work role may not migrate: the master says who must
        captured_log.allow_errors(StartupError)
        errors: list[BaseException] = []
        refused = BuildmasterService(
            reactor,
            ServiceSettings(
                state_dir=reachable_tmp / "refused", dsn=worker, port="tcp:0:interface=127.0.0.1"
            ),
            on_fatal=errors.append,
        )
        refused.startService()
        with pytest.raises(StartupError):
            await refused.when_ready()
        await refused.stopService()
        [error] = errors
        assert isinstance(error, StartupError)
        assert "role farm_worker may not migrate it" in str(error)
        assert "python -m buildmaster.store.schema --dsn OWNER-DSN" in str(error)

        # as README.md says: the owner migrates and grants, the master works as the other
        await threads.deferToThread(
            subprocess.run,
            [sys.executable, "-m", "buildmaster.store.schema", "--dsn", owner],
            check=True,
            capture_output=True,
        )
        conn = psycopg2.connect(owner)
        conn.autocommit = True
        with conn.cursor() as cur:
            for grant in WORK_GRANTS:
                cur.execute(grant.format(role="farm_worker"))
        conn.close()
        service = await _running(reactor, reachable_tmp / "state", worker)
        try:
            assert service.db is not None
            assert await service.db.query("SELECT current_user::text") == [("farm_worker",)]
            assert any(
                m.startswith("Database: ") and "dbname=farm" in m and "user=farm_worker" in m
                for m in captured_log.messages()
            )
        finally:
            await service.stopService()
    finally:
        await threads.deferToThread(cluster.stop)


@pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as another user only under root")
@pytest_twisted.ensureDeferred
async def test_as_root_the_demo_in_a_closed_checkout_starts_and_its_token_tool_finds_it(
    reactor: Any, captured_log: Any
) -> None:
    """`tox -e demo` run as root in a checkout the postgres user cannot reach (under /root,
    or a private temporary directory) starts: the demo's disposable cluster goes where the
    server can reach it, nothing above the state dir is loosened, and the token tool given
    the state dir finds the running cluster. A real master there is refused (test_cluster)."""
    import shutil
    import tempfile

    closed = Path(tempfile.mkdtemp(prefix="buildmaster-closed-"))  # mode 0700, root's
    state = closed / "state"
    service = BuildmasterService(
        reactor,
        ServiceSettings(
            state_dir=state,
            port="tcp:0:interface=127.0.0.1",
            master=MasterConfig(scan_interval=3600),
            demo=True,
            demo_builders=1,
            demo_queue_interval=3600,
        ),
    )
    service.startService()
    cluster_home = None
    try:
        await service.when_ready()
        assert service.cluster is not None
        cluster_home = service.cluster.directory.parent
        assert not service.cluster.directory.is_relative_to(closed)
        assert stat.S_IMODE(closed.stat().st_mode) == 0o700
        made = await threads.deferToThread(
            subprocess.run,
            [sys.executable, "-m", "buildmaster.tokens", "create", "--admin"]
            + ["--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert made.returncode == 0, made.stderr
        assert made.stdout.strip().startswith("bm_")
    finally:
        await service.stopService()
        shutil.rmtree(closed)
        if cluster_home is not None:
            shutil.rmtree(cluster_home)
