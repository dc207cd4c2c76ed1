"""Uploads: bytes streamed to a temporary file in a thread, hashed as they go, then recorded.

Long: one upload's life (batches, threads, digests, the producer and consumer interplay, the
checks at the end) is one state machine; split, its state would be spread over modules.

An :class:`Upload` takes chunks from the reactor thread (``write``, or as an ``IConsumer`` fed
by a producer) and hands them, in batches of up to 4 MiB, to three thread jobs at a time: one
writes the batch to the temporary file (``O_DIRECT`` where possible, see
:class:`~buildmaster.librarian.storage.TempWriter`), one feeds MD5, one SHA-1 and SHA-256:
hashing and writing use every core. (MD5 alone is as slow as the other two together, so this
split keeps two cores evenly busy.) At most :data:`HIGH_WATER` bytes wait in memory: beyond that
``write`` returns a Deferred that fires only when there is room again, and a registered
producer is paused. ``finish`` checks the declared size and SHA-1, fsyncs, moves the file into
place and records the rows (``record``: the librarian's
:class:`~buildmaster.librarian.catalog.RecordBatcher`); on any error
the temporary file is deleted and nothing is recorded.
"""

from __future__ import annotations

import datetime
import hashlib
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from buildmaster.librarian.catalog import Hashes
from buildmaster.librarian.errors import (
    ContentMismatch,
    FileTooLarge,
    LibrarianError,
    UploadFailed,
)
from buildmaster.librarian.metadata import check_content_type, check_expires, check_filename
from buildmaster.librarian.storage import ContentStore, TempWriter

__all__ = ["Upload", "HIGH_WATER", "ThreadRunner"]

#: Bytes an upload keeps in memory (queued plus being written) before it pushes back.
HIGH_WATER = 8 * 1024 * 1024
#: ... and the level under which it takes data again.
LOW_WATER = 4 * 1024 * 1024
#: The most bytes handed to the threads at once.
BATCH = 4 * 1024 * 1024
#: An upload that ends before this many bytes arrived is written, hashed and synced in one
#: thread job at ``finish`` (a build's .changes and log are small; every thread hop costs the
#: reactor thread a little).
SMALL_UPLOAD = 256 * 1024

#: ``run(f, *args)``: call ``f`` in a thread, a Deferred of its result.
ThreadRunner = Callable[..., defer.Deferred[Any]]

_OPEN, _FINISHING, _FINISHED, _FAILED, _ABORTED = (
    "open",
    "finishing",
    "finished",
    "failed",
    "aborted",
)


class _Digests:
    """The running hashes of an upload: each fed by one thread job at a time."""

    def __init__(self) -> None:
        self.md5 = hashlib.md5()
        self.sha1 = hashlib.sha1()
        self.sha256 = hashlib.sha256()

    def feed_md5(self, batch: list[bytes]) -> None:
        for chunk in batch:
            self.md5.update(chunk)

    def feed_sha(self, batch: list[bytes]) -> None:
        for chunk in batch:
            self.sha1.update(chunk)
            self.sha256.update(chunk)

    def hashes(self, size: int) -> Hashes:
        return Hashes(
            size=size,
            sha1=self.sha1.hexdigest(),
            sha256=self.sha256.hexdigest(),
            md5=self.md5.hexdigest(),
        )


