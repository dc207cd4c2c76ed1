"""The :class:`Librarian`: the one object the master holds to store, serve and collect files.

Long: the one object the master holds for files; its methods are short entries into the
librarian's modules (storage, upload, catalog, reader, collector), kept together so that the
whole surface is read in one place.
"""

from __future__ import annotations

import contextlib
import datetime
import io
from pathlib import Path
from typing import IO, Any, cast

import attrs
from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import IResource

from buildmaster.librarian import tokens
from buildmaster.librarian.catalog import RecordBatcher, get_file
from buildmaster.librarian.collector import (
    GarbageCollector,
    GarbageCollectorService,
    GarbageStats,
)
from buildmaster.librarian.errors import (
    CorruptFile,
    FileTooLarge,
    InvalidFileMetadata,
    UploadFailed,
)
from buildmaster.librarian.metadata import (
    check_content_type,
    check_expires,
    check_filename,
    check_size,
    quote_filename,
)
from buildmaster.librarian.reader import LibraryFileReader, report_corrupt
from buildmaster.librarian.resource import LibrarianResource
from buildmaster.librarian.storage import ContentStore, SizeMismatch
from buildmaster.librarian.upload import Upload
from buildmaster.model import LibraryFile
from buildmaster.store.database import Database

__all__ = ["Librarian", "ServingFailure", "DEFAULT_MAX_FILE_SIZE"]

#: The largest file the librarian takes unless told otherwise (chroots are several GiB).
DEFAULT_MAX_FILE_SIZE = 64 * 1024**3
#: How much ``addFile`` reads from its file at a time.
READ_CHUNK = 1024 * 1024
#: Seconds a file handed out to a builder is served without reading its row again.
HAND_OUT_WINDOW = 60.0
#: At most this many handed-out files are remembered (the oldest are forgotten first).
MAX_HANDED_OUT = 100_000
#: A damaged content is reported (an ERROR) at most once in this many seconds.
CORRUPT_REPORT_INTERVAL = 3600.0


@attrs.frozen
class ServingFailure:
    """The librarian could not serve a file, for a reason of its own (not the client's)."""

    #: :attr:`Librarian.serving_mark` when it happened
    mark: int
    why: str
    #: its bytes are damaged (reported as corrupt)
    damaged: bool = False
    #: what opening it failed with (EMFILE: out of file descriptors)
    errno: int | None = None


