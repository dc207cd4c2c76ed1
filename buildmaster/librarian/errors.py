"""What the librarian fails with.

Every error is a :class:`LibrarianError`; the subclasses say what went wrong well enough for
a caller to decide (retry, give up, report the file as corrupt).
"""

from __future__ import annotations

__all__ = [
    "LibrarianError",
    "InvalidFileMetadata",
    "UploadFailed",
    "FileTooLarge",
    "ContentMismatch",
    "CorruptFile",
    "FileNotFound",
]


class LibrarianError(Exception):
    """Something went wrong in the librarian."""


class InvalidFileMetadata(LibrarianError, ValueError):
    """A filename, content type, size or expiry that the librarian refuses; nothing was stored."""


class UploadFailed(LibrarianError):
    """An upload stored nothing: its source could not be read, the disk refused it, or it
    was aborted."""


class FileTooLarge(UploadFailed):
    """An upload sent more bytes than it was allowed to; nothing was stored."""


class ContentMismatch(LibrarianError):
    """Bytes are not what was declared or recorded (size or hash).

    On upload, nothing was stored. On reading, see :class:`CorruptFile`.
    """


class CorruptFile(ContentMismatch):
    """The bytes on disk no longer match the hashes recorded for them (bit rot, tampering,
    or a missing file): they are reported, not served."""


class FileNotFound(LibrarianError, LookupError):
    """There is no librarian file with this alias id."""
