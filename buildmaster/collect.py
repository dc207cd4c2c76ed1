"""Fetching a finished build's log and results from the builder into the librarian.

Files are streamed from the builder's ``/filecache`` straight into librarian uploads: written
to disk as they arrive, never held in memory whole, size-capped, and SHA-1 verified by the
upload before anything is recorded. The log is gzip-compressed on the way (in the librarian's
thread pool, a megabyte at a time, so compressing a big log never stalls the reactor).
"""

from __future__ import annotations

import datetime
import zlib
from typing import Any

import attrs
from twisted.internet import defer

from buildmaster.builderclient import BuilderClient, FileMissing, FileTooLarge
from buildmaster.librarian import ContentMismatch
from buildmaster.librarian import FileTooLarge as LibrarianFileTooLarge
from buildmaster.protocol import ResultRefused

__all__ = ["ResultCollector", "CollectLimits", "log_filename"]

_COMPRESS_BATCH = 1024 * 1024
#: Less than this is compressed on the reactor thread (cheaper than a thread hop).
_INLINE_COMPRESS = 64 * 1024


@attrs.frozen
class CollectLimits:
    max_log_size: int = 1024 * 1024 * 1024
    max_file_size: int = 8 * 1024 * 1024 * 1024


def log_filename(
    distribution: str, series: str, arch: str, name: str, version: str, state: str
) -> str:
    """``buildlog_ubuntu-hoary-i386.alsa-utils_1.0.9a-4ubuntu1_FULLYBUILT.txt.gz``."""
    version = version.replace(":", "%3A")
    return f"buildlog_{distribution}-{series}-{arch}.{name}_{version}_{state}.txt.gz"


class _GzipSink:
    """Compresses what it is given into an upload, a batch at a time, off the reactor thread."""

    def __init__(self, upload: Any, run_in_thread: Any) -> None:
        self._upload = upload
        self._run = run_in_thread
        # wbits 31: a gzip container that `zcat` and browsers read
        self._compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        self._pending: list[bytes] = []
        self._pending_size = 0
        self.raw_size = 0

    def __call__(self, data: bytes) -> defer.Deferred[None] | None:
        self.raw_size += len(data)
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size < _COMPRESS_BATCH:
            return None
        return defer.Deferred.fromCoroutine(self._flush())

    async def _flush(self) -> None:
        batch, self._pending, self._pending_size = b"".join(self._pending), [], 0
        if len(batch) < _INLINE_COMPRESS:
            compressed = self._compressor.compress(batch)  # a fraction of a millisecond
        else:
            compressed = await self._run(self._compressor.compress, batch)
        if compressed:
            await self._upload.write(compressed)

    async def finish(self, trailer: bytes = b"") -> None:
        if trailer:
            self._pending.append(trailer)
        await self._flush()
        tail = self._compressor.flush()
        if tail:
            await self._upload.write(tail)


#: A result stays provisional (it expires) until it is linked to its build: a master that
#: dies in between leaves nothing the garbage collector will not clear.
PROVISIONAL = datetime.timedelta(days=1)


class ResultCollector:
    """Stores one builder's log and result files in the librarian.

    What it stores expires after :data:`PROVISIONAL` unless the caller links it to its build
    (which clears the expiry), so an interrupted collection leaves no permanent orphan.
    """

    def __init__(
        self, librarian: Any, client: BuilderClient, limits: CollectLimits, now: datetime.datetime
    ) -> None:
        self._librarian = librarian
        self._client = client
        self._limits = limits
        self._expires = now + PROVISIONAL
        #: bytes stored so far (the compressed log and the result files)
        self.stored = 0

    async def store_log(self, filename: str, restricted: bool) -> tuple[int | None, str | None]:
        """Fetch ``/filecache/buildlog`` into the librarian (compressed).

        A log larger than the limit is cut there, and says so at its end.

        :returns: ``(alias id, note)``; the alias is ``None`` when the builder has no log
            (HTTP 404); the note explains a truncation.
        :raises BuilderError: when the builder cannot be reached (collect again later).
        """
        upload = self._librarian.new_upload(
            filename, "application/x-gzip", restricted=restricted, expires=self._expires
        )
        sink = _GzipSink(upload, self._librarian.run_in_thread)
        note = None
        try:
            try:
                await self._client.fetch_file("buildlog", sink, self._limits.max_log_size)
            except FileMissing:
                await upload.abort()
                return None, None
            except FileTooLarge:
                note = f"build log larger than {self._limits.max_log_size} bytes: truncated"
            await sink.finish(f"\n[buildmaster: {note}]\n".encode() if note else b"")
            alias = await upload.finish()
            self.stored += upload.received
            return alias, note
        except BaseException:
            await upload.abort()
            raise

    async def store_file(self, filename: str, sha1: str, restricted: bool) -> int:
        """Fetch one result file into the librarian, verifying its SHA-1.

        :raises ResultRefused: when the bytes do not match the SHA-1, are too large, or are
            not on the builder.
        :raises BuilderError: when the builder cannot be reached.
        """
        upload = self._librarian.new_upload(
            filename,
            "application/octet-stream",
            restricted=restricted,
            expires=self._expires,
            expected_sha1=sha1,
            max_size=self._limits.max_file_size,
        )
        too_large = f"result file {filename!r} is larger than {self._limits.max_file_size} bytes"
        try:
            await self._client.fetch_file(sha1, upload.write, self._limits.max_file_size)
            alias = int(await upload.finish())
            self.stored += upload.received
            return alias
        except (FileTooLarge, LibrarianFileTooLarge):
            await upload.abort()
            raise ResultRefused(too_large) from None
        except FileMissing:
            await upload.abort()
            raise ResultRefused(
                f"result file {filename!r} ({sha1}) is not on the builder"
            ) from None
        except ContentMismatch as e:
            await upload.abort()
            raise ResultRefused(f"result file {filename!r} refused: {e}") from None
        except BaseException:
            await upload.abort()
            raise
