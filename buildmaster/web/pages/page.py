"""What every page shares: rendering (Jinja2, autoescaped), who is looking (the API token
kept in a cookie), CSRF protection of the forms, and HTML error pages.

A person signs in with an API token (``/signin``): it is kept in an ``HttpOnly``,
``SameSite=Strict`` cookie (``Secure`` over HTTPS) and checked against the database on
every request, as the API checks a bearer token, so a revoked token stops working at once.
Each form carries a CSRF token derived from the token's secret (an HMAC: it says nothing
about the secret, and a page of another site cannot read it); a POST without it, or from
another origin, is refused.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import io
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import parse_qs, urlencode

import attrs
import jinja2
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from buildmaster.access import ANONYMOUS, Grant
from buildmaster.store.database import DatabaseUnavailable, NotFound
from buildmaster.web.api import ApiContext
from buildmaster.web.pages import text

__all__ = ["Page", "Viewer", "Html", "Redirect", "COOKIE", "csrf_token", "environment"]

#: the cookie that keeps a signed-in person's API token
COOKIE = b"buildmaster_token"
_CSRF_KEY = b"buildmaster pages: forms"


def csrf_token(secret: str) -> str:
    """The CSRF token of the forms shown to the holder of ``secret``."""
    return hmac.new(secret.encode(), _CSRF_KEY, hashlib.sha256).hexdigest()


@attrs.frozen
class Viewer:
    """Who is looking: anonymous, or signed in with an API token."""

    grant: Grant = ANONYMOUS
    #: the token's secret (never shown), its prefix and description (shown)
    secret: str | None = attrs.field(default=None, repr=False)
    label: str = ""

    @property
    def signed_in(self) -> bool:
        return self.secret is not None

    @property
    def csrf(self) -> str:
        return csrf_token(self.secret) if self.secret is not None else ""


@attrs.frozen
class Html:
    body: str
    status: int = http.OK


@attrs.frozen
class Redirect:
    location: str


def _querystring(args: Mapping[str, Any], **changes: Any) -> str:
    merged = {k: v for k, v in {**args, **changes}.items() if v not in (None, "")}
    return "?" + urlencode(sorted(merged.items())) if merged else "?"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("buildmaster.web.pages", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        duration=text.duration,
        moment=text.moment,
        state_class=text.state_class,
        state_word=lambda s: text.STATE_WORDS.get(s, s.lower()),
    )
    env.globals.update(querystring=_querystring)
    return env


class Page(resource.Resource):
    """A page: ``async def get(self, request, viewer)`` (and ``post``) return :class:`Html`
    or :class:`Redirect`. Children are found with :meth:`child`."""

    _log = Logger()
    methods: tuple[str, ...] = ("get",)

    def __init__(self, ctx: ApiContext, env: jinja2.Environment) -> None:
        super().__init__()
        self.ctx = ctx
        self.env = env

    def child(self, segment: str, request: server.Request) -> resource.Resource | None:
        return None

    def getChild(self, path: bytes, request: server.Request) -> resource.IResource:
        if path == b"" and not request.postpath:
            return cast(resource.IResource, self)
        try:
            segment = path.decode("utf-8")
        except UnicodeDecodeError:
            segment = ""
        found = self.child(segment, request) if segment else None
        return cast(resource.IResource, found if found is not None else Missing(self.ctx, self.env))

    def render(self, request: server.Request) -> int:
        d = defer.Deferred.fromCoroutine(self._answer(request))
        d.addErrback(lambda f: self._log.failure("Answering {uri} failed", f, uri=request.uri))
        return server.NOT_DONE_YET

    def now(self) -> datetime.datetime:
        return self.ctx.now()

    def render_template(
        self, viewer: Viewer, name: str, status: int = http.OK, **values: Any
    ) -> Html:
        template = self.env.get_template(name)
        return Html(template.render(viewer=viewer, now=self.now(), **values), status)

    async def viewer(self, request: server.Request) -> Viewer:
        secret_bytes = request.getCookie(COOKIE)
        if not secret_bytes:
            return Viewer()
        secret = secret_bytes.decode("latin-1")
        token = await self.ctx.store.tokens.authenticate(secret)
        if token is None:
            forget_token(request)  # revoked or unknown: signed out
            return Viewer()
        grant = Grant(token.id, token.admin, frozenset(token.archive_ids))
        scope = "admin" if token.admin else "uploader"
        label = f"token {token.prefix}… ({scope}{': ' + token.description if token.description else ''})"
        return Viewer(grant, secret, label)

    async def _answer(self, request: server.Request) -> None:
        method = (request.method or b"GET").decode("ascii", "replace").lower()
        if method == "head":
            method = "get"
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda f: gone.append(True))
        viewer = Viewer()
        try:
            viewer = await self.viewer(request)
            if method not in self.methods:
                request.setHeader(b"allow", ", ".join(m.upper() for m in self.methods).encode())
                answer: Html | Redirect = self.error_page(
                    viewer, http.NOT_ALLOWED, "This page does not take that method."
                )
            else:
                if method == "post":
                    refusal = self.refuse_post(request, viewer)
                    if refusal is not None:
                        answer = self.error_page(viewer, http.FORBIDDEN, refusal)
                    else:
                        answer = await self.post(request, viewer)
                else:
                    answer = await self.get(request, viewer)
        except NotFound as e:
            answer = self.error_page(viewer, http.NOT_FOUND, str(e))
        except DatabaseUnavailable as e:
            request.setHeader(b"retry-after", b"5")
            answer = self.error_page(
                viewer, http.SERVICE_UNAVAILABLE, f"{e}; try again in a few seconds"
            )
        except Exception as e:
            self._log.failure("The page {uri} failed", Failure(e), uri=request.uri)
            answer = self.error_page(
                viewer,
                http.INTERNAL_SERVER_ERROR,
                "The master failed to show this page; its log says why.",
            )
        if gone:
            return
        _send(request, answer)

    def refuse_post(self, request: server.Request, viewer: Viewer) -> str | None:
        """Why a POST is refused (``None``: it is not): another origin, or a form without
        the signed-in person's CSRF token."""
        origin = request.getHeader(b"origin")
        if origin is not None and origin != b"null":
            host = request.getHeader(b"host") or b""
            scheme = b"https" if request.isSecure() else b"http"
            if origin != scheme + b"://" + host:
                return "This form came from another site: refused."
        if self.needs_csrf and not hmac.compare_digest(
            _form(request, "csrf").encode(), viewer.csrf.encode() or b"-"
        ):
            return (
                "This form is stale or did not come from this site (its CSRF token does not"
                " match): reload the page and try again."
            )
        return None

    #: whether POSTs need the signed-in person's CSRF token (not for signing in)
    needs_csrf = True

    def error_page(self, viewer: Viewer, status: int, message: str) -> Html:
        return self.render_template(
            viewer,
            "error.html",
            status,
            title=http.RESPONSES.get(status, b"").decode(),
            message=message,
        )

    async def get(self, request: server.Request, viewer: Viewer) -> Html | Redirect:
        raise NotImplementedError

    async def post(self, request: server.Request, viewer: Viewer) -> Html | Redirect:
        raise NotImplementedError


