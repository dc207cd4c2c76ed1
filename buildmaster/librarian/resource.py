"""The librarian's HTTP face (twisted.web), mounted anywhere in the master's web server.

Long: one HTTP face: downloads (ranges, conditional requests) and uploads (streamed, checked
before their body is read) share the request handling and the error answers.

``GET|HEAD /<alias id>/<filename>``
    The file, with ``Content-Length``, ``Content-Type``, ``ETag`` (its quoted SHA-1),
    ``Last-Modified`` and ``Accept-Ranges: bytes``; one byte range per request (206, or 416
    for a malformed or unsatisfiable one), ``If-Range``, ``If-None-Match`` and
    ``If-Modified-Since`` (304) honoured.
    404 for an unknown id, an expired file or a filename that does not match the id. A
    restricted file needs a download token for it as the basic-auth password: without one,
    the answer is 401 (with ``WWW-Authenticate``) whatever the filename and the expiry, so
    the name of a restricted file is told to nobody without its token. 500 when the bytes on
    disk are missing or have the wrong size (logged as an error, once an hour per content:
    they are not served). 503 when the database is unavailable, or the file cannot be opened
    now (out of file descriptors).

``POST /+upload/<filename>``
    Store the request body as a new file (operators and tools). Basic-auth password: an upload
    token (401 otherwise). ``Content-Type`` is the file's type; ``Content-Length`` is required
    (411) and at most the librarian's maximum file size (413). Optional headers:
    ``X-Librarian-Restricted: yes|no``, ``X-Librarian-Expires: <ISO 8601 with timezone>``,
    ``X-Librarian-SHA1: <hex>`` (checked: 400 and nothing stored on mismatch). Answers 201
    with ``Location`` (the file's public URL) and a JSON body (id, url, filename, size, sha1,
    sha256, md5, restricted, expires). 400 for a bad filename or header. A client that sends
    ``Expect: 100-continue`` gets ``100 Continue`` only once its token and declared size are
    accepted; otherwise its 401, 411 or 413 comes before it sent the body
    (:mod:`buildmaster.librarian.guard`).

Other methods get 405. Twisted itself answers 400 to a malformed request (a negative or
non-numeric ``Content-Length``, for one).
"""

from __future__ import annotations

import datetime
import json
import os
from typing import IO, Any, NoReturn, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from buildmaster.librarian.errors import (
    ContentMismatch,
    CorruptFile,
    FileNotFound,
    FileTooLarge,
    InvalidFileMetadata,
    UploadFailed,
)
from buildmaster.librarian.guard import REALM
from buildmaster.librarian.metadata import check_filename
from buildmaster.librarian.ranges import RangeNotSatisfiable, not_modified, parse_range
from buildmaster.librarian.sending import FileSender
from buildmaster.librarian.storage import SizeMismatch
from buildmaster.model import LibraryFile
from buildmaster.store.database import DatabaseUnavailable

__all__ = ["LibrarianResource", "ServedLibrarian", "UPLOAD_SEGMENT"]


class ServedLibrarian(Protocol):
    """What the HTTP face needs of the librarian (:class:`buildmaster.librarian.Librarian`)."""

    @property
    def max_file_size(self) -> int: ...

    def check_token(self, alias_id: int, token: str | bytes | None) -> bool: ...

    def check_upload_token(self, token: str | bytes | None) -> bool: ...

    def get(self, alias_id: int) -> defer.Deferred[LibraryFile]: ...

    def get_for_download(self, alias_id: int) -> defer.Deferred[LibraryFile]: ...

    def is_expired(self, file: LibraryFile) -> bool: ...

    def url_for(self, file: LibraryFile) -> str: ...

    def open_content(self, file: LibraryFile) -> defer.Deferred[int]: ...

    def run_in_thread(self, f: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]: ...

    def report_corrupt(self, file: LibraryFile, why: str) -> CorruptFile: ...

    def note_serving_failure(
        self, alias_id: int, why: str, *, damaged: bool = False, errno: int | None = None
    ) -> None: ...

    def add_body(
        self,
        name: str,
        size: int,
        file: IO[bytes],
        contentType: str,
        restricted: bool,
        expires: datetime.datetime | None,
        expected_sha1: str | None,
    ) -> defer.Deferred[int]: ...