class Librarian:
    """A content-addressed file store: rows in PostgreSQL, bytes under ``root``, served over
    HTTP by :meth:`resource`.

    :param reactor: provides ``seconds``, ``callLater``, ``callFromThread`` (and
        ``getThreadPool`` when no ``threadpool`` is given). Never the global reactor: pass it.
    :param db: the connected database pool.
    :param root: the directory holding the bytes (created when first written).
    :param public_url: where builders reach :meth:`resource`, e.g.
        ``http://master:8000/librarian/``; a missing trailing slash is added.
    :param secret: the HMAC secret for tokens (see :meth:`load_or_create_secret`).
    :param threadpool: the pool that runs every blocking disk operation; by default the
        reactor's own (``reactor.getThreadPool()``, stopped by the reactor at shutdown). A
        pool passed here is started and stopped by its owner.
    :param max_file_size: the largest file accepted, in bytes.
    :param direct_io: write uploads with ``O_DIRECT`` where the filesystem allows it (less
        CPU per byte; the page cache is left alone). ``False`` forces buffered writes.
    :param hand_out_window: seconds during which a file given to a builder with
        :meth:`hand_out` is served without reading its row from the database again.
    :param clock: what "now" is for tokens, expiry and handed-out files (``reactor`` by
        default; tests pass a ``Clock``).
    """

    def __init__(
        self,
        reactor: Any,
        db: Database,
        root: Path,
        public_url: str,
        secret: bytes,
        *,
        threadpool: ThreadPool | None = None,
        max_file_size: int = DEFAULT_MAX_FILE_SIZE,
        direct_io: bool = True,
        hand_out_window: float = HAND_OUT_WINDOW,
        clock: Any = None,
    ) -> None:
        if not secret:
            raise ValueError("the librarian needs a secret for its tokens")
        self._reactor = reactor
        #: "now" for tokens, expiry and handed-out files (the reactor unless a test's Clock)
        self._clock = reactor if clock is None else clock
        self._db = db
        self.root = Path(root)
        self.public_url = public_url if public_url.endswith("/") else public_url + "/"
        self._secret = secret
        self._pool = threadpool if threadpool is not None else reactor.getThreadPool()
        self.max_file_size = max_file_size
        self.direct_io = direct_io
        self.store = ContentStore(self.root)
        #: records the aliases of finished uploads, several in one statement under load
        self.records = RecordBatcher(db)
        self._active: set[Path] = set()
        self._hand_out_window = hand_out_window
        #: {alias id: (file, served from here until)}, oldest first
        self._handed_out: dict[int, tuple[LibraryFile, float]] = {}
        #: {content sha256: when it was last reported damaged}
        self._reported: dict[str, float] = {}
        #: {alias id: the latest failure to serve it of the librarian's own}, oldest first
        self._serving_failures: dict[int, ServingFailure] = {}
        self._serving_mark = 0
        #: :attr:`serving_mark` when the process last closed accepted connections unread
        #: because it was out of file descriptors (see :meth:`note_dropped_connections`)
        self._dropped_mark: int | None = None
        self.collector = GarbageCollector(
            reactor, db, self.store, self.run_in_thread, lambda: frozenset(self._active)
        )

    load_or_create_secret = staticmethod(tokens.load_or_create_secret)

    @property
    def clock(self) -> Any:
        """The clock expiry and tokens are judged by (IReactorTime)."""
        return self._clock

    def run_in_thread(self, f: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        """Call the blocking ``f(*args, **kwargs)`` in the librarian's thread pool.

        :returns: a Deferred of its result (fired on the reactor thread).
        """
        return threads.deferToThreadPool(self._reactor, self._pool, f, *args, **kwargs)

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.UTC)

    # -- adding files ------------------------------------------------------------------------

    def new_upload(
        self,
        name: str,
        contentType: str,
        restricted: bool = False,
        expires: datetime.datetime | None = None,
        expected_size: int | None = None,
        expected_sha1: str | None = None,
        max_size: int | None = None,
    ) -> Upload:
        """A streaming upload: ``write`` chunks (or register a producer), then ``finish``.

        :raises InvalidFileMetadata: at once, for a bad filename, content type, size, SHA-1
            or expiry (nothing is written).
        """
        check_filename(name)
        check_content_type(contentType)
        check_expires(expires)
        check_size(expected_size, self.max_file_size, "declared size")
        check_size(max_size, self.max_file_size, "size limit")
        if expected_sha1 is not None and not _is_sha1(expected_sha1):
            raise InvalidFileMetadata(f"not a SHA-1: {expected_sha1!r}")
        return Upload(
            clock=self._reactor,
            run=self.run_in_thread,
            record=self.records.record,
            store=self.store,
            active=self._active,
            filename=name,
            content_type=contentType,
            restricted=bool(restricted),
            expires=expires,
            expected_size=expected_size,
            expected_sha1=expected_sha1,
            max_size=self.max_file_size if max_size is None else max_size,
            direct_io=self.direct_io,
        )

    def addFile(
        self,
        name: str,
        size: int,
        file: IO[bytes],
        contentType: str,
        restricted: bool = False,
        expires: datetime.datetime | None = None,
    ) -> defer.Deferred[int]:
        """Store ``size`` bytes read from the binary file object ``file`` (read in a thread,
        a chunk at a time, from its current position).

        :returns: a Deferred that fires with the new alias id; or fails, having stored
            nothing, with :class:`InvalidFileMetadata` (bad name, type, negative or absurd
            size, naive expiry), :class:`ContentMismatch` (``file`` held more or fewer than
            ``size`` bytes), :class:`UploadFailed` (reading or writing failed) or a
            :class:`~buildmaster.store.database.DatabaseError`.
        """
        return defer.Deferred.fromCoroutine(
            self._add_file(name, size, file, contentType, restricted, expires, None)
        )

    def add_body(
        self,
        name: str,
        size: int,
        file: IO[bytes],
        contentType: str,
        restricted: bool,
        expires: datetime.datetime | None,
        expected_sha1: str | None,
    ) -> defer.Deferred[int]:
        """:meth:`addFile` from the start of ``file``, checking its SHA-1 if one is given (the
        HTTP upload endpoint's body)."""

        async def from_start() -> int:
            if isinstance(file, io.BytesIO):
                file.seek(0)  # in memory: no disk to wait for
            else:
                await self.run_in_thread(file.seek, 0)
            return await self._add_file(
                name, size, file, contentType, restricted, expires, expected_sha1
            )

        return defer.Deferred.fromCoroutine(from_start())

    async def _add_file(
        self,
        name: str,
        size: int,
        file: IO[bytes],
        contentType: str,
        restricted: bool,
        expires: datetime.datetime | None,
        expected_sha1: str | None,
    ) -> int:
        if size is None:
            raise InvalidFileMetadata("addFile needs the file's size")
        check_size(size, self.max_file_size)
        upload = self.new_upload(
            name, contentType, restricted, expires, expected_size=size, expected_sha1=expected_sha1
        )
        try:
            remaining = size + 1  # one byte more than declared shows a longer file
            while remaining > 0:
                try:
                    chunk = await self.run_in_thread(file.read, min(READ_CHUNK, remaining))
                except (OSError, ValueError) as e:
                    raise UploadFailed(f"could not read {name!r}: {e}") from e
                if not isinstance(chunk, bytes | bytearray | memoryview):
                    raise UploadFailed(f"{name!r}: not a binary file (read gave {chunk!r:.40})")
                if not chunk:
                    break
                remaining -= len(chunk)
                await upload.write(bytes(chunk))
            return await upload.finish()
        except BaseException:
            await upload.abort()
            raise

    # -- finding files -----------------------------------------------------------------------

    def get(self, alias_id: int) -> defer.Deferred[LibraryFile]:
        """The file ``alias_id``.

        :returns: a Deferred that fires with its :class:`~buildmaster.model.LibraryFile`, or
            fails with :class:`FileNotFound` or a ``DatabaseError``.
        """
        return defer.Deferred.fromCoroutine(get_file(self._db, alias_id))

    def hand_out(self, file: LibraryFile) -> str:
        """:meth:`url_for` ``file``, which a builder is about to download; ``file`` must
        have just been read from the database.

        For the next ``hand_out_window`` seconds that download is served from ``file`` as
        given, without reading its row again (one database round trip less per dispatched
        file, at the busiest point of a dispatch). What a file's row can change into
        meanwhile does not matter to serving it: a handed-out file is a chroot or a source
        file, referenced, so the garbage collector leaves it alone, and an expiry only ever
        becomes later (provisional results made permanent).
        """
        now = self._clock.seconds()
        handed = self._handed_out
        handed.pop(file.id, None)
        handed[file.id] = (file, now + self._hand_out_window)
        while handed:  # forget, oldest first, what is past its window or beyond the limit
            oldest = next(iter(handed))
            if handed[oldest][1] > now and len(handed) <= MAX_HANDED_OUT:
                break
            del handed[oldest]
        return self.url_for(file)

    def get_for_download(self, alias_id: int) -> defer.Deferred[LibraryFile]:
        """:meth:`get` ``alias_id``, or the file as handed out (see :meth:`hand_out`)."""
        entry = self._handed_out.get(alias_id)
        if entry is not None and entry[1] > self._clock.seconds():
            return defer.succeed(entry[0])
        return self.get(alias_id)

    def url_for(self, file: LibraryFile) -> str:
        """The URL builders fetch ``file`` from: ``public_url + "<id>/<quoted filename>"``."""
        return f"{self.public_url}{file.id}/{quote_filename(file.filename)}"

    def getURL(self, alias_id: int) -> defer.Deferred[str]:
        """A Deferred of :meth:`url_for` the file ``alias_id`` (fails with
        :class:`FileNotFound`)."""

        async def url() -> str:
            return self.url_for(await get_file(self._db, alias_id))

        return defer.Deferred.fromCoroutine(url())

    def is_expired(self, file: LibraryFile) -> bool:
        """Whether ``file``'s expiry has passed (it is no longer served, and may be
        collected)."""
        return file.expires is not None and file.expires <= self._now()

    # -- tokens ------------------------------------------------------------------------------

    def token_for(self, alias_id: int, lifetime: float = 86400.0) -> str:
        """A download token for the file ``alias_id``, valid ``lifetime`` seconds: the
        basic-auth password for a restricted file (any username)."""
        subject = tokens.file_subject(alias_id)
        return tokens.make_token(self._secret, subject, self._clock.seconds() + lifetime)

    def check_token(self, alias_id: int, token: str | bytes | None) -> bool:
        """Whether ``token`` grants downloading the file ``alias_id`` now."""
        subject = tokens.file_subject(alias_id)
        return tokens.check_token(self._secret, token, subject, self._clock.seconds())

    def upload_token(self, lifetime: float = 3600.0) -> str:
        """A token for the HTTP upload endpoint, valid ``lifetime`` seconds."""
        subject = tokens.UPLOAD_SUBJECT
        return tokens.make_token(self._secret, subject, self._clock.seconds() + lifetime)

    def check_upload_token(self, token: str | bytes | None) -> bool:
        """Whether ``token`` grants uploading now."""
        subject = tokens.UPLOAD_SUBJECT
        return tokens.check_token(self._secret, token, subject, self._clock.seconds())

    # -- failures to serve ---------------------------------------------------------------------

    @property
    def serving_mark(self) -> int:
        """A mark to compare with :meth:`serving_failure` (it grows with every failure)."""
        return self._serving_mark

    def note_serving_failure(
        self, alias_id: int, why: str, *, damaged: bool = False, errno: int | None = None
    ) -> None:
        """The librarian could not serve the file ``alias_id`` for a reason of its own:
        its bytes are ``damaged``, it could not be opened (``errno``: EMFILE when out of
        file descriptors), its database is away."""
        self._serving_mark += 1
        self._serving_failures.pop(alias_id, None)
        self._serving_failures[alias_id] = ServingFailure(self._serving_mark, why, damaged, errno)
        while len(self._serving_failures) > MAX_HANDED_OUT:
            del self._serving_failures[next(iter(self._serving_failures))]

    def note_dropped_connections(self) -> None:
        """The process was out of file descriptors and closed connections it had accepted
        before reading them (Twisted's listening ports do so rather than spin on EMFILE): a
        builder fetching a file at that moment saw its connection closed without an answer,
        and no request reached the librarian to fail on its side."""
        self._serving_mark += 1
        self._dropped_mark = self._serving_mark

    def dropped_connections_since(self, since: int) -> bool:
        """Whether :meth:`note_dropped_connections` was called after the mark ``since``."""
        return self._dropped_mark is not None and self._dropped_mark > since

    def serving_failure(self, alias_id: int, since: int) -> ServingFailure | None:
        """The librarian's last failure of its own to serve ``alias_id``, if it came after
        the mark ``since`` (:attr:`serving_mark`); ``None`` otherwise."""
        failure = self._serving_failures.get(alias_id)
        if failure is None or failure.mark <= since:
            return None
        return failure

    # -- reading files -----------------------------------------------------------------------

    def report_corrupt(self, file: LibraryFile, why: str) -> CorruptFile:
        """Report (an ERROR: an operator must look) that ``file``'s bytes are damaged, at
        most once per content every :data:`CORRUPT_REPORT_INTERVAL` seconds (every builder
        asking for a missing chroot would repeat it), and return the :class:`CorruptFile`
        to raise."""
        now = self._reactor.seconds()
        last = self._reported.get(file.sha256)
        if last is not None and now - last < CORRUPT_REPORT_INTERVAL:
            return CorruptFile(f"librarian file {file.id} is corrupt: {why}")
        self._reported[file.sha256] = now
        while len(self._reported) > MAX_HANDED_OUT:
            del self._reported[next(iter(self._reported))]
        return report_corrupt(file, why)

    def open_content(self, file: LibraryFile) -> defer.Deferred[int]:
        """A read-only descriptor of ``file``'s bytes (the caller closes it), opened in a
        thread; fails with ``FileNotFoundError`` or ``SizeMismatch`` when the bytes are
        missing or have the wrong size."""
        return self.run_in_thread(self.store.open, file.sha256, file.filesize)

    def open(self, alias_id: int) -> defer.Deferred[LibraryFileReader]:
        """Open the file ``alias_id`` for reading (expired or not).

        :returns: a Deferred that fires with a :class:`LibraryFileReader` (which verifies the
            SHA-256 as it reaches the end), or fails with :class:`FileNotFound` or
            :class:`CorruptFile` (bytes missing or of the wrong size).
        """
        return defer.Deferred.fromCoroutine(self._open(alias_id))

    async def _open(self, alias_id: int) -> LibraryFileReader:
        file = await get_file(self._db, alias_id)
        try:
            fd = await self.open_content(file)
        except (FileNotFoundError, SizeMismatch) as e:
            why = "it is missing" if isinstance(e, FileNotFoundError) else str(e)
            raise self.report_corrupt(file, why) from e
        return LibraryFileReader(file, fd, self.run_in_thread)

    def read_bytes(self, alias_id: int, limit: int = 64 * 1024 * 1024) -> defer.Deferred[bytes]:
        """All the bytes of the file ``alias_id``, verified (for small files and tests).

        :returns: a Deferred that fires with the bytes, or fails with :class:`FileNotFound`,
            :class:`CorruptFile`, or :class:`FileTooLarge` for a file larger than ``limit``.
        """

        async def read() -> bytes:
            reader = await self._open(alias_id)
            with contextlib.closing(reader):
                if reader.file.filesize > limit:
                    raise FileTooLarge(
                        f"file {alias_id} has {reader.file.filesize} bytes, more than {limit}"
                    )
                parts = []
                async for chunk in reader:
                    parts.append(chunk)
                return b"".join(parts)

        return defer.Deferred.fromCoroutine(read())

    # -- serving -----------------------------------------------------------------------------

    def resource(self, use_sendfile: bool = True) -> IResource:
        """The twisted.web resource serving (and taking uploads of) files; mount it where
        :attr:`public_url` points. ``use_sendfile=False`` forces plain reads."""
        return cast(IResource, LibrarianResource(self, use_sendfile=use_sendfile))

    # -- garbage -----------------------------------------------------------------------------

    def collect_garbage(self, temp_grace: float = 86400.0) -> defer.Deferred[GarbageStats]:
        """One garbage collection pass (see :mod:`buildmaster.librarian.collector`).

        :returns: a Deferred that fires with :class:`GarbageStats`.
        """
        return self.collector.collect(temp_grace)

    def garbage_collector(
        self, interval: float = 3600.0, temp_grace: float = 86400.0
    ) -> GarbageCollectorService:
        """A service that collects garbage every ``interval`` seconds on the reactor's clock."""
        return GarbageCollectorService(self.collector, self._reactor, interval, temp_grace)


def _is_sha1(text: str) -> bool:
    return len(text) == 40 and all(c in "0123456789abcdef" for c in text.lower())
