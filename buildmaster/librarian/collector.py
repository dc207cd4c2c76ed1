"""Garbage collection: expired aliases, unreferenced contents, orphan and stale files.

One pass (:meth:`GarbageCollector.collect`):

1. deletes aliases whose expiry has passed, unless a row of another table still refers to
   them (a chroot, a source file, a build log, a build file: every foreign key to
   ``libraryfilealias``, read from the catalog, so tables added later are covered too). Each
   batch locks its aliases (``FOR UPDATE SKIP LOCKED``) and checks again, so an alias that
   someone is pointing a new row at is skipped, never half-deleted;
2. deletes contents no alias refers to, with their files: under each content's advisory lock
   (see :mod:`buildmaster.librarian.catalog`), re-checked after taking it, file removed
   before the lock is released. An upload moves its file into place *before* it takes the
   lock to record it, so a file written less than ``fresh_grace`` seconds ago is never
   removed (it is renamed aside atomically, judged by its age, and put back if fresh), and
   the row of such a content stays too;
3. deletes content files that no content row describes (left by a crash between moving a
   file into place and committing its row), under the same lock, after the same re-check,
   unless they are fresh;
4. deletes temporary files of uploads that have not written for ``temp_grace`` seconds,
   except those of uploads in flight in this process.

It is safe to run while uploads are in flight, in this process or another (the ``gc``
command, another master sharing the files directory), and several collectors may run at once:
the locks are the database's, and the ages of files are judged by the earlier of this host's
clock and the filesystem's (a file server's clock that runs behind this host's does not make
a file just written look old).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from buildmaster.librarian.catalog import lock_content, lock_key
from buildmaster.librarian.storage import ContentStore, StoredFile
from buildmaster.librarian.upload import ThreadRunner
from buildmaster.store.database import Database, DatabaseUnavailable, Transaction

__all__ = ["GarbageCollector", "GarbageStats", "GarbageCollectorService"]

#: How long a content file just put in place is safe from collection.
DEFAULT_FRESH_GRACE = 600.0
_ALIAS_BATCH = 1000
_CONTENT_BATCH = 200
_FILE_BATCH = 1000


@attrs.frozen
class GarbageStats:
    """What one pass removed."""

    expired_aliases: int = 0
    contents: int = 0
    content_bytes: int = 0
    orphan_files: int = 0
    temp_files: int = 0

    def __str__(self) -> str:
        return (
            f"{self.expired_aliases} expired aliases, {self.contents} contents"
            f" ({self.content_bytes} bytes), {self.orphan_files} orphan files,"
            f" {self.temp_files} stale temporary files"
        )


def _batches(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class GarbageCollector:
    """Collects the librarian's garbage in ``store`` and ``db``.

    :param clock: what "now" is for expiry (``seconds()``).
    :param run: calls a blocking function in a thread (file deletion, directory scans).
    :param active: paths of temporary files of uploads in flight in this process.
    """

    _log = Logger()

    def __init__(
        self,
        clock: Any,
        db: Database,
        store: ContentStore,
        run: ThreadRunner,
        active: Callable[[], Iterable[Path]] = frozenset,
    ) -> None:
        self._clock = clock
        self._db = db
        self._store = store
        self._run = run
        self._active = active
        self._unreferenced_sql: str | None = None
        #: seconds during which a content file just put in place is never deleted (its
        #: upload records it right after; see ContentStore.remove_unless_fresh)
        self.fresh_grace = DEFAULT_FRESH_GRACE
        #: the files' clock when the latest pass began (None: before the first)
        self._filesystem_now: float | None = None

    def collect(self, temp_grace: float = 86400.0) -> defer.Deferred[GarbageStats]:
        """One pass (see the module docstring).

        :param temp_grace: seconds an upload's temporary file may go unwritten before it is
            taken for abandoned.
        :returns: a Deferred that fires with :class:`GarbageStats`, or fails with a
            :class:`~buildmaster.store.database.DatabaseError` or an ``OSError`` (what was
            done before stays done).
        """
        return defer.Deferred.fromCoroutine(self._collect(temp_grace))

    async def _collect(self, temp_grace: float) -> GarbageStats:
        now = datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.UTC)
        # the ages of files are judged by the clock that stamped them too (a file server's)
        self._filesystem_now = await self._run(self._store.filesystem_now)
        aliases = await self._expired_aliases(now)
        contents, content_bytes = await self._unreferenced_contents()
        orphans = await self._orphan_files()
        temps = await self._stale_temps(temp_grace)
        stats = GarbageStats(aliases, contents, content_bytes, orphans, temps)
        self._log.info("Librarian garbage collection removed {stats}", stats=str(stats))
        return stats

    # -- aliases -------------------------------------------------------------------------------

    async def _unreferenced(self) -> str:
        """SQL: the alias ``a`` is referred to by no foreign key."""
        if self._unreferenced_sql is None:
            rows = await self._db.query(
                "SELECT c.conrelid::regclass::text, quote_ident(a.attname)"
                " FROM pg_constraint c JOIN pg_attribute a"
                "  ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
                " WHERE c.contype = 'f' AND c.confrelid = 'libraryfilealias'::regclass"
                " ORDER BY 1, 2"
            )
            clauses = [
                f"NOT EXISTS (SELECT 1 FROM {table} r WHERE r.{column} = a.id)"
                for table, column in rows
            ]
            self._unreferenced_sql = " AND ".join(clauses) or "TRUE"
        return self._unreferenced_sql

    async def _expired_aliases(self, now: datetime.datetime) -> int:
        unreferenced = await self._unreferenced()

        async def delete_batch(tx: Transaction) -> tuple[int, int]:
            rows = await tx.query(
                "SELECT a.id FROM libraryfilealias a"
                f" WHERE a.expires <= %s AND {unreferenced}"
                " ORDER BY a.id LIMIT %s FOR UPDATE SKIP LOCKED",
                (now, _ALIAS_BATCH),
            )
            if not rows:
                return 0, 0
            # locked now: nobody can point a new row at them; check again with a fresh view
            deleted = await tx.query(
                f"DELETE FROM libraryfilealias a WHERE a.id = ANY(%s) AND {unreferenced}"
                " RETURNING a.id",
                ([r[0] for r in rows],),
            )
            return len(rows), len(deleted)

        total = 0
        while True:
            seen, deleted = await self._db.transaction(delete_batch)
            total += deleted
            if seen < _ALIAS_BATCH:
                return total

    # -- contents ------------------------------------------------------------------------------

    async def _unreferenced_contents(self) -> tuple[int, int]:
        count = 0
        freed = 0
        after = 0
        while True:
            rows = await self._db.query(
                "SELECT c.id, c.sha256 FROM libraryfilecontent c WHERE c.id > %s"
                " AND NOT EXISTS (SELECT 1 FROM libraryfilealias a WHERE a.content = c.id)"
                " ORDER BY c.id LIMIT %s",
                (after, _CONTENT_BATCH),
            )
            if not rows:
                return count, freed
            after = rows[-1][0]
            deleted = await self._db.transaction(
                self.delete_unreferenced_contents, [r[0] for r in rows], [r[1] for r in rows]
            )
            count += len(deleted)
            freed += sum(size for _, size in deleted)
            if len(rows) < _CONTENT_BATCH:
                return count, freed

    async def _lock_all(self, tx: Transaction, sha256s: Iterable[str]) -> None:
        # one order for everyone: two collectors never deadlock
        for sha256 in sorted(set(sha256s), key=lambda s: (lock_key(s), s)):
            await lock_content(tx, sha256)

    async def delete_unreferenced_contents(
        self, tx: Transaction, ids: list[int], sha256s: list[str]
    ) -> list[tuple[str, int]]:
        """In ``tx``: delete those of the contents ``ids`` (with SHA-256s ``sha256s``) that no
        alias refers to, and their files, under their locks. The ``(sha256, size)`` deleted."""
        await self._lock_all(tx, sha256s)
        # under the locks nobody records a new alias for them: check again, with a fresh view
        candidates = await tx.query(
            "SELECT c.id, c.sha256, c.filesize FROM libraryfilecontent c WHERE c.id = ANY(%s)"
            " AND NOT EXISTS (SELECT 1 FROM libraryfilealias a WHERE a.content = c.id)",
            (ids,),
        )
        gone: list[tuple[str, int]] = []
        doomed = []
        for content_id, sha256, size in candidates:
            # an upload may have just put these bytes in place, to be recorded once it has
            # the lock: a fresh file is left alone, and so is its row
            removed = await self._run(
                self._store.remove_unless_fresh, sha256, self.fresh_grace, self._filesystem_now
            )
            if removed is not False:
                doomed.append(content_id)
                gone.append((str(sha256), int(size)))
        if doomed:
            await tx.execute("DELETE FROM libraryfilecontent WHERE id = ANY(%s)", (doomed,))
        return gone

    # -- files ---------------------------------------------------------------------------------

    async def _orphan_files(self) -> int:
        files: list[StoredFile] = await self._run(lambda: list(self._store.scan()))
        removed = 0
        for batch in _batches(files, _FILE_BATCH):
            names = [f.sha256 for f in batch]
            known = await self._db.query(
                "SELECT sha256 FROM libraryfilecontent WHERE sha256 = ANY(%s)", (names,)
            )
            orphans = sorted(set(names) - {r[0] for r in known})
            if orphans:
                removed += await self._db.transaction(self._delete_orphans, orphans)
        return removed

    async def _delete_orphans(self, tx: Transaction, sha256s: list[str]) -> int:
        await self._lock_all(tx, sha256s)
        known = await tx.query(
            "SELECT sha256 FROM libraryfilecontent WHERE sha256 = ANY(%s)", (sha256s,)
        )
        still = set(sha256s) - {r[0] for r in known}
        removed = 0
        for sha256 in sorted(still):
            # a fresh file belongs to an upload that is about to record it
            if await self._run(
                self._store.remove_unless_fresh, sha256, self.fresh_grace, self._filesystem_now
            ):
                self._log.info("Removed orphan librarian file {sha256}", sha256=sha256)
                removed += 1
        return removed

    async def _stale_temps(self, temp_grace: float) -> int:
        stale = await self._run(
            self._store.stale_temps, temp_grace, frozenset(self._active()), self._filesystem_now
        )
        for path in stale:
            await self._run(self._store.discard, path)
            self._log.info("Removed abandoned upload {path}", path=str(path))
        return len(stale)


class GarbageCollectorService(service.Service):
    """Runs a :class:`GarbageCollector` every ``interval`` seconds on ``clock`` (first run
    one interval after start). A failed pass is logged and the next one runs as planned;
    passes never overlap; ``stopService`` waits for a pass in progress."""

    _log = Logger()

    def __init__(
        self, collector: GarbageCollector, clock: Any, interval: float, temp_grace: float = 86400.0
    ) -> None:
        self._collector = collector
        self._clock = clock
        self.interval = interval
        self.temp_grace = temp_grace
        self._loop: task.LoopingCall | None = None
        self._running = False
        self._stop_waiters: list[defer.Deferred[None]] = []
        self.passes = 0

    def startService(self) -> None:
        super().startService()
        loop = task.LoopingCall(self._pass)
        loop.clock = self._clock
        self._loop = loop
        loop.start(self.interval, now=False)

    def _pass(self) -> defer.Deferred[None]:
        self._running = True
        return defer.Deferred.fromCoroutine(self._safe_pass())

    async def _safe_pass(self) -> None:
        try:
            await self._collector.collect(self.temp_grace)
        except DatabaseUnavailable as e:
            self._log.warn("Librarian garbage collection skipped: {error}", error=str(e))
        except Exception:
            self._log.failure("Librarian garbage collection failed")
        finally:
            self.passes += 1
            self._running = False
            waiters, self._stop_waiters = self._stop_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if not self._running:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._stop_waiters.append(waiter)
        return waiter