UPLOAD_SEGMENT = b"+upload"
_MAX_ID_DIGITS = 18  # alias ids are bigints


class _Respond(Exception):
    """Answer with a short error response and stop handling the request."""

    def __init__(self, code: int, message: str, headers: dict[bytes, bytes] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}


def _parse_alias_path(postpath: list[bytes]) -> tuple[int, str]:
    """``(alias id, filename)`` from the path segments below the resource.

    :raises _Respond: 404 for anything else.
    """
    if len(postpath) != 2:
        raise _Respond(http.NOT_FOUND, "No such file.")
    id_text, name = postpath
    if not id_text.isdigit() or not id_text.isascii() or len(id_text) > _MAX_ID_DIGITS:
        raise _Respond(http.NOT_FOUND, "No such file.")
    try:
        filename = check_filename(name.decode("utf-8"))
    except (UnicodeDecodeError, InvalidFileMetadata):
        raise _Respond(http.NOT_FOUND, "No such file.") from None
    return int(id_text), filename


def _etag(file: LibraryFile) -> bytes:
    return f'"{file.sha1}"'.encode("ascii")


class _Disconnect:
    """Knows whether the client of a request went away."""

    def __init__(self, request: server.Request) -> None:
        self.gone = False
        request.notifyFinish().addErrback(self._lost)

    def _lost(self, failure: Failure) -> None:
        self.gone = True


