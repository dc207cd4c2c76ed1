"""The connection pool: txpostgres connections that reconnect, and errors as our own types.

Long: the pool, its reconnection, its outage log and the translation of psycopg2's errors into
ours are one piece: each depends on the others' state.

Everything here returns Deferreds and never blocks the reactor: txpostgres drives psycopg2's
asynchronous connections from the reactor's file-descriptor events.

Queries are written as::

    rows = await db.query("SELECT id, name FROM builder WHERE name = %s", (name,))

and multi-statement changes as an ``async def`` taking a :class:`Transaction`::

    async def rename(tx: Transaction) -> None:
        await tx.execute("UPDATE builder SET name = %s WHERE id = %s", (new, builder_id))
        await tx.execute("INSERT INTO event ...")

    await db.transaction(rename)

which runs in one database transaction (committed when the function returns, rolled back
when it raises).

When the server goes away, every connection reconnects on its own (with backoff) and
statements fail with :class:`DatabaseUnavailable` meanwhile. The log says it once: one line
when the database goes away, one a minute while it stays away, one when it is back
(:class:`OutageLog`); :meth:`Database.explains` lets the loops that hit the outage stay
quiet about it.

The statements the master runs for every build pass ``prepared=True``: each connection then
prepares the statement once (``PREPARE``) and afterwards only executes it (``EXECUTE``), so
PostgreSQL does not parse and plan the same text again for every build (planning the
dispatch context's joins cost more than running them).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from functools import lru_cache
from typing import Any, TypeVar

import attrs
import psycopg2
import psycopg2.errors
from twisted.internet import defer, error, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, retrying, txpostgres

__all__ = [
    "Database",
    "application_name",
    "Transaction",
    "DatabaseError",
    "ConstraintViolation",
    "DatabaseUnavailable",
    "NotFound",
    "OutageLog",
    "StatementRefused",
]

T = TypeVar("T")
_log = Logger()
Row = tuple[Any, ...]


#: PostgreSQL keeps the first 63 bytes of an ``application_name`` (NAMEDATALEN - 1)
_NAME_LIMIT = 63


def application_name(pid: int | None = None, host: str | None = None) -> str:
    """What a process's sessions call themselves (``pg_stat_activity.application_name``):
    ``buildmaster (HOST pid N)``, as the master names itself to the builders, so that an
    operator tells which master (or tool) a session belongs to. ``pid`` and ``host`` are
    this process's and this machine's unless given. A long host name is shortened so that
    the pid survives PostgreSQL's limit; characters other than printable ASCII are replaced
    (the server would turn them into ``?``)."""
    pid = os.getpid() if pid is None else pid
    host = socket.gethostname() if host is None else host
    host = "".join(c if " " <= c <= "~" else "?" for c in host)
    room = _NAME_LIMIT - len(f"buildmaster ( pid {pid})")
    return f"buildmaster ({host[:room]} pid {pid})"


class DatabaseError(Exception):
    """Something went wrong in the database layer."""


class ConstraintViolation(DatabaseError):
    """A change was refused by a constraint: the state it would create is impossible.

    :ivar constraint: the name of the constraint (or ``None`` when PostgreSQL gave none).
    :ivar detail: PostgreSQL's explanation.
    """

    def __init__(self, constraint: str | None, detail: str) -> None:
        super().__init__(f"refused by constraint {constraint}: {detail}" if constraint else detail)
        self.constraint = constraint
        self.detail = detail


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached right now; the pool is reconnecting."""


class StatementRefused(DatabaseUnavailable):
    """The server cancelled or refused a statement on a working connection (a lock or
    statement timeout, no disk space, out of memory): the statement's transaction is lost,
    the connection stays in service. Like :class:`DatabaseUnavailable`, worth trying again
    later."""


class NotFound(DatabaseError, LookupError):
    """The row asked for does not exist."""


_RETRYABLE = (psycopg2.errors.SerializationFailure, psycopg2.errors.DeadlockDetected)