@implementer(IConsumer)
class Upload:
    """One file being added to the librarian. Make one with
    :meth:`buildmaster.librarian.Librarian.new_upload`.

    Use ``await upload.write(chunk)`` for each chunk (or register a producer), then
    ``alias_id = await upload.finish()``; or ``await upload.abort()`` to give up.

    :ivar hashes: the stored content's :class:`~buildmaster.librarian.catalog.Hashes`, once
        ``finish`` has succeeded (else ``None``).
    """

    _log = Logger()

    def __init__(
        self,
        *,
        clock: Any,
        run: ThreadRunner,
        record: Callable[..., defer.Deferred[int]],
        store: ContentStore,
        active: set[Path],
        filename: str,
        content_type: str,
        restricted: bool,
        expires: datetime.datetime | None,
        expected_size: int | None,
        expected_sha1: str | None,
        max_size: int,
        direct_io: bool = True,
    ) -> None:
        self._clock = clock
        self._record = record
        self._direct_io = direct_io
        self._run = run
        self._store = store
        self._active = active
        self.filename = filename
        self.content_type = content_type
        self.restricted = restricted
        self.expires = expires
        self.expected_size = expected_size
        self.expected_sha1 = expected_sha1.lower() if expected_sha1 else None
        #: checked too when set (see :meth:`rename`)
        self.expected_sha256: str | None = None
        self.max_size = max_size
        self.hashes: Hashes | None = None

        self._state = _OPEN
        self._error: LibrarianError | None = None
        self._received = 0
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self._inflight_bytes = 0
        self._temp: TempWriter | None = None
        self._digests = _Digests()
        self._published = False
        self._worker: defer.Deferred[None] | None = None
        self._draining = False  # the bytes go to the threads as they come (not a small file)
        self._idle_waiters: list[defer.Deferred[None]] = []
        self._room_waiters: list[defer.Deferred[None]] = []
        self._producer: Any = None  # an IPushProducer or IPullProducer
        self._streaming = False
        self._producer_paused = False
        self._pull_call: Any = None

    # -- feeding -------------------------------------------------------------------------

    @property
    def received(self) -> int:
        """How many bytes were written to this upload so far."""
        return self._received

    def write(self, data: bytes) -> defer.Deferred[None]:
        """Add ``data`` to the file.

        :returns: a Deferred that fires (with ``None``) when the upload can take more data:
            at once while less than :data:`HIGH_WATER` bytes wait, later otherwise. It never
            fails: errors are raised by the next ``write`` and by ``finish``.
        :raises FileTooLarge: when this makes the file larger than ``max_size``.
        :raises ContentMismatch: when this makes it larger than ``expected_size``.
        :raises LibrarianError: when the upload already failed, or was finished or aborted.
        """
        if self._error is not None:
            raise self._error
        if self._state != _OPEN:
            raise UploadFailed(f"upload of {self.filename!r} is {self._state}: cannot write")
        if not data:
            return defer.succeed(None)
        chunk = bytes(data)
        self._received += len(chunk)
        if self._received > self.max_size:
            self._fail(
                FileTooLarge(f"{self.filename!r} is larger than the limit of {self.max_size} bytes")
            )
            raise self._fail_error()
        if self.expected_size is not None and self._received > self.expected_size:
            self._fail(
                ContentMismatch(
                    f"{self.filename!r}: more bytes than the declared size of {self.expected_size}"
                )
            )
            raise self._fail_error()
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        self._kick()
        if self._queued() >= HIGH_WATER:
            if self._producer is not None and self._streaming and not self._producer_paused:
                self._producer_paused = True
                self._producer.pauseProducing()
            waiter: defer.Deferred[None] = defer.Deferred()
            self._room_waiters.append(waiter)
            return waiter
        if self._producer is not None and not self._streaming:
            self._want_more()
        return defer.succeed(None)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """Let ``producer`` feed this upload (IConsumer); it is paused while the upload is
        full, and stopped if the upload fails."""
        if self._producer is not None:
            raise RuntimeError(f"{self._producer!r} is already registered")
        self._producer = producer
        self._streaming = streaming
        self._producer_paused = False
        if self._error is not None:
            producer.stopProducing()
        elif not streaming:
            self._want_more()

    def unregisterProducer(self) -> None:
        self._producer = None
        if self._pull_call is not None:
            self._pull_call.cancel()
            self._pull_call = None

    def _want_more(self) -> None:
        if self._pull_call is None:
            self._pull_call = self._clock.callLater(0, self._pull)

    def _pull(self) -> None:
        self._pull_call = None
        producer = self._producer
        if producer is not None and not self._streaming and self._error is None:
            if self._state == _OPEN and self._queued() < HIGH_WATER:
                producer.resumeProducing()

    def _queued(self) -> int:
        return self._pending_bytes + self._inflight_bytes

    def _room(self) -> None:
        if self._queued() >= LOW_WATER and self._error is None:
            return
        waiters, self._room_waiters = self._room_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if self._producer is not None and self._error is None:
            if self._streaming and self._producer_paused:
                self._producer_paused = False
                self._producer.resumeProducing()
            elif not self._streaming:
                self._want_more()

    # -- the worker ------------------------------------------------------------------------

    def _kick(self) -> None:
        if not self._draining and self._state == _OPEN and self._pending_bytes < SMALL_UPLOAD:
            return  # maybe a small file: wait for more, or for finish
        if self._worker is None and self._pending and self._error is None:
            self._draining = True
            self._worker = defer.Deferred.fromCoroutine(self._drain())
            self._worker.addErrback(self._unexpected)
            self._worker.addBoth(self._worker_done)

    def _unexpected(self, failure: Failure) -> None:
        self._log.failure("Upload of {filename} broke", failure, filename=self.filename)
        self._fail(UploadFailed(f"could not store {self.filename!r}: {failure.value}"))

    def _worker_done(self, _: None) -> None:
        self._worker = None
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _idle(self) -> defer.Deferred[None]:
        if self._worker is None:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    async def _drain(self) -> None:
        """Hand the pending chunks to the threads, batch by batch, until none are left."""
        try:
            while self._pending and self._error is None:
                batch = []
                size = 0
                while self._pending and size < BATCH:
                    chunk = self._pending.popleft()
                    batch.append(chunk)
                    size += len(chunk)
                self._pending_bytes -= size
                self._inflight_bytes = size
                temp = await self._temp_file()
                await defer.gatherResults(
                    [
                        self._run(temp.write, batch),
                        self._run(self._digests.feed_md5, batch),
                        self._run(self._digests.feed_sha, batch),
                    ],
                    consumeErrors=True,
                )
                self._inflight_bytes = 0
                self._room()
        except defer.FirstError as e:
            cause = e.subFailure.value
            self._fail(self._storage_error(cause if cause is not None else e))
        except OSError as e:
            self._fail(self._storage_error(e))
        finally:
            self._inflight_bytes = 0
        if self._error is not None and self._state in (_FAILED,):
            await self._release()

    async def _store_small(self) -> None:
        """Write, hash and sync a small upload, and move it into place if it is what was
        declared, all in one thread job."""
        batch = list(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        path = self._store.temp_path()
        self._active.add(path)  # in use before it exists (see _temp_file)

        def write_small() -> tuple[TempWriter, bool]:
            temp = self._store.create_temp(path, self._direct_io)
            try:
                temp.write(batch)
                self._digests.feed_md5(batch)
                self._digests.feed_sha(batch)
                temp.seal()
            except BaseException:
                temp.close()
                raise
            hashes = self._digests.hashes(temp.written)
            if self._mismatch(hashes) is not None:
                return temp, False  # refused by _finish, which deletes it
            self._store.publish(temp.path, hashes.sha256)
            return temp, True

        try:
            self._temp, self._published = await self._run(write_small)
        except OSError as e:
            self._fail(self._storage_error(e))
            try:
                await self._run(self._store.discard, path)
            finally:
                self._active.discard(path)

    def _mismatch(self, hashes: Hashes) -> str | None:
        """Why the bytes are not what was declared (``None``: they are)."""
        if self.expected_size is not None and hashes.size != self.expected_size:
            return f"{self.filename!r}: declared {self.expected_size} bytes, got {hashes.size}"
        if self.expected_sha1 is not None and hashes.sha1 != self.expected_sha1:
            return f"{self.filename!r}: declared SHA-1 {self.expected_sha1}, got {hashes.sha1}"
        if self.expected_sha256 is not None and hashes.sha256 != self.expected_sha256:
            return (
                f"{self.filename!r}: declared SHA-256 {self.expected_sha256}, got {hashes.sha256}"
            )
        return None

    def _seal_and_publish(self, temp: TempWriter, sha256: str) -> None:
        temp.seal()
        self._store.publish(temp.path, sha256)

    def _storage_error(self, exc: BaseException) -> UploadFailed:
        error = UploadFailed(f"could not store {self.filename!r}: {exc}")
        error.__cause__ = exc  # what the disk said (e.g. EMFILE: the master's own limit)
        return error

    async def _temp_file(self) -> TempWriter:
        if self._temp is None:
            # in use before it exists: the collector must never see it unclaimed
            path = self._store.temp_path()
            self._active.add(path)
            try:
                temp: TempWriter = await self._run(self._store.create_temp, path, self._direct_io)
            except BaseException:
                self._active.discard(path)
                raise
            self._temp = temp
        return self._temp

    def _fail(self, error: LibrarianError) -> None:
        if self._error is not None:
            return
        self._error = error
        if self._state == _OPEN:
            self._state = _FAILED
        self._pending.clear()
        self._pending_bytes = 0
        producer = self._producer
        if producer is not None:
            self._producer = None
            producer.stopProducing()
        self._room()

    def _fail_error(self) -> LibrarianError:
        assert self._error is not None
        return self._error

    async def _release(self) -> None:
        """Close and delete the temporary file (unless it was moved into place)."""
        temp, self._temp = self._temp, None
        if temp is None:
            return
        self._active.discard(temp.path)
        try:
            await self._run(temp.close)
            if not self._published:
                await self._run(self._store.discard, temp.path)
        except OSError:
            self._log.failure("Could not delete the temporary file {path}", path=temp.path)

    # -- ending ------------------------------------------------------------------------------

    def rename(
        self,
        filename: str,
        content_type: str,
        restricted: bool,
        expires: datetime.datetime | None,
        expected_sha256: str | None = None,
    ) -> None:
        """Say, before ``finish``, what the file is: for bytes that started streaming in
        before their name was known (an HTTP body, named by the resource that takes it).

        :raises InvalidFileMetadata: for a bad filename, content type or expiry.
        :raises UploadFailed: when ``finish`` has started already.
        """
        if self._state not in (_OPEN, _FAILED):
            raise UploadFailed(f"upload of {self.filename!r} is {self._state}: cannot rename")
        self.filename = check_filename(filename)
        self.content_type = check_content_type(content_type)
        self.expires = check_expires(expires)
        self.restricted = bool(restricted)
        if expected_sha256 is not None:
            self.expected_sha256 = expected_sha256.lower()

    def finish(self) -> defer.Deferred[int]:
        """Store the file.

        :returns: a Deferred that fires with the new alias id once the bytes are durable on
            disk and the rows committed; or fails (having stored nothing) with
            :class:`ContentMismatch` (size or SHA-1 not as declared), :class:`FileTooLarge`,
            :class:`UploadFailed` (I/O error, aborted, finished twice) or a
            :class:`~buildmaster.store.database.DatabaseError`.
        """
        return defer.Deferred.fromCoroutine(self._finish())

    async def _finish(self) -> int:
        if self._state in (_FINISHING, _FINISHED):
            raise UploadFailed(f"upload of {self.filename!r} is already {self._state}")
        if self._state == _ABORTED:
            raise UploadFailed(f"upload of {self.filename!r} was aborted")
        failed_before = self._state == _FAILED
        self._state = _FINISHING
        if self._producer is not None:
            self.unregisterProducer()
        if not self._draining and self._pending and self._error is None:
            await self._store_small()  # (moved into place already unless refused below)
        else:
            self._kick()
        await self._idle()
        try:
            if failed_before or self._error is not None:
                raise self._fail_error()
            temp = await self._temp_file()
            hashes = self._digests.hashes(temp.written)
            mismatch = self._mismatch(hashes)
            if mismatch is not None:
                raise ContentMismatch(mismatch)
            if not self._published:
                # one thread job: make the bytes durable, then move them into place
                await self._run(self._seal_and_publish, temp, hashes.sha256)
                self._published = True
            alias_id = await self._record(
                hashes, self.filename, self.content_type, self.restricted, self.expires
            )
        except BaseException as e:
            if self._error is None:
                self._error = (
                    e if isinstance(e, LibrarianError) else UploadFailed(str(e) or repr(e))
                )
            self._state = _FAILED
            await self._release()
            raise
        self._state = _FINISHED
        self._active.discard(temp.path)
        self._temp = None
        self.hashes = hashes
        return alias_id

    def abort(self) -> defer.Deferred[None]:
        """Give up: nothing is stored and the temporary file is deleted.

        Does nothing after ``finish`` has started (it decides) or after an earlier abort.

        :returns: a Deferred that fires with ``None`` once the temporary file is gone.
        """
        return defer.Deferred.fromCoroutine(self._abort())

    async def _abort(self) -> None:
        if self._state in (_FINISHING, _FINISHED, _ABORTED):
            return
        self._state = _ABORTED
        self._fail(UploadFailed(f"upload of {self.filename!r} was aborted"))
        await self._idle()
        await self._release()
