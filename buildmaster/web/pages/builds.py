"""``/builds``, ``/builds/ID`` (with its cancel, retry and rescore forms and its live log),
and ``/archives/...``: read through the store's views, operated through the API's own
:func:`~buildmaster.web.api.builds.operate_build`."""

from __future__ import annotations

import datetime
from typing import Any, cast

from twisted.web import http, resource, server

from buildmaster.access import may_operate, may_read
from buildmaster.enums import BuildStatus
from buildmaster.store.database import NotFound
from buildmaster.store.views import BuildFilter
from buildmaster.transitions import RETRYABLE
from buildmaster.web.api.builds import LIVE, BuildLogStream, _live_logtail, operate_build
from buildmaster.web.api.endpoint import numeric_id
from buildmaster.web.api.problems import Problem
from buildmaster.web.api.representations import file_json
from buildmaster.web.pages.page import (
    COOKIE,
    Html,
    Page,
    Redirect,
    Viewer,
    arg,
    forget_token,
    form_field,
    remember_token,
)

__all__ = ["BuildsPage", "BuildPage", "ArchivesPage"]

PAGE_SIZE = 50
_STATES = {s.name.lower(): s for s in BuildStatus}


class BuildsPage(Page):
    """``/builds``: builds newest first; filters (state, archive, source, builder, arch);
    keyset pages (``?before=ID``)."""

    def child(self, segment: str, request: server.Request) -> resource.Resource | None:
        build_id = numeric_id(segment)
        return BuildPage(self.ctx, self.env, build_id) if build_id is not None else None

    async def get(self, request: server.Request, viewer: Viewer) -> Html | Redirect:
        views = self.ctx.store.views
        problems = []
        state = arg(request, "state")
        states: tuple[BuildStatus, ...] = ()
        if state is not None:
            if state in _STATES:
                states = (_STATES[state],)
            else:
                problems.append(f"there is no state {state}")
        archive = arg(request, "archive")
        archive_id = None
        if archive is not None:
            try:
                archive_id = (await views.catalog.archive(archive, viewer.grant)).id
            except (ValueError, NotFound) as e:
                problems.append(str(e))
        builder = arg(request, "builder")
        builder_id = None
        if builder is not None:
            try:
                builder_id = (await self.ctx.store.builders.getByName(builder)).id
            except NotFound as e:
                problems.append(str(e))
        before_text = arg(request, "before")
        before = numeric_id(before_text) if before_text is not None else None
        args = {
            "state": state,
            "archive": archive,
            "source": arg(request, "source"),
            "builder": builder,
            "arch": arg(request, "arch"),
        }
        if problems:
            builds: tuple[Any, ...] = ()
            next_before = None
        else:
            where = BuildFilter(
                states=states,
                archive_id=archive_id,
                source_name=args["source"],
                builder_id=builder_id,
                arch_tag=args["arch"],
            )
            page = await views.builds.page(viewer.grant, where, before, PAGE_SIZE)
            builds, next_before = page.builds, page.next_before
        return self.render_template(
            viewer,
            "builds.html",
            status=http.BAD_REQUEST if problems else http.OK,
            title="Builds",
            builds=builds,
            next_before=next_before,
            paged=before is not None,
            args=args,
            states=sorted(_STATES),
            problems=problems,
        )


class BuildPage(Page):
    """``/builds/ID``: the build in full."""

    def __init__(self, ctx: Any, env: Any, build_id: int) -> None:
        super().__init__(ctx, env)
        self.build_id = build_id

    def child(self, segment: str, request: server.Request) -> resource.Resource | None:
        if segment in ("cancel", "retry", "rescore"):
            return BuildAction(self.ctx, self.env, self.build_id, segment)
        if segment == "log" and request.postpath == [b"stream"]:
            request.postpath = []
            request.prepath = [*(request.prepath or []), b"stream"]
            return LogStream(self.ctx, self.build_id)
        return None

    async def get(self, request: server.Request, viewer: Viewer) -> Html | Redirect:
        views = self.ctx.store.views
        detail = await views.builds.detail(self.build_id, viewer.grant)
        summary = detail.summary
        limits = self.ctx.limits
        standing = await views.queue.standing(summary, limits.order_max_age, limits.queue_max_age)
        share = await views.shares.standing(summary) if standing is not None else None
        tokens = summary.archive.private and may_read(viewer.grant, summary.archive)
        librarian = self.ctx.librarian
        operator = viewer.signed_in and may_operate(viewer.grant, summary.archive)
        state = summary.status
        now = self.now()
        build = summary.build
        took: float | None
        if build.date_started is not None and build.date_finished is None:
            took = (now - build.date_started).total_seconds()
        else:
            took = build.duration.total_seconds() if build.duration is not None else None
        return self.render_template(
            viewer,
            "build.html",
            title=f"Build {summary.id}: {summary.title}",
            s=summary,
            b=build,
            took=took,
            detail=detail,
            standing=standing,
            share=share,
            start_at=(
                standing.as_of + datetime.timedelta(seconds=standing.start_in_seconds)
                if standing is not None and standing.start_in_seconds is not None
                else None
            ),
            live=state in LIVE,
            logtail=_live_logtail(self.ctx, summary.job),
            log=file_json(librarian, detail.log, tokens) if detail.log is not None else None,
            files=[file_json(librarian, f.file, tokens) for f in detail.files],
            may_cancel=operator and state in LIVE,
            may_retry=operator and state in RETRYABLE,
            may_rescore=operator
            and viewer.grant.admin
            and summary.job is not None
            and summary.job.builder_id is None,
            message=arg(request, "done"),
        )