def translate_failure(failure: Failure) -> Failure:
    """Turn a psycopg2 / txpostgres failure into one of our :class:`DatabaseError` types."""
    exc = failure.value
    if isinstance(exc, DatabaseError):
        return failure
    if isinstance(exc, psycopg2.IntegrityError):
        diag = exc.diag
        detail = diag.message_primary or str(exc).strip()
        if diag.message_detail:
            detail = f"{detail} ({diag.message_detail})"
        return Failure(ConstraintViolation(diag.constraint_name, detail))
    if isinstance(exc, reconnection.ConnectionDead) or _ends_session(exc):
        return Failure(
            DatabaseUnavailable(f"database unavailable: {str(exc).strip() or type(exc).__name__}")
        )
    if isinstance(exc, psycopg2.OperationalError) and not isinstance(exc, _RETRYABLE):
        return Failure(StatementRefused(f"the database refused a statement: {_first_line(exc)}"))
    return failure


#: SQLSTATEs of an error after which the server has ended the session: an administrator's
#: or a crash's shutdown, a server starting or stopping, an idle session or transaction
#: timed out (besides class 08, connection exceptions)
_SESSION_ENDED = frozenset({"57P01", "57P02", "57P03", "57P05", "25P03"})


def _ends_session(exc: BaseException | None) -> bool:
    """Whether the connection ``exc`` came from is gone. An error the server raised for one
    statement (a lock or statement timeout, a deadlock, no disk space) leaves it usable:
    reconnecting for those would end the session's locks and notifications for nothing."""
    if isinstance(exc, psycopg2.InterfaceError | txpostgres.RollbackFailed | error.ConnectionLost):
        return True
    if isinstance(exc, psycopg2.OperationalError):
        code = exc.pgcode
        return code is None or code.startswith("08") or code in _SESSION_ENDED
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Transaction:
    """The handle an interaction gets: run statements inside one database transaction."""

    def __init__(self, cursor: txpostgres.Cursor) -> None:
        self._cursor = cursor

    async def query(
        self, sql: str, args: Sequence[Any] | dict[str, Any] | None = None
    ) -> list[Row]:
        """Run ``sql`` and return all its rows."""
        cursor = await self._cursor.execute(sql, args)
        return list(cursor.fetchall())

    async def query_one(
        self, sql: str, args: Sequence[Any] | dict[str, Any] | None = None
    ) -> Row | None:
        """Run ``sql`` and return its first row, or ``None``."""
        cursor = await self._cursor.execute(sql, args)
        row = cursor.fetchone()
        return tuple(row) if row is not None else None

    async def execute(self, sql: str, args: Sequence[Any] | dict[str, Any] | None = None) -> int:
        """Run ``sql`` and return how many rows it touched."""
        cursor = await self._cursor.execute(sql, args)
        return int(cursor.rowcount)


def _connection_is_dead(failure: Failure) -> bool:
    return _ends_session(failure.value)


#: At most this many statements are prepared on one connection; beyond, they run unprepared.
MAX_PREPARED = 200

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s|%%")


@attrs.frozen
class PreparedStatement:
    """A statement written with psycopg2 placeholders, as a server-side prepared statement.

    :ivar name: the statement's name on the server (derived from its text).
    :ivar prepare: the ``PREPARE`` command (placeholders turned into ``$n``).
    :ivar keys: for named placeholders, the argument names in ``$n`` order; ``None`` for
        positional ``%s`` placeholders.
    :ivar count: how many parameters it takes.
    """

    name: str
    prepare: str
    keys: tuple[str, ...] | None
    count: int

    @property
    def execute(self) -> str:
        """The ``EXECUTE`` command, with psycopg2 placeholders for the arguments."""
        if not self.count:
            return f"EXECUTE {self.name}"
        return f"EXECUTE {self.name} ({', '.join(['%s'] * self.count)})"

    def arguments(self, args: Sequence[Any] | dict[str, Any] | None) -> tuple[Any, ...]:
        """The arguments of ``EXECUTE``, in parameter order."""
        if self.keys is not None:
            if not isinstance(args, dict):
                raise TypeError(f"{self.name} takes named arguments {self.keys}")
            return tuple(args[k] for k in self.keys)
        values = tuple(args or ())
        if len(values) != self.count:
            raise TypeError(f"{self.name} takes {self.count} arguments, not {len(values)}")
        return values


@lru_cache(maxsize=512)
def prepared_statement(sql: str) -> PreparedStatement:
    """The prepared form of ``sql`` (cached by its text)."""
    keys: dict[str, int] = {}
    positional = 0

    def number(match: re.Match[str]) -> str:
        nonlocal positional
        text = match.group(0)
        if text == "%%":
            return "%"
        if match.group(1) is None:
            positional += 1
            return f"${positional}"
        return f"${keys.setdefault(match.group(1), len(keys) + 1)}"

    body = _PLACEHOLDER.sub(number, sql)
    if keys and positional:
        raise ValueError("a statement mixes named and positional placeholders")
    name = "bm_" + hashlib.sha1(sql.encode()).hexdigest()[:16]
    return PreparedStatement(
        name=name,
        prepare=f"PREPARE {name} AS {body}",
        keys=tuple(keys) if keys else None,
        count=len(keys) or positional,
    )


