"""The txpostgres pool: transactions, errors as our own types, reconnection, NOTIFY."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
import pytest_twisted
from twisted.internet import defer, task, threads

from buildmaster.store import ConstraintViolation, Database, DatabaseUnavailable, NotFound, Store
from buildmaster.store.cluster import PostgresCluster
from buildmaster.store.database import (
    MAX_PREPARED,
    StatementRefused,
    Transaction,
    application_name,
    prepared_statement,
)
from buildmaster.testing import wait_for


@pytest_twisted.ensureDeferred
async def test_a_transaction_commits_or_leaves_nothing(db: Database) -> None:
    await db.execute("CREATE TABLE t (x int PRIMARY KEY)")

    async def two_rows(tx: Transaction, fail: bool) -> int:
        await tx.execute("INSERT INTO t VALUES (1)")
        await tx.execute("INSERT INTO t VALUES (2)")
        if fail:
            raise RuntimeError("changed my mind")
        row = await tx.query_one("SELECT count(*) FROM t")
        assert row is not None
        return int(row[0])

    with pytest.raises(RuntimeError):
        await db.transaction(two_rows, True)
    assert await db.query("SELECT count(*) FROM t") == [(0,)]
    assert await db.transaction(two_rows, False) == 2
    assert await db.query("SELECT x FROM t ORDER BY x") == [(1,), (2,)]


@pytest_twisted.ensureDeferred
async def test_a_constraint_violation_is_a_domain_error(db: Database) -> None:
    await db.execute("CREATE TABLE t (x int CONSTRAINT t_positive CHECK (x > 0))")
    with pytest.raises(ConstraintViolation) as info:
        await db.execute("INSERT INTO t VALUES (-1)")
    assert not isinstance(info.value, psycopg2.Error)
    assert info.value.constraint == "t_positive"
    assert "t_positive" in str(info.value)
    # the connection is still usable afterwards
    assert await db.query("SELECT 1") == [(1,)]


@pytest_twisted.ensureDeferred
async def test_missing_rows_are_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="no builder called 'nobody'"):
        await store.builders.getByName("nobody")
    with pytest.raises(NotFound, match="no build queue entry 12345"):
        await store.queue.destroySelf(12345)


@pytest_twisted.ensureDeferred
async def test_queries_run_concurrently_on_several_connections(reactor: Any, dsn: str) -> None:
    """Three queries that wait for a lock another session holds are all waiting at once (a
    connection each), not queued behind one another."""
    pool = Database(reactor, dsn, size=3)
    other = Database(reactor, dsn, size=2)
    await pool.connect()
    await other.connect()
    release: defer.Deferred[None] = defer.Deferred()
    locked: defer.Deferred[None] = defer.Deferred()

    async def hold(tx: Transaction) -> None:
        await tx.execute("SELECT pg_advisory_xact_lock(4242)")
        locked.callback(None)
        await release

    async def waiting() -> int:
        rows = await other.query(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        )
        return int(rows[0][0])

    try:
        holding = other.transaction(hold)
        await locked
        queries = defer.gatherResults(
            [pool.query("SELECT pg_advisory_xact_lock_shared(4242)") for _ in range(3)]
        )
        await wait_for(reactor, lambda: _equals(waiting(), 3), 60, "three waiting queries")
        assert not queries.called
        release.callback(None)
        await holding
        assert len(await queries) == 3
    finally:
        if not release.called:
            release.callback(None)
        await pool.close()
        await other.close()


async def _equals(value: Any, expected: int) -> bool:
    return bool(await value == expected)


@pytest_twisted.ensureDeferred
async def test_notify_reaches_listeners_and_new_jobs_are_announced(db: Database) -> None:
    received: list[str] = []
    got = defer.Deferred[None]()

    def observer(payload: str) -> None:
        received.append(payload)
        if len(received) == 2 and not got.called:
            got.callback(None)

    await db.listen("buildqueue_waiting", observer)
    await db.notify("buildqueue_waiting", "hello")
    from buildmaster.sampledata import load_sample_data

    await load_sample_data(Store(db))  # queues two jobs: the trigger announces the waiting one
    await got
    processor = (await db.query("SELECT id FROM processor WHERE name = '386'"))[0][0]
    assert received[0] == "hello"
    assert received[1] == f"{processor} false 1"  # kind and how many jobs


@pytest_twisted.ensureDeferred
async def test_prepared_statements_give_the_same_answers_and_are_prepared_once_per_connection(
    db: Database,
) -> None:
    await db.execute("CREATE TABLE t (id integer PRIMARY KEY, tags text[], note text)")
    insert = "INSERT INTO t VALUES (%(id)s, %(tags)s, %(note)s) RETURNING id %% 7, note"
    rows = []
    for i in range(12):
        args = {"id": i, "tags": [f"t{i}"] if i % 2 else [], "note": None if i % 3 else f"n'{i}"}
        rows += await db.query(insert, args, prepared=True)
    assert rows == [(i % 7, None if i % 3 else f"n'{i}") for i in range(12)]
    select = "SELECT id, tags FROM t WHERE id = ANY(%s) AND note IS NULL ORDER BY id"
    assert await db.query(select, ([1, 2, 3, 4],), prepared=True) == [(1, ["t1"]), (2, []), (4, [])]
    assert await db.query(select, ([1, 2, 3, 4],)) == [(1, ["t1"]), (2, []), (4, [])]
    await db.execute("UPDATE t SET note = %s WHERE id = %s", ("x", 1), prepared=True)
    assert await db.query("SELECT note FROM t WHERE id = 1") == [("x",)]

    # each connection that ran it prepared it once, and PostgreSQL has it under that name
    name = prepared_statement(insert).name
    holders = [c for c in db._connections if name in c.prepared]
    assert holders
    for c in holders:
        [(count,)] = await c.runQuery(
            "SELECT count(*) FROM pg_prepared_statements WHERE name = %s", (name,)
        )
        assert count == 1
    # statements whose text varies do not pile up in the sessions: beyond the cap they run
    # unprepared (and still give the right answers)
    for i in range(MAX_PREPARED + 20):
        assert await db.query(f"SELECT {i} + %s", (1,), prepared=True) == [(i + 1,)]
    assert all(len(c.prepared) <= MAX_PREPARED for c in db._connections)
    # wrong arguments are a clear error, not a server round trip
    with pytest.raises(TypeError, match="takes 1 arguments, not 2"):
        await db.query(select, ([1], 2), prepared=True)


@pytest_twisted.ensureDeferred
async def test_a_session_that_lost_its_prepared_statements_still_answers(
    db: Database, captured_log: Any
) -> None:
    query = "SELECT %s::integer * 2"

    async def ask_all() -> list[Any]:  # at once: the pool spreads them over its connections
        return await defer.gatherResults([db.query(query, (i,), prepared=True) for i in range(12)])

    assert await ask_all() == [[(2 * i,)] for i in range(12)]
    name = prepared_statement(query).name
    holders = [c for c in db._connections if name in c.prepared]
    assert len(holders) > 1
    # behind the pool's back, as a connection pooler's reset would
    for c in db._connections:
        await c.runOperation("DEALLOCATE ALL")
    assert await ask_all() == [[(2 * i,)] for i in range(12)]
    assert await ask_all() == [[(2 * i,)] for i in range(12)]
    assert all(c.unprepared for c in holders)
    warnings = [m for m in captured_log.warnings() if "lost its prepared statements" in m]
    assert len(warnings) == len([c for c in db._connections if c.unprepared])  # once each
    # and a statement that fails for its own reasons still fails
    await db.execute("CREATE TABLE u (x int CHECK (x > 0))")
    with pytest.raises(ConstraintViolation):
        await db.execute("INSERT INTO u VALUES (%s)", (-1,), prepared=True)


def test_placeholders_become_numbered_parameters() -> None:
    named = prepared_statement("SELECT %(b)s, %(a)s, %(b)s, x %% 2 FROM t")
    assert named.prepare.endswith("AS SELECT $1, $2, $1, x % 2 FROM t")
    assert named.keys == ("b", "a") and named.count == 2
    assert named.arguments({"a": 1, "b": 2, "unused": 3}) == (2, 1)
    assert named.execute == f"EXECUTE {named.name} (%s, %s)"
    positional = prepared_statement("SELECT %s + %s")
    assert positional.prepare.endswith("AS SELECT $1 + $2") and positional.keys is None
    assert (
        prepared_statement("SELECT 1").execute == f"EXECUTE {prepared_statement('SELECT 1').name}"
    )
    with pytest.raises(ValueError, match="mixes"):
        prepared_statement("SELECT %s, %(a)s")


# -- reconnection -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[PostgresCluster]:
    """A cluster of this module's own, since the test restarts it."""
    with PostgresCluster.throwaway_cluster() as cluster:
        yield cluster


@pytest_twisted.ensureDeferred
async def test_the_pool_survives_a_server_restart(
    reactor: Any, own_cluster: PostgresCluster
) -> None:
    db = Database(reactor, own_cluster.dsn(), size=2)
    await db.connect()
    notified: list[str] = []
    await db.listen("ping", notified.append)
    try:
        [(started_before,)] = await db.query("SELECT pg_postmaster_start_time()")
        prepared = "SELECT pg_postmaster_start_time(), %s::integer"
        for i in range(4):  # prepared on both connections
            assert (await db.query(prepared, (i,), prepared=True))[0] == (started_before, i)
        await threads.deferToThread(own_cluster.restart)

        errors: list[BaseException] = []
        answers: list[Any] = []

        async def back() -> bool:
            try:
                answers.append(await db.query("SELECT pg_postmaster_start_time()"))
            except Exception as e:
                errors.append(e)
                return False
            return True

        await wait_for(reactor, back, 60, "the pool to come back")
        result = answers[-1]
        assert result[0][0] > started_before  # really a new server
        assert all(isinstance(e, DatabaseUnavailable) for e in errors), errors
        # the new sessions prepare the statement again
        for i in range(4):
            assert (await db.query(prepared, (i,), prepared=True))[0] == (result[0][0], i)

        # LISTEN is re-established on the new connection
        async def heard() -> bool:
            await db.notify("ping", "after restart")
            await task.deferLater(reactor, 0.1, lambda: None)
            return "after restart" in notified

        await wait_for(reactor, heard, 60, "a notification after the restart")
    finally:
        await db.close()