_DONE = {"cancel": "cancelled", "retry": "retried", "rescore": "rescored"}


class BuildAction(Page):
    """``POST /builds/ID/cancel``, ``/retry``, ``/rescore`` (field ``score``): a form of the
    build's page, for a signed-in person whose token allows it."""

    methods = ("post",)

    def __init__(self, ctx: Any, env: Any, build_id: int, action: str) -> None:
        super().__init__(ctx, env)
        self.build_id = build_id
        self.action = action

    async def post(self, request: server.Request, viewer: Viewer) -> Html | Redirect:
        score = None
        if self.action == "rescore":
            try:
                score = int(form_field(request, "score"))
            except ValueError:
                return self.error_page(
                    viewer, http.BAD_REQUEST, "The score must be a whole number."
                )
            if not -(2**31) <= score < 2**31:
                return self.error_page(viewer, http.BAD_REQUEST, "That score is out of range.")
        try:
            await operate_build(self.ctx, viewer.grant, self.build_id, self.action, score)
        except Problem as p:
            return self.error_page(viewer, p.status, p.detail)
        return Redirect(f"/builds/{self.build_id}?done={_DONE[self.action]}")


class LogStream(resource.Resource):
    """``/builds/ID/log/stream``: the API's log stream (server-sent events) for the pages'
    script, read with the signed-in person's token (the cookie's), so that a private
    build's page follows its log too."""

    isLeaf = True

    def __init__(self, ctx: Any, build_id: int) -> None:
        super().__init__()
        self.stream = BuildLogStream(ctx, build_id)

    def render(self, request: server.Request) -> int | bytes:
        secret = request.getCookie(COOKIE)
        request.requestHeaders.removeHeader(b"authorization")
        if secret:
            request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer " + secret])
        return cast(int, self.stream.render(request))


class ArchivesPage(Page):
    """``/archives``: the archives; ``/archives/OWNER/NAME`` (a PPA), ``/archives/DISTRO``
    (its primary archive) or ``/archives/DISTRO/partner``: an archive's builds, newest
    first, paged, and its waiting builds."""

    def child(self, segment: str, request: server.Request) -> resource.Resource | None:
        remaining = request.postpath or []
        rest = [p.decode("utf-8", "replace") for p in remaining]
        request.prepath = [*(request.prepath or []), *remaining]
        request.postpath = []
        return ArchivePage(self.ctx, self.env, [segment, *[p for p in rest if p]])

    async def get(self, request: server.Request, viewer: Viewer) -> Html | Redirect:
        archives = await self.ctx.store.views.catalog.archives(viewer.grant)
        return self.render_template(viewer, "archives.html", title="Archives", archives=archives)


def archive_path(archive: Any) -> str:
    """The page of an archive."""
    if archive.purpose.name == "PPA":
        return f"/archives/{archive.owner_name}/{archive.name}"
    if archive.purpose.name == "PRIMARY":
        return f"/archives/{archive.distribution_name}"
    return f"/archives/{archive.distribution_name}/{archive.name}"


class ArchivePage(Page):
    def __init__(self, ctx: Any, env: Any, parts: list[str]) -> None:
        super().__init__(ctx, env)
        self.parts = parts

    async def get(self, request: server.Request, viewer: Viewer) -> Html | Redirect:
        views = self.ctx.store.views
        if len(self.parts) == 2:
            references = [f"ppa:{self.parts[0]}/{self.parts[1]}", "/".join(self.parts)]
        else:
            references = ["/".join(self.parts)]
        archive = None
        for reference in references:
            try:
                archive = await views.catalog.archive(reference, viewer.grant)
                break
            except (ValueError, NotFound):
                continue
        if archive is None:
            raise NotFound(f"no archive {'/'.join(self.parts)} (or not one this token may see)")
        before_text = arg(request, "before")
        before = numeric_id(before_text) if before_text is not None else None
        page = await views.builds.page(
            viewer.grant, BuildFilter(archive_id=archive.id), before, PAGE_SIZE
        )
        return self.render_template(
            viewer,
            "archive.html",
            title=f"Archive {archive.reference}",
            archive=archive,
            builds=page.builds,
            next_before=page.next_before,
            paged=before is not None,
        )


class SignIn(Page):
    """``/signin``: sign in with an API token (kept in an HttpOnly, SameSite=Strict cookie)."""

    methods = ("get", "post")
    needs_csrf = False

    async def get(self, request: server.Request, viewer: Viewer) -> Html | Redirect:
        return self.render_template(viewer, "signin.html", title="Sign in", problem=None)

    async def post(self, request: server.Request, viewer: Viewer) -> Html | Redirect:
        secret = form_field(request, "token").strip()
        token = await self.ctx.store.tokens.authenticate(secret) if secret else None
        if token is None:
            return self.render_template(
                viewer,
                "signin.html",
                http.UNAUTHORIZED,
                title="Sign in",
                problem="That token is unknown or revoked. Ask an admin for one"
                " (python -m buildmaster.tokens create).",
            )
        remember_token(request, secret)
        back = form_field(request, "next")
        return Redirect(back if back.startswith("/") and not back.startswith("//") else "/builders")


class SignOut(Page):
    """``POST /signout``: forget the token (it stays valid: revoke it through the API)."""

    methods = ("post",)

    async def post(self, request: server.Request, viewer: Viewer) -> Html | Redirect:
        forget_token(request)
        return Redirect("/builders")