class _Connection(txpostgres.Connection):
    """A txpostgres connection that reports a server going away as a lost connection, and
    remembers which statements it prepared (forgotten when it reconnects: a new session).

    An idle connection is watched for NOTIFY events; when the server closes it, txpostgres
    raises out of ``doRead`` and the reactor logs an "Unhandled Error". Returning the loss
    instead makes the reactor call ``connectionLost``, which starts the reconnection.
    """

    prepared: set[str]
    unprepared: bool

    def connect(self, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        self.prepared = set()
        self.unprepared = False
        return super().connect(*args, **kwargs)

    def run_prepared(
        self, sql: str, args: Sequence[Any] | dict[str, Any] | None, fetch: bool
    ) -> defer.Deferred[Any]:
        """Run ``sql`` as a prepared statement (preparing it first on this connection if
        needed), one at a time with everything else on this connection. When the session has
        lost its prepared statements (``DISCARD ALL``, a connection pooler between us and the
        server), it runs unprepared, and so does everything on this connection until it
        reconnects."""
        statement = prepared_statement(sql)
        values = statement.arguments(args)  # a wrong call fails here, not on the server
        return self._doit(self._run_prepared, statement, values, fetch, sql, args)

    def _run_prepared(
        self,
        statement: PreparedStatement,
        values: tuple[Any, ...],
        fetch: bool,
        sql: str,
        args: Sequence[Any] | dict[str, Any] | None,
    ) -> defer.Deferred[Any]:
        def result(d: defer.Deferred[Any]) -> defer.Deferred[Any]:
            if fetch:
                return d.addCallback(lambda c: c.fetchall())
            return d.addCallback(lambda c: int(c.rowcount))

        def plain(_: object = None) -> defer.Deferred[Any]:
            return result(self.cursor().execute(sql, args))

        def give_up_preparing(failure: Failure) -> defer.Deferred[Any]:
            failure.trap(
                psycopg2.errors.InvalidSqlStatementName, psycopg2.errors.DuplicatePreparedStatement
            )
            if not self.unprepared:
                self.unprepared = True
                _log.warn(
                    "The database session lost its prepared statements ({error});"
                    " this connection runs its statements unprepared until it reconnects",
                    error=str(failure.value).strip(),
                )
            self.prepared.clear()
            return plain()

        def execute(_: object = None) -> defer.Deferred[Any]:
            d = result(self.cursor().execute(statement.execute, values))
            return d.addErrback(give_up_preparing)

        if self.unprepared:
            return plain()
        if statement.name in self.prepared:
            return execute()

        def prepared(_: object) -> defer.Deferred[Any]:
            self.prepared.add(statement.name)
            return execute()

        d = self.cursor().execute(statement.prepare)
        return d.addCallbacks(prepared, give_up_preparing)

    def doRead(self) -> Any:
        try:
            txpostgres._PollingMixin.doRead(self)
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as e:
            return error.ConnectionLost(str(e).strip())
        if not self._connection.closed:
            self.checkForNotifies()
        if self._connection.closed or self.fileno() < 0:
            return error.ConnectionLost("the database connection was closed")
        self.reactor.addReader(self)
        return None


def _reason(failure: Failure) -> str:
    text = str(failure.value).strip()
    return text.splitlines()[0] if text else type(failure.value).__name__


class OutageLog:
    """What the log says about the database going away: one warning when the first
    connection is lost, one every ``remind_every`` seconds while any is still away (with the
    last error), and one line when every connection is back.

    :param clock: IReactorTime for the reminders.
    """

    _log = Logger()

    def __init__(self, clock: Any, remind_every: float = 60.0) -> None:
        self._clock = clock
        self._remind_every = remind_every
        self._away: set[object] = set()
        self._since: float | None = None
        self._reminder: Any = None
        self._last_error = ""

    @property
    def unavailable(self) -> bool:
        """Whether an outage is going on (its first line was logged, its last not yet)."""
        return self._since is not None

    def lost(self, connection: object, reason: str) -> None:
        """``connection`` was lost for ``reason`` and is reconnecting."""
        self._away.add(connection)
        self._last_error = reason
        if self._since is None:
            self._since = self._clock.seconds()
            self._log.warn("Lost the database ({reason}); reconnecting", reason=reason)
            self._reminder = self._clock.callLater(self._remind_every, self._remind)

    def failed_again(self, reason: str) -> None:
        """An attempt to reconnect failed for ``reason``."""
        self._last_error = reason

    def recovered(self, connection: object) -> None:
        """``connection`` is connected again."""
        self._away.discard(connection)
        if self._since is not None and not self._away:
            away = self._clock.seconds() - self._since
            self._since = None
            self._cancel_reminder()
            self._log.info("The database is back after {seconds:.0f} s", seconds=away)

    def forget(self, connection: object) -> None:
        """``connection`` is closed for good (the pool is closing)."""
        self._away.discard(connection)
        if not self._away:
            self._since = None
            self._cancel_reminder()

    def _remind(self) -> None:
        assert self._since is not None
        minutes = (self._clock.seconds() - self._since) / 60
        self._log.warn(
            "The database is still away after {minutes:.0f} min ({reason}); reconnecting",
            minutes=minutes,
            reason=self._last_error,
        )
        self._reminder = self._clock.callLater(self._remind_every, self._remind)

    def _cancel_reminder(self) -> None:
        if self._reminder is not None and self._reminder.active():
            self._reminder.cancel()
        self._reminder = None


class _Detector(reconnection.DeadConnectionDetector):
    """A DeadConnectionDetector whose reconnection attempts can be stopped on shutdown, and
    which tells the pool's :class:`OutageLog` (once its connection was in service)."""

    def __init__(
        self, reactor: Any, outage: OutageLog, on_dead: Callable[[], None] | None = None
    ) -> None:
        super().__init__(
            deathChecker=_connection_is_dead,
            reconnectionIterator=lambda: retrying.simpleBackoffIterator(
                initialDelay=0.1, maxDelay=2.0, factor=2.0, maxRetries=0, now=True
            ),
            reactor=reactor,
        )
        self._reconnecting: defer.Deferred[Any] | None = None
        self._outage = outage
        self._on_dead = on_dead
        #: set once the connection first connected: failing to connect at all is not an outage
        self.in_service = False
        self.stopped = False

    def _reconnect_once(self) -> defer.Deferred[Any]:
        def failed(failure: Failure) -> Failure:
            self._outage.failed_again(_reason(failure))
            return failure

        return defer.maybeDeferred(self.reconnect).addErrback(failed)

    def startReconnecting(self, f: Failure) -> None:
        if self.stopped:
            return
        if self.in_service:
            self._outage.lost(self, _reason(f))
        if self._on_dead is not None:
            self._on_dead()
        call = retrying.RetryingCall(self._reconnect_once)
        call.reactor = self.reactor
        d = call.start(self.reconnectionIterator())
        self._reconnecting = d

        def recovered(_: object) -> Any:
            self._reconnecting = None
            self._outage.recovered(self)
            return self.connectionRecovered()

        def gave_up(failure: Failure) -> None:
            self._reconnecting = None
            if not self.stopped:  # never happens: reconnection retries forever
                _log.failure("Reconnecting to the database stopped", failure)

        d.addCallbacks(recovered, gave_up)

    def stop(self) -> None:
        """Stop reconnecting (the pool is closing)."""
        self.stopped = True
        self._outage.forget(self)
        reconnecting, self._reconnecting = self._reconnecting, None
        if reconnecting is not None:
            try:
                reconnecting.cancel()
            except Exception:
                # txpostgres cannot cancel a connection attempt in flight; closing the
                # half-open connection below ends it
                pass
        if self.reconnectable is not None:
            try:
                self.reconnectable.close()
            except Exception:
                pass


class Database:
    """A small pool of txpostgres connections to one PostgreSQL database.

    :param reactor: provides IReactorFDSet and IReactorTime (the connections are driven by it).
    :param dsn: a libpq connection string.
    :param size: how many connections to open.
    """

    _log = Logger()

    def __init__(self, reactor: Any, dsn: str, size: int = 4) -> None:
        self._reactor = reactor
        self.dsn = dsn
        self.size = size
        self._cooperator = task.Cooperator(scheduler=lambda f: reactor.callLater(0, f))
        self._connections: list[_Connection] = []
        self._listener: txpostgres.Connection | None = None
        self._channels: dict[str, list[Callable[[str], object]]] = {}
        self._session_lost: list[Callable[[], object]] = []
        self._session_dropped: list[Callable[[], object]] = []
        self._session_opening: defer.Deferred[txpostgres.Connection] | None = None
        #: seconds of silence after which the server ends the session (``None``: its defaults)
        self.session_timeout: float | None = None
        self._closed = False
        self.outage = OutageLog(reactor)

    @property
    def clock(self) -> Any:
        """The reactor the connections run on (IReactorTime)."""
        return self._reactor

    def _connect_kwargs(self) -> dict[str, Any]:
        # plan_cache_mode only concerns prepared statements: ours look rows up by key, so
        # the plan never depends on the arguments and planning once per connection is enough.
        # jit is off: our statements are short lookups, and a generic plan's estimates over
        # big tables (a million builds) pass jit_above_cost, so PostgreSQL compiled the
        # builders' view at every execution (850 ms of JIT for a 40 ms statement).
        # The client's keepalives: a statement on a connection whose packets are dropped
        # fails after CLIENT_DEAD_AFTER seconds (and the connection reconnects) rather than
        # after the kernel's quarter of an hour of retransmissions.
        # The name is taken at each connection: a process that forks (a daemon) names its own.
        # It is libpq's fallback: an application_name in the DSN or PGAPPNAME wins.
        return {
            "options": "-c timezone=UTC -c plan_cache_mode=force_generic_plan -c jit=off",
            "fallback_application_name": application_name(),
            **_keepalives(CLIENT_DEAD_AFTER),
        }

    def fence_session(self, lease: float) -> None:
        """Make the server end the session connection (freeing its advisory locks) only
        after ``2 x lease`` seconds without a word from this side, and never before: per
        session TCP keepalives and user timeout (PostgreSQL's ``tcp_keepalives_idle``,
        ``_interval``, ``_count`` and ``tcp_user_timeout``; :mod:`buildmaster.ownership`
        gives the builders up after ``lease``). Takes effect with the next session."""
        self.session_timeout = 2 * lease

    def _session_kwargs(self) -> dict[str, Any]:
        kwargs = self._connect_kwargs()
        if self.session_timeout is not None:
            idle, interval, count = _keepalive_steps(self.session_timeout)
            kwargs["options"] += (
                f" -c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval}"
                f" -c tcp_keepalives_count={count}"
                f" -c tcp_user_timeout={int(self.session_timeout * 1000)}"
            )
        return kwargs

    @property
    def unavailable(self) -> bool:
        """Whether the database is away (an outage is going on, and logged)."""
        return self.outage.unavailable

    def explains(self, error: BaseException) -> bool:
        """Whether ``error`` is the outage going on (which :attr:`outage` logs already): a
        loop that hits it need not log it again."""
        return isinstance(error, DatabaseUnavailable) and (self.unavailable or self._closed)

    def _new_connection(self, on_dead: Callable[[], None] | None = None) -> _Connection:
        detector = _Detector(self._reactor, self.outage, on_dead)
        return _Connection(reactor=self._reactor, cooperator=self._cooperator, detector=detector)

    def _session_died(self) -> None:
        if self._closed:
            return
        for dropped in list(self._session_dropped):
            try:
                dropped()
            except Exception:
                self._log.failure("A session-lost observer failed")

    async def connect(self) -> None:
        """Open the pool's connections.

        :raises DatabaseUnavailable: when the server cannot be reached.
        """
        connections = [self._new_connection() for _ in range(self.size)]
        results = await defer.DeferredList(
            [c.connect(self.dsn, **self._connect_kwargs()) for c in connections],
            consumeErrors=True,
        )
        failures = [result for ok, result in results if not ok]
        if failures:
            for c in connections:
                c.detector.stop()  # and close
            translate_failure(failures[0]).raiseException()
        for c in connections:
            c.detector.in_service = True
        self._connections = connections

    async def close(self) -> None:
        """Close every connection (pending reconnection attempts are abandoned)."""
        self._closed = True
        every = list(self._connections)
        if self._listener is not None:
            every.append(self._listener)
            self._listener = None
        self._connections = []
        for c in every:
            # let queries in flight finish before closing under them
            if c.lock.locked and not c.detector.connectionIsDead:
                await c.lock.acquire()
            c.detector.stop()  # and close

    def _pick(self) -> _Connection:
        live = [c for c in self._connections if not c.detector.connectionIsDead]
        if not live:
            if self._closed:
                raise DatabaseUnavailable("the database pool is closed")
            raise DatabaseUnavailable("database unavailable: every connection is reconnecting")
        return min(live, key=lambda c: len(c.lock.waiting) + (1 if c.lock.locked else 0))

    def query(
        self,
        sql: str,
        args: Sequence[Any] | dict[str, Any] | None = None,
        *,
        prepared: bool = False,
    ) -> defer.Deferred[list[Row]]:
        """Run one statement in its own transaction.

        :param prepared: run it as a prepared statement (for statements run again and again
            with only their arguments changing: saves PostgreSQL's parsing and planning).
        :returns: a Deferred that fires with the list of rows (tuples), or fails with a
            :class:`DatabaseError`.
        """
        try:
            d = self._run(sql, args, prepared, fetch=True)
        except (DatabaseError, TypeError, ValueError):
            return defer.fail()
        return d.addErrback(translate_failure)

    def execute(
        self,
        sql: str,
        args: Sequence[Any] | dict[str, Any] | None = None,
        *,
        prepared: bool = False,
    ) -> defer.Deferred[None]:
        """Run one statement that returns no rows, in its own transaction."""
        try:
            d = self._run(sql, args, prepared, fetch=False)
        except (DatabaseError, TypeError, ValueError):
            return defer.fail()
        return d.addCallback(lambda _: None).addErrback(translate_failure)

    def _run(
        self, sql: str, args: Sequence[Any] | dict[str, Any] | None, prepared: bool, fetch: bool
    ) -> defer.Deferred[Any]:
        conn = self._pick()
        # a soft cap: statement texts that vary (a mistake) must not fill the session
        if prepared and (
            prepared_statement(sql).name in conn.prepared or len(conn.prepared) < MAX_PREPARED
        ):
            return conn.run_prepared(sql, args, fetch)
        return conn.runQuery(sql, args) if fetch else conn.runOperation(sql, args)

    def transaction(
        self, interaction: Callable[..., Awaitable[T]], *args: Any, retries: int = 3
    ) -> defer.Deferred[T]:
        """Run ``interaction(tx, *args)`` in one transaction.

        A serialization failure or deadlock is retried (up to ``retries`` times): an
        interaction must therefore only touch the database.

        :returns: a Deferred that fires with what the interaction returned, or fails with a
            :class:`DatabaseError` (or whatever the interaction raised).
        """
        return defer.Deferred.fromCoroutine(self._transaction(interaction, args, retries))

    async def _transaction(
        self, interaction: Callable[..., Awaitable[T]], args: tuple[Any, ...], retries: int
    ) -> T:
        def run(cursor: txpostgres.Cursor) -> defer.Deferred[T]:
            return defer.Deferred.fromCoroutine(
                _as_coroutine(interaction(Transaction(cursor), *args))
            )

        for attempt in range(retries + 1):
            conn = self._pick()
            try:
                return await conn.runInteraction(run).addErrback(translate_failure)
            except _RETRYABLE:
                if attempt == retries:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    # -- LISTEN / NOTIFY -----------------------------------------------------------------

    async def _session(self) -> txpostgres.Connection:
        """The dedicated connection for LISTEN and session-level advisory locks (opened on
        first use, and again after :meth:`abandon_session`, listening again then)."""
        if self._listener is not None:
            return self._listener
        if self._closed:
            raise DatabaseUnavailable("the database pool is closed")
        if self._session_opening is None:
            self._session_opening = defer.Deferred.fromCoroutine(self._open_session())
        opening = self._session_opening
        try:
            return await opening
        finally:
            if self._session_opening is opening:
                self._session_opening = None

    async def _open_session(self) -> txpostgres.Connection:
        listener = self._new_connection(on_dead=self._session_died)
        connecting = listener.connect(self.dsn, **self._session_kwargs())
        # libpq's connect_timeout does not hold for asynchronous connections: ours does
        connecting.addTimeout(SESSION_CONNECT_TIMEOUT, self._reactor)
        try:
            await connecting
        except BaseException:
            listener.detector.stop()  # and close the half-open connection
            failure = Failure()
            if failure.check(defer.TimeoutError, defer.CancelledError):
                raise DatabaseUnavailable(
                    "database unavailable: a new session did not open within"
                    f" {SESSION_CONNECT_TIMEOUT:g} s"
                ) from None
            translate_failure(failure).raiseException()
            raise  # pragma: no cover
        if self._closed:
            listener.detector.stop()
            raise DatabaseUnavailable("the database pool is closed")
        listener.detector.in_service = True
        listener.addNotifyObserver(self._notified)
        listener.detector.addRecoveryHandler(self._relisten)
        self._listener = listener
        if self._channels:  # a session that replaces an abandoned one
            await self._relisten_async()
        return listener

    def abandon_session(self) -> bool:
        """Give the session connection up (its statements may never come back: a cut
        network): close it without waiting and report it dropped (``on_session_dropped``);
        the next session statement opens a new session. Returns whether one was open."""
        listener, self._listener = self._listener, None
        if listener is None:
            return False
        listener.detector.stop()  # and close: the server ends the session once it hears
        self._session_died()
        return True

    async def listen(self, channel: str, callback: Callable[[str], object]) -> None:
        """Call ``callback(payload)`` for every NOTIFY on ``channel``.

        Uses one dedicated connection for all channels (the pool's connections are shared
        by queries); after a reconnection the channels are listened to again and every
        observer is called with an empty payload (meaning: anything may have changed).
        """
        listener = await self._session()
        first = channel not in self._channels
        self._channels.setdefault(channel, []).append(callback)
        if first:
            await listener.runOperation(f'LISTEN "{_identifier(channel)}"')

    async def session_query(
        self, sql: str, args: Sequence[Any] | dict[str, Any] | None = None
    ) -> list[Row]:
        """Run a query on the session connection (for session-level advisory locks, which
        live as long as that connection: ``on_session_lost`` callbacks hear when it drops).
        """
        listener = await self._session()
        try:
            return list(await listener.runQuery(sql, args))
        except Exception:
            translate_failure(Failure()).raiseException()
            raise  # pragma: no cover

    def on_session_lost(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` when the session connection was lost and came back."""
        self._session_lost.append(callback)

    def on_session_dropped(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` as soon as the session connection is found lost (before it
        is back): its LISTENs and session-level advisory locks are gone with it."""
        self._session_dropped.append(callback)

    async def _relisten_async(self) -> None:
        assert self._listener is not None
        for lost in self._session_lost:
            lost()
        for channel in self._channels:
            await self._listener.runOperation(f'LISTEN "{_identifier(channel)}"')
        # anything notified while we were away was lost: tell every observer
        for channel, callbacks in self._channels.items():
            for callback in callbacks:
                self._call_observer(channel, callback, "")

    def _relisten(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._relisten_async())

    def _notified(self, notify: Any) -> None:
        for callback in self._channels.get(notify.channel, ()):
            self._call_observer(notify.channel, callback, notify.payload)

    def _call_observer(self, channel: str, callback: Callable[[str], object], payload: str) -> None:
        try:
            result = callback(payload)
        except Exception:
            self._log.failure("NOTIFY observer for {channel} failed", channel=channel)
            return
        if isinstance(result, defer.Deferred):
            result.addErrback(
                lambda f: self._log.failure(
                    "NOTIFY observer for {channel} failed", f, channel=channel
                )
            )

    async def notify(self, channel: str, payload: str = "") -> None:
        """Send a NOTIFY (outside any transaction)."""
        await self.execute("SELECT pg_notify(%s, %s)", (channel, payload))


#: Seconds a pool connection may go unanswered before the client gives it up (TCP).
CLIENT_DEAD_AFTER = 60.0
#: Seconds a new session connection may take to open.
SESSION_CONNECT_TIMEOUT = 10.0


def _keepalive_steps(dead_after: float) -> tuple[int, int, int]:
    """TCP keepalive (idle, interval, count) in whole seconds, whose first probe comes after
    half of ``dead_after`` and whose last unanswered one ends the connection no sooner than
    ``dead_after``."""
    idle = max(1, math.ceil(dead_after / 2))
    interval = max(1, math.ceil(dead_after / 8))
    count = max(1, math.ceil((dead_after - idle) / interval))
    return idle, interval, count


def _keepalives(dead_after: float) -> dict[str, Any]:
    """libpq's keepalive and user-timeout parameters for ``dead_after`` seconds."""
    idle, interval, count = _keepalive_steps(dead_after)
    return {
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": interval,
        "keepalives_count": count,
        "tcp_user_timeout": int(dead_after * 1000),
    }


def _identifier(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"not a plain identifier: {name!r}")
    return name


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable
