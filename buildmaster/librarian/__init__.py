"""The librarian: a content-addressed file store with an HTTP face.

Chroots, sources, build logs and build results live here: metadata in PostgreSQL
(``libraryfilecontent``: size and SHA-1/SHA-256/MD5, one row per distinct content;
``libraryfilealias``: filename, content type, restricted flag, expiry, many per content),
bytes on disk under their SHA-256, written atomically (temporary file, fsync, rename, then
the rows). Builders fetch files by URL from :meth:`Librarian.resource`, mounted in the
master's web server; a restricted file needs a per-file token as the basic-auth password
(without it, every request for it gets the same 401, whatever filename it names). The
master's web server is a :class:`~buildmaster.librarian.guard.GuardedSite`: bodies nobody
may upload are never stored, and an upload that waits for ``100 Continue`` is refused
before it sends its body.

::

    farm = await farm_identity(db)   # buildmaster.librarian.farm: the farm's secret
    lib = Librarian(reactor, db, root=files_dir,
                    public_url="http://master:8000/librarian/",
                    secret=farm.secret)
    alias_id = await lib.addFile("hello_1.0.dsc", size, fileobj, "text/plain")
    url = await lib.getURL(alias_id)
    data = await lib.read_bytes(alias_id)

Every master of a farm uses the same ``files_dir`` and the same secret (the database's):
any of them serves any file (:mod:`buildmaster.librarian.farm`). Blocking disk I/O runs in a
thread pool (the reactor's unless one is given), never on the
reactor thread. Garbage collection: :meth:`Librarian.collect_garbage`, the service
:meth:`Librarian.garbage_collector`, or ``python -m buildmaster.librarian.gc``.
"""

from __future__ import annotations

from buildmaster.librarian.catalog import LOCK_NAMESPACE, Hashes
from buildmaster.librarian.collector import GarbageCollectorService, GarbageStats
from buildmaster.librarian.errors import (
    ContentMismatch,
    CorruptFile,
    FileNotFound,
    FileTooLarge,
    InvalidFileMetadata,
    LibrarianError,
    UploadFailed,
)
from buildmaster.librarian.librarian import DEFAULT_MAX_FILE_SIZE, Librarian
from buildmaster.librarian.reader import LibraryFileReader
from buildmaster.librarian.upload import Upload

__all__ = [
    "Librarian",
    "Upload",
    "LibraryFileReader",
    "GarbageStats",
    "GarbageCollectorService",
    "Hashes",
    "DEFAULT_MAX_FILE_SIZE",
    "LOCK_NAMESPACE",
    "LibrarianError",
    "InvalidFileMetadata",
    "UploadFailed",
    "FileTooLarge",
    "ContentMismatch",
    "CorruptFile",
    "FileNotFound",
]
