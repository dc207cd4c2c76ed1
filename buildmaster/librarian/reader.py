"""Reading a stored file back, verifying that its bytes still hash to the recorded SHA-256."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from buildmaster.librarian.errors import CorruptFile
from buildmaster.librarian.upload import ThreadRunner
from buildmaster.model import LibraryFile

__all__ = ["LibraryFileReader", "READ_SIZE", "report_corrupt"]

#: How much ``read()`` returns at most by default.
READ_SIZE = 1024 * 1024

_log = Logger()


def report_corrupt(file: LibraryFile, why: str) -> CorruptFile:
    """Log (as an error: an operator must look) that ``file``'s bytes are bad, and return
    the :class:`CorruptFile` to raise."""
    message = (
        f"librarian file {file.id} ({file.filename!r}, content {file.sha256}) is corrupt: {why}"
    )
    _log.error("{message}", message=message)
    return CorruptFile(message)


class LibraryFileReader:
    """An open librarian file, read chunk by chunk off the reactor thread.

    ``await reader.read()`` returns the next chunk, ``b""`` at the end. Before it reports the
    end it compares the SHA-256 of everything read with the recorded one and raises
    :class:`CorruptFile` if they differ: a caller must not trust the bytes of a file it has not
    read to the end. Also an async iterator and an async context manager::

        async with await librarian.open(alias_id) as reader:
            async for chunk in reader:
                ...
    """

    def __init__(self, file: LibraryFile, fd: int, run: ThreadRunner) -> None:
        self.file = file
        self._fd = fd
        self._run = run
        self._position = 0
        self._sha256 = hashlib.sha256()
        self._verified = False

    @property
    def position(self) -> int:
        """How many bytes were read so far."""
        return self._position

    def _read(self, size: int) -> bytes:
        data = os.pread(self._fd, size, self._position)
        self._sha256.update(data)
        return data

    def read(self, size: int = READ_SIZE) -> defer.Deferred[bytes]:
        """The next at most ``size`` bytes; ``b""`` once everything was read and verified.

        :raises CorruptFile: (the Deferred fails) when the bytes do not match the record.
        :raises ValueError: when the reader is closed.
        """
        return defer.Deferred.fromCoroutine(self._read_async(size))

    async def _read_async(self, size: int) -> bytes:
        if self._fd < 0:
            raise ValueError("the reader is closed")
        if size <= 0:
            return b""
        remaining = self.file.filesize - self._position
        if remaining > 0:
            data: bytes = await self._run(self._read, min(size, remaining))
            if not data:
                self._corrupt(f"it ends after {self._position} of {self.file.filesize} bytes")
            self._position += len(data)
            return data
        if not self._verified:
            digest = self._sha256.hexdigest()
            if digest != self.file.sha256:
                self._corrupt(f"its bytes hash to {digest}")
            self._verified = True
        return b""

    def _corrupt(self, why: str) -> None:
        raise report_corrupt(self.file, why)

    def close(self) -> None:
        """Close the file (closing a read-only descriptor does no disk I/O)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __aiter__(self) -> LibraryFileReader:
        return self

    async def __anext__(self) -> bytes:
        data = await self.read()
        if not data:
            raise StopAsyncIteration
        return data

    async def __aenter__(self) -> LibraryFileReader:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close()
