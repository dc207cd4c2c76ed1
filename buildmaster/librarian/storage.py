"""The bytes on disk: content files addressed by SHA-256, and the blocking I/O on them.

Layout under the root::

    incoming/<random>.part           an upload being written (same filesystem: rename is atomic)
    ab/cd/abcdef0123...(64 hex)      the content whose SHA-256 is abcdef0123...

Every function here blocks (disk I/O) and is meant to run in a thread, never on the reactor
thread: the callers in this package dispatch them with ``deferToThreadPool``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

__all__ = ["ContentStore", "StoredFile", "TempWriter", "is_sha256"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HEX2 = re.compile(r"^[0-9a-f]{2}$")
INCOMING = "incoming"
TEMP_SUFFIX = ".part"


def is_sha256(text: str) -> bool:
    """Whether ``text`` is a lowercase hex SHA-256 (a content file's name)."""
    return bool(_SHA256.match(text))


@attrs.frozen
class StoredFile:
    """A content file found on disk."""

    sha256: str
    path: Path
    mtime: float


def _load_sync_file_range() -> object | None:
    """libc's ``sync_file_range`` (Linux), to start writeback early; ``None`` elsewhere."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes at ``offset`` to disk, without waiting.

    Spreads the disk writes of a large upload over its duration, so the final ``fsync`` has
    little left to do. A no-op where the call does not exist.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # type: ignore[operator]


class ContentStore:
    """Content files under ``root``, named by their SHA-256.

    :param clock: this host's time (``time.time``); the age of a file is judged by the
        earlier of it and :meth:`filesystem_now`, so that a host whose clock runs ahead of a
        file server's never takes a file just written for an old one.
    """

    def __init__(self, root: Path, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self.incoming = self.root / INCOMING
        self._clock = clock

    def filesystem_now(self) -> float:
        """The time by the clock that stamps this store's files (a file server's, on a
        network filesystem shared by several masters): the modification time of a file
        made now in ``incoming/``. This host's time while the store does not exist yet."""
        if not self.root.exists():
            return self._clock()
        self.incoming.mkdir(exist_ok=True)
        # named as an upload's temporary file: one left by a crash is swept as abandoned
        path = self.incoming / f".clock-{secrets.token_hex(8)}{TEMP_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            return os.fstat(fd).st_mtime
        finally:
            os.close(fd)
            path.unlink()

    def _now(self, filesystem_now: float | None) -> float:
        """Now, for judging ages: the earlier of this host's clock and ``filesystem_now``
        (files look younger, never older, than they are by either clock)."""
        now = self._clock()
        return now if filesystem_now is None else min(now, filesystem_now)

    def path_for(self, sha256: str) -> Path:
        """Where the content with this SHA-256 lives.

        :raises ValueError: when ``sha256`` is not 64 lowercase hex digits (no path games).
        """
        if not is_sha256(sha256):
            raise ValueError(f"not a SHA-256: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    # -- writing (blocking) ----------------------------------------------------------------

    def temp_path(self) -> Path:
        """A fresh name for a temporary file in ``incoming/`` (no I/O: name it, tell the
        garbage collector it is in use, then :meth:`create_temp` it)."""
        return self.incoming / f"{secrets.token_hex(12)}{TEMP_SUFFIX}"

    def create_temp(self, path: Path, direct: bool = True) -> TempWriter:
        """Create the temporary file ``path`` (see :meth:`temp_path`), open for writing (with
        ``O_DIRECT`` when ``direct`` and the filesystem allows it)."""
        self.incoming.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        if direct and hasattr(os, "O_DIRECT"):
            try:
                fd = os.open(path, flags | os.O_DIRECT, 0o644)
                return TempWriter(fd, path, True)
            except OSError as e:
                if e.errno != errno.EINVAL:  # tmpfs and friends refuse O_DIRECT
                    raise
        return TempWriter(os.open(path, flags, 0o644), path, False)

    def publish(self, temp: Path, sha256: str) -> Path:
        """Move a sealed temporary file into place as the content ``sha256`` (atomically,
        replacing an identical file if one is there) and make the rename durable."""
        final = self.path_for(sha256)
        created = _make_dirs(final.parent)
        os.replace(temp, final)
        _fsync_dir(final.parent)
        for directory in created:
            _fsync_dir(directory.parent)
        return final

    def discard(self, temp: Path) -> None:
        """Delete a temporary file (gone already is fine)."""
        try:
            temp.unlink()
        except FileNotFoundError:
            pass

    def remove_unless_fresh(
        self, sha256: str, fresh_grace: float, filesystem_now: float | None = None
    ) -> bool | None:
        """Delete the content file ``sha256`` unless it was written less than ``fresh_grace``
        seconds ago (an upload, of this master or another, has just put it in place and is
        about to record it); ``filesystem_now``: :meth:`filesystem_now`, taken a moment ago.

        The file is first renamed aside, atomically, then judged by its age: an upload that
        puts the same bytes in place meanwhile is never undone, and a fresh file is put back.

        :returns: ``True`` when removed, ``False`` when kept (fresh), ``None`` when absent.
        """
        path = self.path_for(sha256)
        aside = path.with_name(f"{path.name}.gc-{secrets.token_hex(8)}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return None
        try:
            if self._now(filesystem_now) - os.stat(aside).st_mtime < fresh_grace:
                try:
                    os.link(aside, path)
                except FileExistsError:
                    pass  # an upload has put the same bytes in place meanwhile
                _fsync_dir(path.parent)
                return False
            return True
        finally:
            os.unlink(aside)

    def remove(self, sha256: str) -> bool:
        """Delete the content file ``sha256``; whether it was there."""
        path = self.path_for(sha256)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    # -- reading (blocking) ----------------------------------------------------------------

    def open(self, sha256: str, size: int) -> int:
        """An open read-only descriptor of the content ``sha256``, checked to hold ``size``
        bytes.

        :raises FileNotFoundError: when the file is missing.
        :raises SizeMismatch: when it holds another number of bytes.
        """
        fd = os.open(self.path_for(sha256), os.O_RDONLY | os.O_CLOEXEC)
        try:
            actual = os.fstat(fd).st_size
            if actual != size:
                raise SizeMismatch(actual)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def scan(self) -> Iterator[StoredFile]:
        """Every content file on disk (anything else in the tree is left alone)."""
        for first in _subdirectories(self.root):
            for second in _subdirectories(first):
                with os.scandir(second) as entries:
                    for entry in entries:
                        if is_sha256(entry.name) and entry.name[:4] == first.name + second.name:
                            try:
                                mtime = entry.stat(follow_symlinks=False).st_mtime
                            except FileNotFoundError:
                                continue
                            yield StoredFile(entry.name, Path(entry.path), mtime)

    def stale_temps(
        self, older_than: float, keep: frozenset[Path], filesystem_now: float | None = None
    ) -> list[Path]:
        """Temporary files not written to for ``older_than`` seconds, except ``keep``."""
        try:
            entries = list(os.scandir(self.incoming))
        except FileNotFoundError:
            return []
        limit = self._now(filesystem_now) - older_than
        stale = []
        for entry in entries:
            path = Path(entry.path)
            if not entry.name.endswith(TEMP_SUFFIX) or path in keep:
                continue
            try:
                if entry.stat(follow_symlinks=False).st_mtime <= limit:
                    stale.append(path)
            except FileNotFoundError:
                continue
        return stale


class TempWriter:
    """Writes a temporary file sequentially (blocking: call from a thread, one at a time).

    With ``O_DIRECT`` the bytes go from an aligned buffer straight to the disk, skipping the
    page cache: much less CPU per byte than buffered writes (and no dirty pages left for
    ``fsync`` to flush), which is what lets an upload keep up with hashing. Without it, writes
    are buffered and their writeback is started every :data:`WRITEBACK_EVERY` bytes.
    """

    BLOCK = 4096
    BUFFER = 4 * 1024 * 1024
    WRITEBACK_EVERY = 32 * 1024 * 1024

    def __init__(self, fd: int, path: Path, direct: bool) -> None:
        self.fd = fd
        self.path = path
        self.direct = direct
        self.written = 0  # bytes taken, including those still in the buffer
        self._flushed = 0  # bytes on their way to the disk
        self._buffer = mmap.mmap(-1, self.BUFFER) if direct else None
        self._fill = 0
        self._writeback_from = 0

    def write(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.written += len(chunk)
            if self._buffer is None:
                _write_all(self.fd, memoryview(chunk))
            else:
                self._copy(memoryview(chunk))
        if self._buffer is not None:
            self._flush_aligned()
        elif self.written - self._writeback_from >= self.WRITEBACK_EVERY:
            start_writeback(self.fd, self._writeback_from, self.written - self._writeback_from)
            self._writeback_from = self.written

    def _copy(self, view: memoryview) -> None:
        assert self._buffer is not None
        while view:
            n = min(len(view), self.BUFFER - self._fill)
            self._buffer[self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == self.BUFFER:
                self._flush_aligned()

    def _flush_aligned(self) -> None:
        assert self._buffer is not None
        aligned = self._fill - self._fill % self.BLOCK
        if not aligned:
            return
        _write_all(self.fd, memoryview(self._buffer)[:aligned])
        rest = self._fill - aligned
        if rest:
            self._buffer.move(0, aligned, rest)
        self._fill = rest

    def seal(self) -> None:
        """Write what is left, make the file durable and read-only, and close it."""
        try:
            if self._buffer is not None and self._fill:
                # O_DIRECT writes whole blocks: pad the last one, then cut the file to size
                padded = self._fill + (-self._fill) % self.BLOCK
                self._buffer[self._fill : padded] = bytes(padded - self._fill)
                self._fill = padded
                self._flush_aligned()
                os.ftruncate(self.fd, self.written)
            os.fchmod(self.fd, 0o444)
            os.fsync(self.fd)
        finally:
            self.close()

    def close(self) -> None:
        """Close the file (idempotent)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        n = os.write(fd, view)
        view = view[n:]


class SizeMismatch(Exception):
    """A content file holds another number of bytes than recorded."""

    def __init__(self, actual: int) -> None:
        super().__init__(f"the file holds {actual} bytes")
        self.actual = actual


def _subdirectories(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as entries:
            return sorted(
                Path(e.path)
                for e in entries
                if _HEX2.match(e.name) and e.is_dir(follow_symlinks=False)
            )
    except FileNotFoundError:
        return []


def _make_dirs(directory: Path) -> list[Path]:
    """Create ``directory`` and missing parents; the ones created, outermost first."""
    missing = []
    here = directory
    while not here.exists():
        missing.append(here)
        here = here.parent
    created = []
    for each in reversed(missing):
        try:
            each.mkdir()
            created.append(each)
        except FileExistsError:
            pass
    return created


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as e:  # pragma: no cover - some filesystems refuse fsync on directories
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