#: the largest form body read (the master's site keeps larger anonymous bodies only counted)
MAX_FORM = 16 * 1024


def _posted(request: server.Request) -> dict[bytes, list[bytes]]:
    """The fields of a posted ``application/x-www-form-urlencoded`` body (the master's site
    does not parse forms: its POST bodies are mostly uploads)."""
    kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    content = request.content
    if request.method != b"POST" or kind != b"application/x-www-form-urlencoded":
        return {}
    if not isinstance(content, io.IOBase):
        return {}
    content.seek(0)
    return parse_qs(content.read(MAX_FORM), keep_blank_values=True)


def _form(request: server.Request, name: str) -> str:
    """A field of a posted form (else of the query), ``""`` when missing."""
    values = _posted(request).get(name.encode()) or (request.args or {}).get(name.encode())
    return values[-1].decode("utf-8", "replace") if values else ""


def arg(request: server.Request, name: str) -> str | None:
    """A query parameter, ``None`` when missing or empty."""
    return _form(request, name).strip() or None


form_field = _form


def remember_token(request: server.Request, secret: str) -> None:
    request.addCookie(
        COOKIE,
        secret.encode(),
        path=b"/",
        httpOnly=True,
        sameSite="Strict",
        secure=request.isSecure(),
    )


def forget_token(request: server.Request) -> None:
    request.addCookie(
        COOKIE,
        b"",
        path=b"/",
        httpOnly=True,
        sameSite="Strict",
        secure=request.isSecure(),
        max_age="0",
        expires="Thu, 01 Jan 1970 00:00:00 GMT",
    )


class Missing(Page):
    """Any path the pages do not have."""

    methods = ("get", "post")

    def getChild(self, path: bytes, request: server.Request) -> resource.IResource:
        return cast(resource.IResource, self)

    async def get(self, request: server.Request, viewer: Viewer) -> Html | Redirect:
        return self.error_page(viewer, http.NOT_FOUND, "There is no such page.")

    async def post(self, request: server.Request, viewer: Viewer) -> Html | Redirect:
        return await self.get(request, viewer)


_SECURITY_HEADERS = {
    b"content-security-policy": b"default-src 'self'; img-src 'self' data:;"
    b" style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"same-origin",
    b"cache-control": b"no-store",
}


def _send(request: server.Request, answer: Html | Redirect) -> None:
    for name, value in _SECURITY_HEADERS.items():
        request.setHeader(name, value)
    if isinstance(answer, Redirect):
        request.setResponseCode(http.SEE_OTHER)
        request.setHeader(b"location", answer.location.encode("utf-8"))
        request.setHeader(b"content-length", b"0")
        request.finish()
        return
    body = answer.body.encode("utf-8")
    request.setResponseCode(answer.status)
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"content-length", b"%d" % len(body))
    if request.method != b"HEAD":
        request.write(body)
    request.finish()
