"""Request bodies nobody is allowed to send are not kept; large API uploads are streamed;
librarian uploads are refused before their bodies are sent when the client lets us.

Long: every refusal made from a request's headers alone (librarian uploads, API uploads,
the answer to ``Expect: 100-continue``) is decided in one place, before twisted.web reads a
body; split, the order of those checks would be spread over several modules.

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
* a request to the operator API (``/api/...``) with a body that asks ``Expect:
  100-continue`` gets its ``100 Continue`` only once its bearer token is found valid (the
  token is checked first, an asynchronous database lookup); without a token, or with an
  unknown or revoked one, it gets the API's 401 problem document at once, and the
  connection is closed: the body is never sent. (What the token may do is decided by the
  resource, after the body: a valid token that may not upload gets its 403 then.)
* a large body sent with an operator API bearer token (``Authorization: Bearer ...``) is
  streamed into the librarian as it arrives (:class:`StreamedBody`): the connection is not
  read while the token is checked (an asynchronous database lookup); a valid token's body
  goes straight into a librarian upload, hashed on the way, the connection paused whenever
  the upload has more than a few megabytes waiting for the disk; an invalid token's body is
  counted and dropped. The API resource names the file and finishes the upload; a body no
  resource takes is deleted when the request ends.
* any other request body larger than ``max_anonymous_body`` without a valid librarian
  upload token, or larger than the librarian takes at all, is counted and dropped, never
  stored (the client sent it without waiting: it has to be read off the connection). The
  resource then refuses the request as usual (401 or 413): nothing was stored.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from buildmaster.librarian.errors import LibrarianError
from buildmaster.librarian.upload import Upload

__all__ = [
    "guarded_request_factory",
    "DiscardedBody",
    "GuardedSite",
    "StreamedBody",
    "BodyRefused",
]

#: The basic-auth challenge of the librarian.
REALM = b'Basic realm="librarian"'
#: ... and the operator API's
_BEARER_CHALLENGE = b'Bearer realm="buildmaster"'
_UPLOAD_SEGMENT = b"+upload"
#: a streamed body is stored under this name until the resource names it
UNNAMED = "upload"
#: ... and expires after this unless the resource says otherwise when it finishes it
UNNAMED_LIFETIME = datetime.timedelta(hours=1)


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


class BodyRefused(Exception):
    """The streamed body was not kept: the token was refused, or could not be checked
    (``unavailable``), or the upload failed (``error``)."""

    def __init__(
        self, message: str, unavailable: bool = False, error: LibrarianError | None = None
    ):
        super().__init__(message)
        self.unavailable = unavailable
        self.error = error


class StreamedBody(DiscardedBody):
    """A bearer request's body, streamed into a librarian upload once the token is valid.

    :param request: the request whose body this is (its transport is paused and resumed).
    :param new_upload: makes the librarian upload (``Librarian.new_upload``).
    :param verification: fires with whether the token is valid.
    """

    _log = Logger()

    def __init__(
        self,
        request: server.Request,
        new_upload: Callable[..., Upload],
        verification: defer.Deferred[bool],
        now: datetime.datetime,
    ) -> None:
        super().__init__()
        self._request = request
        self._new_upload = new_upload
        self._expires = now + UNNAMED_LIFETIME
        self._buffer: list[bytes] = []
        self._upload: Upload | None = None
        self._refused: BodyRefused | None = None
        self._taken = False
        self._received = False
        self._paused = False
        self._checked: defer.Deferred[None] = defer.Deferred()
        request.notifyFinish().addBoth(self._request_over)
        self._pause()
        verification.addCallbacks(self._verified, self._not_verified)

    # -- the transport ---------------------------------------------------------------------

    def _pause(self) -> None:
        transport = self._request.transport
        if not self._paused and transport is not None:
            self._paused = True
            transport.pauseProducing()

    def _resume(self, _: object = None) -> None:
        # once the whole body is in, the connection is the HTTP channel's to manage again
        transport = self._request.transport
        if self._paused and not self._received and transport is not None:
            self._paused = False
            transport.resumeProducing()

    # -- the token -------------------------------------------------------------------------

    def _verified(self, valid: bool) -> None:
        if not valid:
            self._refuse(BodyRefused("the bearer token is unknown or revoked"))
        else:
            try:
                self._upload = self._new_upload(
                    UNNAMED, "application/octet-stream", restricted=True, expires=self._expires
                )
            except LibrarianError as e:
                self._refuse(BodyRefused(str(e), error=e))
            else:
                buffered, self._buffer = self._buffer, []
                for chunk in buffered:
                    self._feed(chunk)
        self._checked.callback(None)
        self._resume()

    def _not_verified(self, failure: Failure) -> None:
        self._refuse(BodyRefused(f"the token could not be checked: {failure.value}", True))
        self._checked.callback(None)
        self._resume()

    def _refuse(self, refusal: BodyRefused) -> None:
        if self._refused is None:
            self._refused = refusal
        self._buffer = []

    # -- the body --------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._refused is not None:
            return
        if self._upload is None:  # still checking the token: a read or two already made
            self._buffer.append(data)
            self._pause()
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        assert self._upload is not None
        try:
            room = self._upload.write(data)
        except LibrarianError as e:
            self._refuse(BodyRefused(str(e), error=e))
            return
        if not room.called:
            self._pause()
            room.addCallback(self._resume)

    def received(self) -> None:
        """The whole body has arrived (called by the request)."""
        self._received = True

    async def take(self) -> Upload:
        """The upload holding the body, for the caller to ``finish`` (naming the file) or
        ``abort``; it is no longer deleted with the request.

        :raises BodyRefused: when the body was not kept.
        """
        await self._checked
        if self._refused is not None:
            raise self._refused
        assert self._upload is not None
        self._taken = True
        return self._upload

    def _request_over(self, _: object) -> None:
        self._received = True
        if self._upload is not None and not self._taken:
            self._upload.abort().addErrback(
                lambda f: self._log.failure("Dropping an unused upload failed", f)
            )


def _segments(target: bytes) -> list[bytes]:
    """The path segments of a request target, unquoted, as twisted.web routes them."""
    path = target.split(b"?", 1)[0]
    return [unquote_to_bytes(segment) for segment in path[1:].split(b"/")]


def guarded_request_factory(
    librarian: Callable[[], Any],
    max_anonymous_body: int = 64 * 1024,
    verify_bearer: Callable[[str], defer.Deferred[bool]] | None = None,
    mount: bytes = b"librarian",
    api_mount: bytes = b"api",
) -> type[server.Request]:
    """A ``Request`` class for the master's ``Site`` (use :class:`GuardedSite`).

    :param librarian: returns the :class:`~buildmaster.librarian.Librarian` (or ``None``
        while it does not exist yet: then no large body is kept, and no upload accepted).
    :param verify_bearer: checks an operator API bearer token (fires with whether it is
        valid); without it, bearer bodies are treated like anonymous ones.
    :param mount: where the librarian is in the web tree (its uploads are
        ``/<mount>/+upload/...``).
    :param api_mount: where the operator API is (``/<api_mount>/...``): its requests with a
        body that wait for ``100 Continue`` get it only with a valid bearer token.
    """

    class GuardedRequest(server.Request):
        #: the request line's target, set by :class:`GuardedSite`'s connections before
        #: the headers are read (``None`` under another channel)
        target: bytes | None = None

        def gotLength(self, length: int | None) -> None:
            lib = librarian()
            too_big = length is not None and lib is not None and length > lib.max_file_size
            verification = None
            if self._expects_continue() and self._is_upload():
                refusal = self._refusal(lib, length, too_big)
                if refusal is not None:
                    self._refuse_now(*refusal)
                    return
            elif self._expects_continue() and self._is_api() and length != 0:
                verification = self._continue_when_valid()
                if verification is None:
                    return
            if too_big:
                self.content = DiscardedBody()
                return
            small = length is not None and length <= max_anonymous_body
            if small:
                super().gotLength(length)
                return
            bearer = self._bearer()
            if lib is not None and bearer is not None and verify_bearer is not None:
                if verification is None:
                    verification = verify_bearer(bearer)
                now = datetime.datetime.fromtimestamp(lib.clock.seconds(), datetime.UTC)
                self.content = StreamedBody(self, lib.new_upload, verification, now)
                return
            if lib is not None and self._may_upload(lib):
                super().gotLength(length)
                return
            self.content = DiscardedBody()

        def _bearer(self) -> str | None:
            header = self.getHeader(b"authorization")
            if header is None or not header[:7].lower() == b"bearer ":
                return None
            return header[7:].strip().decode("ascii", "replace")

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

        def _is_api(self) -> bool:
            return self.target is not None and _segments(self.target)[0] == api_mount

        def _continue_when_valid(self) -> defer.Deferred[bool] | None:
            """An API request with a body that waits for ``100 Continue``: refused at once
            without a bearer token (every API request with a body needs one); with one, its
            ``100 Continue`` goes out once the token is found valid, else the 401 does (and
            the connection is closed). The token's verification, for the body to wait on too
            (``None`` when refused already)."""
            bearer = self._bearer()
            if bearer is None or verify_bearer is None:
                self._refuse_api("a request with a body needs 'Authorization: Bearer <token>'")
                return None
            self.requestHeaders.removeHeader(b"expect")  # no 100 Continue from twisted.web yet
            verification = verify_bearer(bearer)

            def decided(valid: bool) -> bool:
                if self.channel is None:  # the client went away meanwhile
                    return valid
                if valid:
                    channel: Any = self.channel
                    channel.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                else:
                    self._refuse_api(
                        "the bearer token is unknown or revoked; ask an admin for a new one"
                    )
                return valid

            def failed(failure: Failure) -> Failure:
                if self.channel is not None:
                    self._refuse_now(
                        http.SERVICE_UNAVAILABLE,
                        f"The token could not be checked: {failure.value}",
                        {b"retry-after": b"5"},
                    )
                return failure

            verification.addCallbacks(decided, failed)
            return verification

        def _refuse_api(self, detail: str) -> None:
            """The operator API's 401 problem document (``unauthenticated``), before the
            body."""
            path = (self.target or b"").split(b"?", 1)[0].decode("utf-8", "replace")
            document = {
                "type": "urn:buildmaster:problem:unauthenticated",
                "title": "A valid bearer token is needed",
                "status": http.UNAUTHORIZED,
                "detail": detail,
                "instance": path,
            }
            self._refuse_now(
                http.UNAUTHORIZED,
                json.dumps(document),
                {b"www-authenticate": _BEARER_CHALLENGE},
                b"application/problem+json",
            )

        def _refusal(
            self, lib: Any, length: int | None, too_big: bool
        ) -> tuple[int, str, dict[bytes, bytes]] | None:
            if lib is None:
                return http.SERVICE_UNAVAILABLE, "The librarian is starting.", {}
            if not self._may_upload(lib):
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

        def _refuse_now(
            self,
            code: int,
            message: str,
            extra: dict[bytes, bytes],
            content_type: bytes = b"text/plain; charset=utf-8",
        ) -> None:
            """The final answer, before the body: no ``100 Continue`` (twisted.web sends one
            after this method unless the request no longer asks for it), and the connection
            is closed, since the client may send the body all the same."""
            self.requestHeaders.removeHeader(b"expect")
            if not isinstance(self.content, StreamedBody):
                self.content = DiscardedBody()
            body = (message + "\n").encode("utf-8")
            headers = [
                (b"Content-Type", content_type),
                (b"Content-Length", b"%d" % len(body)),
                (b"Connection", b"close"),
                *extra.items(),
            ]
            channel: Any = self.channel
            channel.writeHeaders(b"HTTP/1.1", b"%d" % code, http.RESPONSES[code], headers)
            channel.write(body)
            channel.loseConnection()

        def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
            if isinstance(self.content, StreamedBody):
                self.content.received()
            super().requestReceived(command, path, version)

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
    :param verify_bearer: checks an operator API bearer token (see
        :func:`guarded_request_factory`).
    """

    protocol = _GuardedChannel  # type: ignore[assignment]

    def __init__(
        self,
        root: resource.Resource,
        librarian: Callable[[], Any],
        verify_bearer: Callable[[str], defer.Deferred[bool]] | None = None,
        mount: bytes = b"librarian",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            root,
            requestFactory=guarded_request_factory(
                librarian, verify_bearer=verify_bearer, mount=mount
            ),
            parsePOSTFormSubmission=False,
            **kwargs,
        )
