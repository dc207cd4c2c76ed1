"""Request bodies nobody is allowed to send are not kept, and uploads are refused before
their bodies are sent when the client lets us.

twisted.web stores a request's body (in a temporary file past 100 kB) before any resource
sees the request, so without this an unauthenticated client could fill the master's disk
with uploads that would only be refused afterwards. :class:`GuardedSite` (the master's web
server) looks at each request as soon as its headers are in:

* an upload to the librarian (``POST /librarian/+upload/...``) that asks ``Expect:
  100-continue`` gets its final answer at once when it would be refused: 401 without a valid
  upload token (the basic-auth password), 413 when its declared ``Content-Length`` is over the
  librarian's limit, 411 without one. No ``100 Continue`` goes out first, the connection is
  closed after the answer, and the body is never sent. An upload that is accepted gets its
  ``100 Continue`` (from twisted.web) only then.
* any other request body larger than ``max_anonymous_body`` without a valid upload token, or
  larger than the librarian takes at all, is counted and dropped, never stored (the client
  sent it without waiting: it has to be read off the connection). The resource then refuses
  the request as usual (401 or 413): nothing was stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.web import http, resource, server

__all__ = ["guarded_request_factory", "DiscardedBody", "GuardedSite"]

#: The basic-auth challenge of the librarian.
REALM = b'Basic realm="librarian"'
_UPLOAD_SEGMENT = b"+upload"


class DiscardedBody:
    """Stands in for a request body that is counted, never stored."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)

    def read(self, size: int = -1) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def tell(self) -> int:
        return 0

    def close(self) -> None:
        pass


def _segments(target: bytes) -> list[bytes]:
    """The path segments of a request target, unquoted, as twisted.web routes them."""
    path = target.split(b"?", 1)[0]
    return [unquote_to_bytes(segment) for segment in path[1:].split(b"/")]


def guarded_request_factory(
    librarian: Callable[[], Any],
    max_anonymous_body: int = 64 * 1024,
    mount: bytes = b"librarian",
) -> type[server.Request]:
    """A ``Request`` class for the master's ``Site`` (use :class:`GuardedSite`).

    :param librarian: returns the :class:`~buildmaster.librarian.Librarian` (or ``None``
        while it does not exist yet: then no large body is kept, and no upload accepted).
    :param mount: where the librarian is in the web tree (its uploads are
        ``/<mount>/+upload/...``).
    """

    class GuardedRequest(server.Request):
        #: the request line's target, set by :class:`GuardedSite`'s connections before
        #: the headers are read (``None`` under another channel)
        target: bytes | None = None

        def gotLength(self, length: int | None) -> None:
            lib = librarian()
            allowed = lib is not None and self._may_upload(lib)
            too_big = length is not None and lib is not None and length > lib.max_file_size
            if self._expects_continue() and self._is_upload():
                refusal = self._refusal(lib, allowed, length, too_big)
                if refusal is not None:
                    self._refuse_now(*refusal)
                    return
            if too_big or (not allowed and (length is None or length > max_anonymous_body)):
                self.content = DiscardedBody()
                return
            super().gotLength(length)

        def _may_upload(self, lib: Any) -> bool:
            return bool(lib.check_upload_token(self.getPassword()))

        def _expects_continue(self) -> bool:
            expect = self.requestHeaders.getRawHeaders(b"expect") or []
            return bool(expect) and expect[0].strip().lower() == b"100-continue"

        def _is_upload(self) -> bool:
            if self.target is None:
                return False
            segments = _segments(self.target)
            return len(segments) >= 2 and segments[:2] == [mount, _UPLOAD_SEGMENT]

        def _refusal(
            self, lib: Any, allowed: bool, length: int | None, too_big: bool
        ) -> tuple[int, str, dict[bytes, bytes]] | None:
            if lib is None:
                return http.SERVICE_UNAVAILABLE, "The librarian is starting.", {}
            if not allowed:
                return (
                    http.UNAUTHORIZED,
                    "Uploading needs a valid token.",
                    {b"www-authenticate": REALM},
                )
            if length is None:
                return http.LENGTH_REQUIRED, "Uploads need a Content-Length.", {}
            if too_big:
                return (
                    http.REQUEST_ENTITY_TOO_LARGE,
                    f"Files are limited to {lib.max_file_size} bytes.",
                    {},
                )
            return None

        def _refuse_now(self, code: int, message: str, extra: dict[bytes, bytes]) -> None:
            """The final answer, before the body: no ``100 Continue`` (twisted.web sends one
            after this method unless the request no longer asks for it), and the connection
            is closed, since the client may send the body all the same."""
            self.requestHeaders.removeHeader(b"expect")
            self.content = DiscardedBody()
            body = (message + "\n").encode("utf-8")
            headers = [
                (b"Content-Type", b"text/plain; charset=utf-8"),
                (b"Content-Length", b"%d" % len(body)),
                (b"Connection", b"close"),
                *extra.items(),
            ]
            channel: Any = self.channel
            channel.writeHeaders(b"HTTP/1.1", b"%d" % code, http.RESPONSES[code], headers)
            channel.write(body)
            channel.loseConnection()

    return GuardedRequest


class _GuardedChannel(http.HTTPChannel):
    """Tells each request its target as soon as its request line is read (twisted.web only
    hands it over once the whole body is in)."""

    def lineReceived(self, line: bytes) -> None:
        before = self.requests[-1] if self.requests else None
        super().lineReceived(line)
        if self.requests and self.requests[-1] is not before:  # that was a request line
            parts = line.split()
            self.requests[-1].target = parts[1] if len(parts) == 3 else None


class GuardedSite(server.Site):
    """The master's web server: twisted.web's ``Site`` with the guard above, and no form
    parsing of POST bodies (uploads are raw bodies).

    :param root: the web tree (the librarian mounted at ``mount``).
    :param librarian: returns the librarian, or ``None`` while there is none yet.
    """

    protocol = _GuardedChannel  # type: ignore[assignment]

    def __init__(
        self,
        root: resource.Resource,
        librarian: Callable[[], Any],
        mount: bytes = b"librarian",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            root,
            requestFactory=guarded_request_factory(librarian, mount=mount),
            parsePOSTFormSubmission=False,
            **kwargs,
        )
