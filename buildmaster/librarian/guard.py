"""Request bodies nobody is allowed to send are not kept; large API uploads are streamed.

twisted.web stores a request's body (in a temporary file past 100 kB) before any resource
sees the request, so without this an unauthenticated client could fill the master's disk
with uploads that would only be refused afterwards. :func:`guarded_request_factory` makes
the master's ``Site`` count and drop a body larger than ``max_anonymous_body`` unless the
request carries a valid librarian upload token (the basic-auth password), or when it is
larger than the librarian takes at all. The resource then refuses the request as usual
(401 or 413): nothing was stored.

A large body sent with an operator API bearer token (``Authorization: Bearer ...``) is
streamed into the librarian as it arrives (:class:`StreamedBody`): the connection is not
read while the token is checked (an asynchronous database lookup); a valid token's body
goes straight into a librarian upload, hashed on the way, the connection paused whenever
the upload has more than a few megabytes waiting for the disk; an invalid token's body is
counted and dropped. The API resource names the file and finishes the upload; a body no
resource takes is deleted when the request ends.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server

from buildmaster.librarian.errors import LibrarianError
from buildmaster.librarian.upload import Upload

__all__ = ["guarded_request_factory", "DiscardedBody", "StreamedBody", "BodyRefused"]

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


def guarded_request_factory(
    librarian: Callable[[], Any],
    max_anonymous_body: int = 64 * 1024,
    verify_bearer: Callable[[str], defer.Deferred[bool]] | None = None,
) -> type[server.Request]:
    """A ``Request`` class for the master's ``Site``.

    :param librarian: returns the :class:`~buildmaster.librarian.Librarian` (or ``None``
        while it does not exist yet: then no large body is kept).
    :param verify_bearer: checks an operator API bearer token (fires with whether it is
        valid); without it, bearer bodies are treated like anonymous ones.
    """

    class GuardedRequest(server.Request):
        def gotLength(self, length: int | None) -> None:
            lib = librarian()
            too_big = length is not None and lib is not None and length > lib.max_file_size
            if too_big:
                self.content = DiscardedBody()
                return
            small = length is not None and length <= max_anonymous_body
            if small:
                super().gotLength(length)
                return
            bearer = self._bearer()
            if lib is not None and bearer is not None and verify_bearer is not None:
                now = datetime.datetime.fromtimestamp(lib.clock.seconds(), datetime.UTC)
                self.content = StreamedBody(self, lib.new_upload, verify_bearer(bearer), now)
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

        def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
            if isinstance(self.content, StreamedBody):
                self.content.received()
            super().requestReceived(command, path, version)

    return GuardedRequest
