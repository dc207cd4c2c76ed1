"""HTTP byte ranges (RFC 9110 section 14) and conditional requests (section 13): pure, no I/O.

The librarian serves one range per response (what a builder resuming an interrupted chroot
download asks for). A ``Range`` header in another unit, or asking for several ranges, is
ignored (the whole file is served, as the RFC allows); a malformed ``bytes`` range or one
that starts past the end of the file is refused with 416, as nginx does.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime

import attrs

__all__ = ["ByteRange", "RangeNotSatisfiable", "parse_range", "not_modified", "etag_matches"]

_MAX_DIGITS = 19  # more than any file size; bounds the work an absurd header causes


@attrs.frozen
class ByteRange:
    """The bytes ``[start, stop)`` of a file of ``size`` bytes."""

    start: int
    stop: int
    size: int

    @property
    def length(self) -> int:
        return self.stop - self.start

    def content_range(self) -> str:
        """The ``Content-Range`` value of a 206 response."""
        return f"bytes {self.start}-{self.stop - 1}/{self.size}"


class RangeNotSatisfiable(ValueError):
    """A malformed or unsatisfiable ``bytes`` range: answer 416."""

    def __init__(self, size: int, reason: str) -> None:
        super().__init__(reason)
        self.size = size

    def content_range(self) -> str:
        """The ``Content-Range`` value of the 416 response."""
        return f"bytes */{self.size}"


def _number(text: bytes, size: int) -> int:
    if not text or len(text) > _MAX_DIGITS or not text.isdigit():
        raise RangeNotSatisfiable(size, f"not a byte position: {text!r}")
    return int(text)


def parse_range(header: bytes | None, size: int) -> ByteRange | None:
    """The range a ``Range`` header asks for in a file of ``size`` bytes.

    :returns: ``None`` when the whole file should be served (no header, another unit, or
        several ranges), else the one range (clipped to the file).
    :raises RangeNotSatisfiable: when a ``bytes`` range is malformed or starts past the end.
    """
    if header is None:
        return None
    unit, equals, spec = header.strip().partition(b"=")
    if not equals or unit.strip().lower() != b"bytes":
        return None
    specs = [s.strip() for s in spec.split(b",")]
    if len(specs) > 1:
        for each in specs:  # still refuse garbage, even among several ranges
            _parse_one(each, size)
        return None
    return _parse_one(specs[0], size)


def _parse_one(spec: bytes, size: int) -> ByteRange:
    first, dash, last = spec.partition(b"-")
    if not dash:
        raise RangeNotSatisfiable(size, f"not a byte range: {spec!r}")
    first, last = first.strip(), last.strip()
    if not first:
        suffix = _number(last, size)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(size, "an empty suffix range")
        return ByteRange(start=max(0, size - suffix), stop=size, size=size)
    start = _number(first, size)
    stop = size
    if last:
        end = _number(last, size)
        if end < start:
            raise RangeNotSatisfiable(size, f"a range that ends before it starts: {spec!r}")
        stop = min(end + 1, size)
    if start >= size:
        raise RangeNotSatisfiable(size, f"a range starting at {start}, past the end ({size})")
    return ByteRange(start=start, stop=stop, size=size)


def etag_matches(header: bytes, etag: bytes) -> bool:
    """Whether an ``If-None-Match`` value lists ``etag`` (weakly compared) or is ``*``."""
    if header.strip() == b"*":
        return True
    bare = etag.removeprefix(b"W/")
    return any(tag.strip().removeprefix(b"W/") == bare for tag in header.split(b","))


def not_modified(
    if_none_match: bytes | None,
    if_modified_since: bytes | None,
    etag: bytes,
    modified: float | None,
) -> bool:
    """Whether a GET or HEAD should be answered 304 Not Modified.

    ``If-None-Match`` decides when present; otherwise ``If-Modified-Since`` (a date not before
    ``modified``, the Unix time of the last change, means not modified). A malformed date is
    ignored.
    """
    if if_none_match is not None:
        return etag_matches(if_none_match, etag)
    if if_modified_since is None or modified is None:
        return False
    try:
        since = parsedate_to_datetime(if_modified_since.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return False
    if since.tzinfo is None:
        return False
    return int(modified) <= since.timestamp()
