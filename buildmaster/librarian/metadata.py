"""Checking what a caller says about a file before any byte is stored: pure, no I/O.

The rules for filenames are the database's (``libraryfilealias.filename`` CHECK): 1 to 255
characters, not ``.`` or ``..``, no ``/``, no control characters. Filenames never reach the
filesystem (bytes are stored under their SHA-256), so they cannot traverse anything; they do
reach URLs and HTTP headers, hence the checks here and the quoting in :func:`quote_filename`.
"""

from __future__ import annotations

import datetime
import re
from urllib.parse import quote

from buildmaster.librarian.errors import InvalidFileMetadata

__all__ = [
    "MAX_FILENAME_LENGTH",
    "check_filename",
    "check_content_type",
    "check_size",
    "check_expires",
    "quote_filename",
]

MAX_FILENAME_LENGTH = 255
# type "/" subtype, then optional parameters; no control characters, no CR/LF
_CONTENT_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
    r'([ \t]*;[ \t]*[A-Za-z0-9!#$&^_.+-]+=("[^"\x00-\x1f\x7f]*"|[A-Za-z0-9!#$&^_.+-]+))*'
)


#: Unicode categories Cc (C0, DEL, C1 controls) and Cs (surrogates)
_CONTROL_OR_SURROGATE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def check_filename(name: str) -> str:
    """``name`` if the librarian accepts it as a filename.

    :raises InvalidFileMetadata: otherwise, saying why.
    """
    if not isinstance(name, str):
        raise InvalidFileMetadata(f"a filename must be text, not {type(name).__name__}")
    if not 1 <= len(name) <= MAX_FILENAME_LENGTH:
        raise InvalidFileMetadata(
            f"a filename must have 1 to {MAX_FILENAME_LENGTH} characters, not {len(name)}"
        )
    if name in (".", ".."):
        raise InvalidFileMetadata(f"{name!r} is not a filename")
    if "/" in name or "\\" in name:
        raise InvalidFileMetadata(f"a filename cannot contain a path separator: {name!r}")
    if _CONTROL_OR_SURROGATE.search(name):
        raise InvalidFileMetadata(f"a filename cannot contain control characters: {name!r}")
    return name


def check_content_type(content_type: str) -> str:
    """``content_type`` if it is a plausible MIME type (``type/subtype; param=value``).

    :raises InvalidFileMetadata: otherwise.
    """
    if not isinstance(content_type, str) or len(content_type) > 255:
        raise InvalidFileMetadata(f"not a content type: {content_type!r}")
    if not _CONTENT_TYPE.fullmatch(content_type):
        raise InvalidFileMetadata(f"not a content type: {content_type!r}")
    return content_type


def check_size(size: int | None, limit: int, what: str = "size") -> int | None:
    """``size`` if it is ``None`` or a whole number of bytes from 0 to ``limit``.

    :raises InvalidFileMetadata: for a negative, non-integral or absurd size.
    """
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int):
        raise InvalidFileMetadata(f"a {what} must be a whole number of bytes, not {size!r}")
    if size < 0:
        raise InvalidFileMetadata(f"a {what} cannot be negative: {size}")
    if size > limit:
        raise InvalidFileMetadata(f"a {what} of {size} bytes is more than the limit of {limit}")
    return size


def check_expires(expires: datetime.datetime | None) -> datetime.datetime | None:
    """``expires`` if it is ``None`` or a timezone-aware datetime.

    :raises InvalidFileMetadata: for a naive datetime (its meaning would depend on the host).
    """
    if expires is None:
        return None
    if not isinstance(expires, datetime.datetime):
        raise InvalidFileMetadata(f"an expiry must be a datetime, not {expires!r}")
    if expires.tzinfo is None or expires.utcoffset() is None:
        raise InvalidFileMetadata(f"an expiry must have a timezone: {expires!r}")
    return expires


def quote_filename(name: str) -> str:
    """``name`` as one URL path segment (everything but unreserved characters escaped)."""
    return quote(name, safe="")