class LibrarianResource(resource.Resource):
    """See the module docstring. Made by :meth:`buildmaster.librarian.Librarian.resource`."""

    isLeaf = True
    _log = Logger()

    def __init__(self, librarian: ServedLibrarian, use_sendfile: bool = True) -> None:
        super().__init__()
        self._librarian = librarian
        self._use_sendfile = use_sendfile

    # -- dispatch ----------------------------------------------------------------------------

    def render(self, request: server.Request) -> Any:
        # our own dispatch: twisted.web's 405 page is deprecated (and warns on every use)
        if request.method == b"GET":
            return self._handle(request, self._serve(request, head=False))
        if request.method == b"HEAD":
            return self._handle(request, self._serve(request, head=True))
        if request.method == b"POST":
            return self._handle(request, self._upload(request))
        allow = b"GET, HEAD, POST" if (request.postpath or [b""])[0] == UPLOAD_SEGMENT else None
        self._error(
            request,
            http.NOT_ALLOWED,
            "Method not allowed.",
            {b"allow": allow or b"GET, HEAD"},
        )
        return server.NOT_DONE_YET

    def _handle(self, request: server.Request, work: Any) -> Any:
        disconnect = _Disconnect(request)
        d = defer.Deferred.fromCoroutine(work)
        d.addErrback(self._failed, request, disconnect)
        return server.NOT_DONE_YET

    def _failed(self, failure: Failure, request: server.Request, disconnect: _Disconnect) -> None:
        if disconnect.gone:
            return
        if failure.check(_Respond):
            error = failure.value
            assert isinstance(error, _Respond)
            self._error(request, error.code, error.message, error.headers)
            return
        self._log.failure("Librarian request {uri} failed", failure, uri=request.uri)
        if request.startedWriting:
            # the headers promised bytes that will not come: drop the connection
            request.loseConnection()
        else:
            self._error(request, http.INTERNAL_SERVER_ERROR, "Internal error.")

    def _error(
        self,
        request: server.Request,
        code: int,
        message: str,
        headers: dict[bytes, bytes] | None = None,
    ) -> None:
        body = (message + "\n").encode("utf-8")
        request.setResponseCode(code)
        for name, value in (headers or {}).items():
            request.setHeader(name, value)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

    # -- downloads ---------------------------------------------------------------------------

    async def _lookup(self, alias_id: int) -> LibraryFile:
        try:
            return await self._librarian.get_for_download(alias_id)
        except FileNotFound:
            raise _Respond(http.NOT_FOUND, "No such file.") from None
        except DatabaseUnavailable as e:
            self._librarian.note_serving_failure(alias_id, f"its database is unavailable ({e})")
            raise _Respond(
                http.SERVICE_UNAVAILABLE, "The librarian is unavailable.", {b"retry-after": b"5"}
            ) from None

    async def _serve(self, request: server.Request, head: bool) -> None:
        alias_id, filename = _parse_alias_path(request.postpath or [])
        file = await self._lookup(alias_id)
        # the token first: without it, a right and a wrong name (or a file expired) answer
        # the same, so nobody learns a restricted file's name without its token
        if file.restricted and not self._librarian.check_token(file.id, request.getPassword()):
            raise _Respond(
                http.UNAUTHORIZED, "This file needs a valid token.", {b"www-authenticate": REALM}
            )
        if file.filename != filename or self._librarian.is_expired(file):
            raise _Respond(http.NOT_FOUND, "No such file.")
        fd = await self._open(file)
        try:
            await self._send(request, file, fd, head)
        except OSError as e:
            if request.startedWriting:
                raise
            # the master's own trouble before a byte went out (e.g. no file descriptor to
            # send it with): try again later
            self._unavailable(file, f"it could not be sent: {e}", e)
        finally:
            os.close(fd)

    async def _open(self, file: LibraryFile) -> int:
        try:
            fd: int = await self._librarian.open_content(file)
        except (FileNotFoundError, SizeMismatch) as e:
            why = "it is missing" if isinstance(e, FileNotFoundError) else str(e)
            self._librarian.report_corrupt(file, f"{why}; not served")
            self._librarian.note_serving_failure(
                file.id,
                "its bytes are missing" if isinstance(e, FileNotFoundError) else str(e),
                damaged=True,
            )
            raise _Respond(http.INTERNAL_SERVER_ERROR, "The file's bytes are damaged.") from e
        except OSError as e:
            # the master's own trouble (e.g. out of file descriptors): try again later
            self._unavailable(file, f"it could not be opened: {e}", e)
        return fd

    def _unavailable(self, file: LibraryFile, why: str, error: OSError) -> NoReturn:
        """The librarian cannot serve ``file`` now, for a reason of its own: note it (the
        master looks, to know whom to blame), and answer 503."""
        self._librarian.note_serving_failure(file.id, why, errno=error.errno)
        raise _Respond(
            http.SERVICE_UNAVAILABLE,
            "The librarian cannot serve the file now.",
            {b"retry-after": b"5"},
        ) from None

    async def _send(self, request: server.Request, file: LibraryFile, fd: int, head: bool) -> None:
        if request.channel is None:
            return  # the client left while we looked the file up
        size = file.filesize
        request.setHeader(b"content-type", file.mimetype.encode("ascii"))
        request.setHeader(b"accept-ranges", b"bytes")
        if file.restricted:
            request.setHeader(b"cache-control", b"private")
        etag = _etag(file)
        request.setHeader(b"etag", etag)
        modified = file.datecreated.timestamp() if file.datecreated is not None else None
        if modified is not None:
            request.setHeader(b"last-modified", http.datetimeToString(modified))
        if not_modified(
            request.getHeader(b"if-none-match"),
            request.getHeader(b"if-modified-since"),
            etag,
            modified,
        ):
            request.setResponseCode(http.NOT_MODIFIED)
            request.finish()
            return
        try:
            # a Range on anything but GET is ignored (RFC 9110 14.2)
            wanted = None if head else parse_range(request.getHeader(b"range"), size)
        except RangeNotSatisfiable as e:
            raise _Respond(
                http.REQUESTED_RANGE_NOT_SATISFIABLE,
                f"Range not satisfiable: {e}",
                {b"content-range": e.content_range().encode("ascii")},
            ) from None
        if_range = request.getHeader(b"if-range")
        if wanted is not None and if_range is not None and if_range.strip() != etag:
            wanted = None  # the client's copy is another file: send all of this one
        start, stop = 0, size
        if wanted is not None:
            start, stop = wanted.start, wanted.stop
            request.setResponseCode(http.PARTIAL_CONTENT)
            request.setHeader(b"content-range", wanted.content_range().encode("ascii"))
        request.setHeader(b"content-length", b"%d" % (stop - start))
        if head or start == stop:
            request.write(b"")
            request.finish()
            return
        sender = FileSender(
            request, fd, start, stop, self._librarian.run_in_thread, self._use_sendfile
        )
        try:
            complete = await sender.send()
        except OSError as e:
            raise CorruptFile(f"librarian file {file.id} could not be read: {e}") from e
        if request.channel is None:
            return  # the connection is gone
        if complete:
            request.finish()
        else:
            request.loseConnection()  # the client stopped listening: do not wait for it

    # -- uploads -----------------------------------------------------------------------------

    async def _upload(self, request: server.Request) -> None:
        postpath = request.postpath or []
        if not postpath or postpath[0] != UPLOAD_SEGMENT:
            raise _Respond(
                http.NOT_ALLOWED, "Upload with POST /+upload/<filename>.", {b"allow": b"GET, HEAD"}
            )
        if len(postpath) != 2:
            raise _Respond(http.NOT_FOUND, "Upload with POST /+upload/<filename>.")
        if not self._librarian.check_upload_token(request.getPassword()):
            raise _Respond(
                http.UNAUTHORIZED, "Uploading needs a valid token.", {b"www-authenticate": REALM}
            )
        try:
            filename = check_filename(postpath[1].decode("utf-8"))
        except UnicodeDecodeError:
            raise _Respond(http.BAD_REQUEST, "The filename is not UTF-8.") from None
        except InvalidFileMetadata as e:
            raise _Respond(http.BAD_REQUEST, str(e)) from None
        length_header = request.getHeader(b"content-length")
        if length_header is None:
            raise _Respond(http.LENGTH_REQUIRED, "Uploads need a Content-Length.")
        size = int(length_header)  # twisted.web refused anything but digits already
        if size > self._librarian.max_file_size:
            raise _Respond(
                http.REQUEST_ENTITY_TOO_LARGE,
                f"Files are limited to {self._librarian.max_file_size} bytes.",
            )
        content_type = (request.getHeader(b"content-type") or b"application/octet-stream").decode(
            "latin-1"
        )
        restricted = _yes_no(request.getHeader(b"x-librarian-restricted"))
        expires = _expiry(request.getHeader(b"x-librarian-expires"))
        sha1 = request.getHeader(b"x-librarian-sha1")
        expected_sha1 = sha1.decode("latin-1").strip().lower() if sha1 else None
        if expected_sha1 is not None and not _is_hex(expected_sha1, 40):
            raise _Respond(http.BAD_REQUEST, "X-Librarian-SHA1 is not a SHA-1.")
        content = request.content
        assert content is not None
        try:
            alias_id = await self._librarian.add_body(
                filename, size, content, content_type, restricted, expires, expected_sha1
            )
        except (InvalidFileMetadata, ContentMismatch) as e:
            raise _Respond(http.BAD_REQUEST, str(e)) from None
        except FileTooLarge as e:
            raise _Respond(http.REQUEST_ENTITY_TOO_LARGE, str(e)) from None
        except UploadFailed as e:
            raise _Respond(http.INTERNAL_SERVER_ERROR, str(e)) from None
        except DatabaseUnavailable:
            raise _Respond(
                http.SERVICE_UNAVAILABLE, "The librarian is unavailable.", {b"retry-after": b"5"}
            ) from None
        file = await self._librarian.get(alias_id)
        if request.channel is None:
            return  # stored; the client just will not hear about it
        url = self._librarian.url_for(file)
        body = json.dumps(
            {
                "id": file.id,
                "url": url,
                "filename": file.filename,
                "mimetype": file.mimetype,
                "size": file.filesize,
                "sha1": file.sha1,
                "sha256": file.sha256,
                "md5": file.md5,
                "restricted": file.restricted,
                "expires": file.expires.isoformat() if file.expires else None,
            }
        ).encode("utf-8")
        request.setResponseCode(http.CREATED)
        request.setHeader(b"location", url.encode("ascii"))
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and all(c in "0123456789abcdef" for c in text)


def _yes_no(value: bytes | None) -> bool:
    if value is None:
        return False
    text = value.strip().lower()
    if text in (b"yes", b"true", b"1"):
        return True
    if text in (b"no", b"false", b"0"):
        return False
    raise _Respond(http.BAD_REQUEST, "X-Librarian-Restricted must be yes or no.")


def _expiry(value: bytes | None) -> datetime.datetime | None:
    if value is None:
        return None
    try:
        expires = datetime.datetime.fromisoformat(value.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise _Respond(http.BAD_REQUEST, "X-Librarian-Expires is not an ISO 8601 time.") from None
    if expires.tzinfo is None:
        raise _Respond(http.BAD_REQUEST, "X-Librarian-Expires needs a timezone.")
    return expires