@pytest_twisted.ensureDeferred
async def test_an_unreachable_server_is_reported_clearly(reactor: Any) -> None:
    from buildmaster.store.cluster import free_port

    db = Database(
        reactor, f"host=127.0.0.1 port={free_port()} user=postgres dbname=x connect_timeout=2"
    )
    with pytest.raises(DatabaseUnavailable, match="database unavailable"):
        await db.connect()


@pytest_twisted.ensureDeferred
async def test_a_statement_the_server_cancels_costs_that_statement_only(
    reactor: Any, dsn: str, captured_log: Any
) -> None:
    """A statement the server cancels (here: a lock timeout) fails with a clear error, one
    to try again later, and nothing more: the pool keeps its connections, with their
    sessions' locks, and does not report a database outage. (The pool once took any such
    error for a dead connection and reconnected: a lock timeout in one claim cut every
    session's advisory locks on that connection and logged an outage.)"""
    pool = Database(reactor, dsn, size=1)
    other = Database(reactor, dsn, size=1)
    await pool.connect()
    await other.connect()
    try:
        [(pid,)] = await pool.query("SELECT pg_backend_pid()")
        await pool.query("SELECT pg_advisory_lock(4343)")  # a session lock, as ownership's
        release: defer.Deferred[None] = defer.Deferred()
        locked: defer.Deferred[None] = defer.Deferred()

        async def hold(tx: Transaction) -> None:
            await tx.execute("LOCK TABLE schema_version IN ACCESS EXCLUSIVE MODE")
            locked.callback(None)
            await release

        holding = other.transaction(hold)
        await locked

        async def wait_for_the_lock(tx: Transaction) -> None:
            await tx.execute("SET LOCAL lock_timeout = '100ms'")
            await tx.query("SELECT count(*) FROM schema_version")

        with pytest.raises(StatementRefused, match="lock timeout") as refused:
            await pool.transaction(wait_for_the_lock)
        assert isinstance(refused.value, DatabaseUnavailable)  # the API answers 503
        release.callback(None)
        await holding

        assert await pool.query("SELECT pg_backend_pid()") == [(pid,)]  # the same session
        rows = await other.query(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = 4343 AND granted"
        )
        assert rows == [(pid,)]  # its lock held all along
        assert not pool.unavailable
        assert captured_log.warnings() == []
    finally:
        if not release.called:
            release.callback(None)
        await pool.close()
        await other.close()


@pytest_twisted.ensureDeferred
async def test_sessions_name_their_process_to_the_server(db: Database, dsn: str) -> None:
    """An operator reading pg_stat_activity tells which process of which machine each
    session belongs to: the name the master gives the builders, ``buildmaster (HOST pid N)``."""
    rows = await db.query(
        "SELECT DISTINCT application_name FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND backend_type = 'client backend'"
    )
    [(mine,)] = await db.query(
        "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
    )
    assert mine == f"buildmaster ({socket.gethostname()} pid {os.getpid()})"[:63]
    assert mine.endswith(f" pid {os.getpid()})")
    assert rows == [(mine,)]  # every connection of the pool

    # a long host name is shortened, never the pid: the server keeps the whole name
    long = application_name(pid=4194304, host="h" * 80 + ".example.org")
    assert long.startswith("buildmaster (hhh") and long.endswith(" pid 4194304)")

    def read_back() -> str:
        conn = psycopg2.connect(dsn, application_name=long)
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW application_name")
                return str(cur.fetchone()[0])
        finally:
            conn.close()

    assert await threads.deferToThread(read_back) == long


@pytest_twisted.ensureDeferred
async def test_a_name_given_in_the_dsn_is_the_sessions_name(reactor: Any, dsn: str) -> None:
    """An operator who names the master's sessions (``application_name`` in the DSN, or
    PGAPPNAME) sees that name: the product's own is only the fallback."""
    named = Database(reactor, f"{dsn} application_name=ops-master-2", size=2)
    await named.connect()
    try:
        [(name,)] = await named.query(
            "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        )
        assert name == "ops-master-2"
    finally:
        await named.close()
