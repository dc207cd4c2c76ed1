"""The operator API's resources: a tree of twisted.web resources whose methods are
``async def get(self, call)``, ``post``, ... returning a :class:`Reply`.

Long: routing, reading and validating a request and writing its reply form the one small
framework every endpoint stands on; they change together.

:class:`Endpoint` routes by path segment (``child``) and by method; :class:`Call` is what a
handler reads from the request (query parameters, the JSON body validated against the
OpenAPI document's schema, the bearer token's grant, an uploaded file streamed into the
librarian). Every answer is JSON; every error, whatever raised it, becomes a problem
document (:mod:`buildmaster.web.api.problems`) with a 4xx status for the client's mistakes
and 5xx only for the master's.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import enum
import io
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import attrs
import orjson
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from twisted.web.http import NO_CONTENT, NOT_MODIFIED, OK

from buildmaster.access import ANONYMOUS, Grant
from buildmaster.librarian import (
    ContentMismatch,
    FileTooLarge,
    InvalidFileMetadata,
    LibrarianError,
    Upload,
)
from buildmaster.librarian.guard import BodyRefused, DiscardedBody, StreamedBody
from buildmaster.names import InvalidName
from buildmaster.store.database import ConstraintViolation, DatabaseUnavailable, NotFound
from buildmaster.store.jobs import JobGone
from buildmaster.store.tokens import ApiToken
from buildmaster.transitions import IllegalTransition
from buildmaster.web.api import schemas
from buildmaster.web.api.answers import Answer, etag_of
from buildmaster.web.api.context import ApiContext
from buildmaster.web.api.problems import CONTENT_TYPE, Problem, invalid_parameter

__all__ = [
    "Endpoint",
    "Call",
    "Reply",
    "STREAMED",
    "E",
    "encode",
    "encode_json",
    "numeric_id",
]

E = TypeVar("E", bound=enum.Enum)

JSON_TYPE = b"application/json"
#: the methods whose anonymous answers may be shared (:mod:`buildmaster.web.api.answers`)
_SHAREABLE = frozenset({b"GET", b"HEAD"})
_CHALLENGE = b'Bearer realm="buildmaster"'


@attrs.frozen
class Reply:
    """A JSON answer (``body`` ``None``: no body, e.g. 204)."""

    status: int
    body: Any = None
    headers: dict[bytes, bytes] = attrs.Factory(dict)


#: a handler that wrote its answer itself (a stream) returns this
STREAMED = Reply(0)


def ok(body: Any) -> Reply:
    return Reply(OK, body)


def created(body: Any, location: str) -> Reply:
    return Reply(http.CREATED, body, {b"location": location.encode("ascii")})


def no_content() -> Reply:
    return Reply(NO_CONTENT)


class Call:
    """One request as a handler sees it."""

    def __init__(self, ctx: ApiContext, request: server.Request) -> None:
        self.ctx = ctx
        self.request = request
        self._grant: Grant | None = None
        self.token: ApiToken | None = None
        self.gone = False
        request.notifyFinish().addErrback(self._lost)

    def _lost(self, failure: Failure) -> None:
        self.gone = True

    @property
    def path(self) -> str:
        return (self.request.path or b"").decode("utf-8", "replace")

    # -- query parameters ------------------------------------------------------------------

    def param(self, name: str) -> str | None:
        values = (self.request.args or {}).get(name.encode("ascii"))
        if not values:
            return None
        try:
            return values[-1].decode("utf-8")
        except UnicodeDecodeError:
            raise invalid_parameter(name, "is not UTF-8") from None

    def int_param(
        self, name: str, default: int | None = None, minimum: int = 0, maximum: int = 2**31 - 1
    ) -> int | None:
        text = self.param(name)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise invalid_parameter(name, f"{text!r} is not a whole number") from None
        if not minimum <= value <= maximum:
            raise invalid_parameter(name, f"{value} is not between {minimum} and {maximum}")
        return value

    def bool_param(self, name: str) -> bool | None:
        text = self.param(name)
        if text is None:
            return None
        if text.lower() in ("true", "yes", "1"):
            return True
        if text.lower() in ("false", "no", "0"):
            return False
        raise invalid_parameter(name, f"{text!r} is not true or false")

    def time_param(self, name: str) -> datetime.datetime | None:
        text = self.param(name)
        if text is None:
            return None
        try:
            when = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise invalid_parameter(
                name, f"{text!r} is not a date and time (RFC 3339, e.g. 2025-01-31T12:00:00Z)"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        return when

    def enum_params(self, name: str, kind: type[E], spelling: Callable[[E], str]) -> tuple[E, ...]:
        """Every value given for ``name`` (repeated or comma-separated), as ``kind``."""
        values = (self.request.args or {}).get(name.encode("ascii"), [])
        known = {spelling(member): member for member in kind}
        found = []
        for raw in values:
            for text in raw.decode("utf-8", "replace").split(","):
                if not text:
                    continue
                member = known.get(text.lower())
                if member is None:
                    raise invalid_parameter(
                        name, f"{text!r} is not one of {', '.join(sorted(known))}"
                    )
                found.append(member)
        return tuple(dict.fromkeys(found))

    def page_size(self) -> int:
        limits = self.ctx.limits
        size = self.int_param("limit", limits.page_size, 1, limits.max_page_size)
        assert size is not None
        return size

    # -- the token -------------------------------------------------------------------------

    async def grant(self) -> Grant:
        """What the bearer token grants (nothing without one).

        :raises Problem: 401 for a malformed, unknown or revoked token.
        """
        if self._grant is not None:
            return self._grant
        header = self.request.getHeader(b"authorization")
        if header is None:
            self._grant = ANONYMOUS
            return ANONYMOUS
        scheme, _, secret = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise self.unauthenticated(
                "send the token as 'Authorization: Bearer <token>'", challenge=True
            )
        token = await self.ctx.store.tokens.authenticate(secret.strip())
        if token is None:
            raise self.unauthenticated(
                "the bearer token is unknown or revoked; ask an admin for a new one"
                " (python -m buildmaster.tokens create)"
            )
        self.token = token
        self._grant = Grant(token.id, token.admin, frozenset(token.archive_ids))
        return self._grant

    def unauthenticated(self, detail: str, challenge: bool = True) -> Problem:
        headers = {b"www-authenticate": _CHALLENGE} if challenge else {}
        return Problem(http.UNAUTHORIZED, "unauthenticated", detail, headers)

    async def require_token(self, what: str) -> Grant:
        grant = await self.grant()
        if not grant.authenticated:
            raise self.unauthenticated(
                f"{what} needs a bearer token: send 'Authorization: Bearer <token>'"
            )
        return grant

    async def require_admin(self, what: str) -> Grant:
        grant = await self.require_token(what)
        if not grant.admin:
            raise Problem(
                http.FORBIDDEN,
                "forbidden",
                f"{what} needs an admin token; this token (id {grant.token_id}) is an"
                " uploader token",
            )
        return grant

    # -- bodies ----------------------------------------------------------------------------

    def json(self, schema: str) -> Any:
        """The body, parsed and checked against the OpenAPI schema ``schema``.

        :raises Problem: 413 (too large), 415 (not JSON), 400 (malformed, or breaks the
            schema, with every error in ``errors``).
        """
        content = self.request.content
        limit = self.ctx.limits.max_json_body
        if isinstance(content, DiscardedBody) or not isinstance(content, io.IOBase | io.BytesIO):
            raise Problem(
                http.REQUEST_ENTITY_TOO_LARGE,
                "body-too-large",
                f"a JSON body may have {limit} bytes at most",
            )
        content.seek(0)
        data = content.read(limit + 1)
        if len(data) > limit:
            raise Problem(
                http.REQUEST_ENTITY_TOO_LARGE,
                "body-too-large",
                f"a JSON body may have {limit} bytes at most",
            )
        kind = (self.request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if data and kind not in (b"", b"application/json") and not kind.endswith(b"+json"):
            raise Problem(
                http.UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                f"the body must be JSON, sent with 'Content-Type: application/json'"
                f" (it came as {kind.decode('latin-1')!r}; with curl, add -H"
                " 'Content-Type: application/json')",
            )
        try:
            value = json.loads(data or b"{}")
        except ValueError as e:
            raise Problem(
                http.BAD_REQUEST, "bad-request", f"the body is not valid JSON: {e}"
            ) from None
        errors = schemas.errors(schema, value)
        if errors:
            raise Problem(
                http.BAD_REQUEST,
                "invalid-body",
                f"the body breaks the {schema} schema: {errors[0]}",
                errors=errors,
            )
        return value

    def content_sha256(self) -> str | None:
        """The SHA-256 a ``Content-Digest: sha-256=:<base64>:`` header (RFC 9530) declares.

        :raises Problem: 400 for a malformed one.
        """
        header = self.request.getHeader(b"content-digest")
        if header is None:
            return None
        for item in header.decode("latin-1").split(","):
            algorithm, _, value = item.strip().partition("=")
            if algorithm.strip().lower() != "sha-256":
                continue
            value = value.strip()
            try:
                digest = base64.b64decode(value.strip(":"), validate=True)
            except (binascii.Error, ValueError):
                digest = b""
            if not (value.startswith(":") and value.endswith(":") and len(digest) == 32):
                raise Problem(
                    http.BAD_REQUEST,
                    "bad-request",
                    "Content-Digest: give sha-256=:<base64 of the 32-byte digest>: (RFC 9530)",
                )
            return digest.hex()
        return None

    async def store_body(
        self,
        filename: str,
        content_type: str,
        restricted: bool,
        expires: datetime.datetime | None,
    ) -> int:
        """Store the request body in the librarian as ``filename``: the new alias's id.

        Checked against a ``Content-Digest`` when the request has one.

        :raises Problem: 400 for a bad name or digest, or bytes that are not what the digest
            says (nothing is stored); 413, 401 as :meth:`body_upload`.
        """
        sha256 = self.content_sha256()
        upload = await self.body_upload()
        try:
            upload.rename(filename, content_type, restricted, expires, expected_sha256=sha256)
            return int(await upload.finish())
        except ContentMismatch as e:
            raise Problem(http.BAD_REQUEST, "bad-request", f"not stored: {e}") from None
        except LibrarianError as e:
            await upload.abort()
            raise problem_for_librarian(e) from None

    async def body_upload(self) -> Upload:
        """The request body as a librarian upload, for the handler to ``rename`` and
        ``finish`` (or ``abort``): streamed already if it was large, else written now.

        :raises Problem: 413 when it was too large to keep, 401 when its token was refused.
        """
        content = self.request.content
        librarian = self.ctx.librarian
        if isinstance(content, StreamedBody):
            try:
                return await content.take()
            except BodyRefused as e:
                if e.error is not None:
                    raise problem_for_librarian(e.error) from None
                if e.unavailable:
                    raise unavailable(str(e)) from None
                raise self.unauthenticated(str(e)) from None
        if isinstance(content, DiscardedBody) or content is None:
            raise Problem(
                http.REQUEST_ENTITY_TOO_LARGE,
                "body-too-large",
                f"files are limited to {librarian.max_file_size} bytes",
            )
        upload = librarian.new_upload("upload", "application/octet-stream", restricted=True)
        try:
            content.seek(0)
            await upload.write(content.read())
        except BaseException:
            await upload.abort()
            raise
        return upload


def numeric_id(segment: str) -> int | None:
    """A path segment as an id (``None`` when it is not one: ASCII digits only, as ``int``
    would also read other scripts' digits and fail on superscripts)."""
    if segment.isascii() and segment.isdigit() and len(segment) < 10:
        return int(segment)
    return None


def unavailable(detail: str) -> Problem:
    return Problem(http.SERVICE_UNAVAILABLE, "unavailable", detail, {b"retry-after": b"5"})


def problem_for_librarian(error: LibrarianError) -> Problem:
    if isinstance(error, FileTooLarge):
        return Problem(http.REQUEST_ENTITY_TOO_LARGE, "body-too-large", str(error))
    if isinstance(error, ContentMismatch | InvalidFileMetadata):
        return Problem(http.BAD_REQUEST, "bad-request", str(error))
    return Problem(http.INTERNAL_SERVER_ERROR, "storage-error", str(error))


Handler = Callable[[Call], Awaitable[Reply]]


class Endpoint(resource.Resource):
    """A node of the API: answers the methods it has handlers for (``get``, ``post``,
    ``put``, ``patch``, ``delete``: async methods taking a :class:`Call`), and finds its
    children with :meth:`child`."""

    _log = Logger()
    methods: tuple[str, ...] = ()
    #: whether its anonymous GET answers may be shared (:mod:`buildmaster.web.api.answers`)
    shared = True

    def __init__(self, ctx: ApiContext) -> None:
        super().__init__()
        self.ctx = ctx

    def child(self, segment: str) -> Endpoint | None:
        """The child called ``segment`` (``None``: there is none)."""
        return None

    def getChild(self, path: bytes, request: server.Request) -> resource.IResource:
        if path == b"" and not request.postpath:
            return cast(resource.IResource, self)  # a trailing slash
        try:
            segment = path.decode("utf-8")
        except UnicodeDecodeError:
            segment = None
        found = self.child(segment) if segment else None
        return cast(resource.IResource, found if found is not None else Missing(self.ctx))

    def handler(self, method: str) -> Handler | None:
        name = "get" if method == "HEAD" else method.lower()
        if name not in self.methods:
            return None
        found: Handler = getattr(self, name)
        return found

    def _shares(self, request: server.Request) -> bool:
        """Whether the request's answer is one shared by anonymous readers
        (:mod:`buildmaster.web.api.answers`)."""
        return (
            self.shared
            and (request.method or b"GET").upper() in _SHAREABLE
            and request.getHeader(b"authorization") is None
            and self.ctx.answers.enabled
        )

    def render(self, request: server.Request) -> int:
        kept = self.ctx.answers.fresh(request.uri) if self._shares(request) else None
        if kept is not None:  # at once, as most of the polling readers are answered
            method = (request.method or b"GET").decode("ascii").upper()
            self.ctx.metrics.api_request(method, kept.status)
            _send(request, kept, method, True)
            return server.NOT_DONE_YET
        d = defer.Deferred.fromCoroutine(self._answer(request))
        d.addErrback(lambda f: self._log.failure("Answering {uri} failed", f, uri=request.uri))
        return server.NOT_DONE_YET

    async def _answer(self, request: server.Request) -> None:
        method = (request.method or b"GET").decode("ascii", "replace").upper()
        call = Call(self.ctx, request)
        anonymous = request.getHeader(b"authorization") is None
        answers = self.ctx.answers
        if self._shares(request):
            answer = await answers.get(request.uri, lambda: self._make(call, method))
        else:
            answer = await self._make(call, method)
            if method not in ("GET", "HEAD") and answer.status < 400:
                answers.clear()  # the farm changed: anonymous readers see it at once
                self.ctx.store.views.queue.forget()  # and its dispatch order too
        if answer is _STREAMED:
            return
        self.ctx.metrics.api_request(method, answer.status)
        if call.gone:
            return
        _send(request, answer, method, anonymous)

    async def _make(self, call: Call, method: str) -> Answer:
        try:
            handler = self.handler(method)
            if handler is None:
                allow = ", ".join(m.upper() for m in self.methods)
                raise Problem(
                    http.NOT_ALLOWED,
                    "method-not-allowed",
                    f"{call.path} answers {allow or 'nothing'}, not {method}",
                    {b"allow": allow.encode("ascii")},
                )
            reply = await handler(call)
        except Problem as p:
            reply = self._problem(call, p)
        except Exception as e:
            reply = self._problem(call, self._translate(e, call))
        if reply is STREAMED:
            return _STREAMED
        return encode(reply, with_etag=method in ("GET", "HEAD"))

    def _problem(self, call: Call, problem: Problem) -> Reply:
        headers = {b"content-type": CONTENT_TYPE, **problem.headers}
        return Reply(problem.status, problem.document(call.path), headers)

    def _translate(self, error: Exception, call: Call) -> Problem:
        if isinstance(error, NotFound):
            return Problem(http.NOT_FOUND, "not-found", str(error))
        if isinstance(error, InvalidName):  # a name the schema's pattern let through
            return Problem(http.BAD_REQUEST, "invalid-body", str(error))
        if isinstance(error, IllegalTransition | JobGone):
            return Problem(http.CONFLICT, "conflict", str(error))
        if isinstance(error, ConstraintViolation):
            return Problem(http.CONFLICT, "conflict", str(error))
        if isinstance(error, DatabaseUnavailable):
            self.ctx.metrics.database_error("api")
            return unavailable(f"{error}; try again in a few seconds")
        if isinstance(error, LibrarianError):
            self.ctx.metrics.librarian_error("api")
            return problem_for_librarian(error)
        self._log.failure(
            "The API failed on {method} {uri}",
            Failure(error),
            method=call.request.method,
            uri=call.request.uri,
        )
        return Problem(
            http.INTERNAL_SERVER_ERROR,
            "internal-error",
            "the master failed to answer this request; its log says why",
        )


class Missing(Endpoint):
    """Any path the API does not have."""

    def getChild(self, path: bytes, request: server.Request) -> resource.IResource:
        return cast(resource.IResource, self)

    def handler(self, method: str) -> Handler | None:
        return self.missing

    async def missing(self, call: Call) -> Reply:
        raise Problem(
            http.NOT_FOUND,
            "not-found",
            f"the API has no {call.path}; GET /api/v1/openapi.json lists what it has",
        )


def encode_json(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON; datetimes in RFC 3339, UTC ones with ``Z`` (orjson:
    a page of a hundred builds takes a tenth of the time the standard library's needs)."""
    return orjson.dumps(value, option=orjson.OPT_UTC_Z)


#: what ``_make`` answers for a handler that wrote its answer itself
_STREAMED = Answer(0, {}, b"")


def encode(reply: Reply, with_etag: bool = False) -> Answer:
    """``reply`` as it goes on the wire (a ``200`` with its ``ETag`` if ``with_etag``)."""
    headers = dict(reply.headers)
    if reply.body is None:
        return Answer(reply.status, headers, b"")
    body = encode_json(reply.body)
    headers.setdefault(b"content-type", JSON_TYPE)
    etag = etag_of(body) if with_etag and reply.status == OK else None
    return Answer(reply.status, headers, body, etag)


def _send(request: server.Request, answer: Answer, method: str, anonymous: bool) -> None:
    status, body = answer.status, answer.body
    for name, value in answer.headers.items():
        request.setHeader(name, value)
    if method in ("GET", "HEAD"):
        # stored answers are revalidated (ETag); a token's answers stay out of shared caches
        request.setHeader(b"cache-control", b"no-cache" if anonymous else b"private, no-cache")
        request.setHeader(b"vary", b"authorization")
    else:
        request.setHeader(b"cache-control", b"no-store")
    if answer.etag is not None:
        request.setHeader(b"etag", answer.etag)
        if _matches(request.getHeader(b"if-none-match"), answer.etag):
            status, body = NOT_MODIFIED, b""
    request.setResponseCode(status)
    if status != NO_CONTENT and status != NOT_MODIFIED:
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
    request.finish()


def _matches(if_none_match: bytes | None, etag: bytes) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (or is ``*``): weak comparison."""
    if if_none_match is None:
        return False
    tags = [t.strip() for t in if_none_match.split(b",")]
    return b"*" in tags or any(t.removeprefix(b"W/") == etag for t in tags)
