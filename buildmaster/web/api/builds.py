"""``/api/v1/builds``: list, show, follow the log of, cancel, retry and rescore builds."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from twisted.internet import task
from twisted.web import http

from buildmaster.access import Grant, may_operate, may_read
from buildmaster.enums import BuildQueueStatus, BuildStatus
from buildmaster.model import BuildQueue
from buildmaster.store.database import DatabaseUnavailable, NotFound
from buildmaster.store.views import (
    BuildDetail,
    BuildFilter,
    BuildSummary,
    ShareStanding,
    Standing,
)
from buildmaster.transitions import RETRYABLE
from buildmaster.web.api.endpoint import (
    STREAMED,
    Call,
    Endpoint,
    Reply,
    encode_json,
    numeric_id,
    ok,
)
from buildmaster.web.api.problems import conflict, forbidden, invalid_parameter
from buildmaster.web.api.representations import (
    build_summary_json,
    event_json,
    file_json,
    later,
)

__all__ = ["Builds", "operate_build", "LIVE"]

#: states in which a build may still change (its log tail is worth following)
LIVE = frozenset(
    {
        BuildStatus.NEEDSBUILD,
        BuildStatus.BUILDING,
        BuildStatus.CANCELLING,
        BuildStatus.GATHERING,
        BuildStatus.UPLOADING,
    }
)


class Builds(Endpoint):
    methods = ("get",)

    def child(self, segment: str) -> Endpoint | None:
        build_id = numeric_id(segment)
        return Build(self.ctx, build_id) if build_id is not None else None

    async def get(self, call: Call) -> Reply:
        grant = await call.grant()
        views = self.ctx.store.views
        archive_id = None
        reference = call.param("archive")
        if reference is not None:
            try:
                archive_id = (await views.catalog.archive(reference, grant)).id
            except (ValueError, NotFound) as e:
                raise invalid_parameter("archive", str(e)) from None
        builder_id = None
        builder_name = call.param("builder")
        if builder_name is not None:
            try:
                builder_id = (await self.ctx.store.builders.getByName(builder_name)).id
            except NotFound as e:
                raise invalid_parameter("builder", str(e)) from None
        where = BuildFilter(
            states=call.enum_params("state", BuildStatus, lambda s: s.name.lower()),
            archive_id=archive_id,
            source_name=call.param("source"),
            builder_id=builder_id,
            arch_tag=call.param("arch"),
            created_after=call.time_param("created_after"),
            created_before=call.time_param("created_before"),
            finished_after=call.time_param("finished_after"),
            finished_before=call.time_param("finished_before"),
        )
        limit = call.page_size()
        before = call.int_param("before", None, 1)
        page = await views.builds.page(grant, where, before, limit)
        now = self.ctx.now()
        next_url = None
        if page.next_before is not None:
            args = {k.decode(): v[-1].decode() for k, v in (call.request.args or {}).items()}
            args["before"] = str(page.next_before)
            next_url = f"/api/v1/builds?{urlencode(sorted(args.items()))}"
        return ok({"builds": [build_summary_json(b, now) for b in page.builds], "next": next_url})


class Build(Endpoint):
    methods = ("get",)

    def __init__(self, ctx: Any, build_id: int) -> None:
        super().__init__(ctx)
        self.build_id = build_id

    def child(self, segment: str) -> Endpoint | None:
        if segment == "log":
            return BuildLog(self.ctx, self.build_id)
        if segment in ("cancel", "retry", "rescore"):
            return BuildAction(self.ctx, self.build_id, segment)
        return None

    async def get(self, call: Call) -> Reply:
        grant = await call.grant()
        views = self.ctx.store.views
        detail = await views.builds.detail(self.build_id, grant)
        limits = self.ctx.limits
        standing = await views.queue.standing(
            detail.summary, limits.order_max_age, limits.queue_max_age
        )
        share = await views.shares.standing(detail.summary) if standing is not None else None
        return ok(self.detail_json(detail, standing, grant, share))

    def detail_json(
        self,
        detail: BuildDetail,
        standing: Standing | None,
        grant: Grant,
        share: ShareStanding | None = None,
    ) -> Any:
        librarian = self.ctx.librarian
        summary = detail.summary
        tokens = summary.archive.private and may_read(grant, summary.archive)
        shown = build_summary_json(summary, self.ctx.now())
        shown.update(
            cookie=summary.build.cookie,
            events=[event_json(e) for e in detail.events],
            log=file_json(librarian, detail.log, tokens) if detail.log is not None else None,
            files=[file_json(librarian, f.file, tokens) for f in detail.files],
            logtail=_logtail(self.ctx, summary),
            score_parts=[{"reason": p.reason, "points": p.points} for p in detail.score_parts],
            waiting=_standing_json(standing, share),
        )
        return shown


def _share_json(share: ShareStanding | None) -> Any:
    if share is None:
        return None
    return {
        "owner": share.owner,
        "weight": share.weight,
        "usage_seconds": share.usage_seconds,
        "half_life_seconds": share.half_life,
        "deficit": share.deficit,
        "owner_rank": share.owner_rank,
        "owners_waiting": share.owners_waiting,
        "waited_seconds": share.waited_seconds,
        "aged_after_seconds": share.aged_after_seconds,
        "aged": share.aged,
        "running": share.running,
        "held_back": share.held_back,
        "builders": share.builders,
        "idle_builders": share.idle_builders,
        "reserve": share.reserve,
        "share_builders": share.share_builders,
        "text": share.text,
    }


def _standing_json(standing: Standing | None, share: ShareStanding | None = None) -> Any:
    if standing is None:
        return None
    start = standing.start_in_seconds
    return {
        "share": _share_json(share),
        "position": standing.position,
        "position_exact": standing.position_exact,
        "ahead_seconds": standing.ahead_seconds,
        "estimated_start_in": start,
        "estimated_start": later(standing.as_of, start),
        "reason": {"code": standing.reason.code, "text": standing.reason.text},
    }


def _logtail(ctx: Any, summary: BuildSummary) -> str | None:
    return _live_logtail(ctx, summary.job)


def _live_logtail(ctx: Any, job: BuildQueue | None) -> str | None:
    """The newest log tail of a running job: the master's, else the database's."""
    if job is None or job.builder_id is None:
        return None
    live: str | None = ctx.farm.live_logtail(job.id)
    return live if live is not None else job.logtail


class BuildLog(Endpoint):
    """``/builds/<id>/log``: the live log tail while it builds, then the collected log."""

    methods = ("get",)

    def __init__(self, ctx: Any, build_id: int) -> None:
        super().__init__(ctx)
        self.build_id = build_id

    def child(self, segment: str) -> Endpoint | None:
        return BuildLogStream(self.ctx, self.build_id) if segment == "stream" else None

    async def get(self, call: Call) -> Reply:
        grant = await call.grant()
        return ok(await log_json(self.ctx, self.build_id, grant))


async def log_json(ctx: Any, build_id: int, grant: Grant) -> Any:
    summary, file = await ctx.store.views.builds.with_log(build_id, grant)
    log = None
    if file is not None:
        tokens = summary.archive.private and may_read(grant, summary.archive)
        log = file_json(ctx.librarian, file, tokens)
    return {
        "build": build_id,
        "state": summary.status.name,
        "live": summary.status in LIVE,
        "logtail": _logtail(ctx, summary),
        "log": log,
    }


class BuildLogStream(Endpoint):
    """``/builds/<id>/log/stream``: server-sent events while the build may change.

    ``logtail`` events carry ``{state, logtail}`` whenever either changes; the stream ends
    with an ``end`` event carrying what ``/builds/<id>/log`` answers then (the collected
    log, if any), or after an hour (the client reconnects). A comment line every 15 s keeps
    proxies from closing a quiet stream. When the database is unavailable the stream ends
    with an ``error`` event (``{detail}``).
    """

    methods = ("get",)
    shared = False  # a stream of its own for each follower
    heartbeat = 15.0

    def __init__(self, ctx: Any, build_id: int) -> None:
        super().__init__(ctx)
        self.build_id = build_id

    async def get(self, call: Call) -> Reply:
        grant = await call.grant()
        first = await log_json(self.ctx, self.build_id, grant)  # 404 before the stream starts
        request = call.request
        request.setResponseCode(http.OK)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        self.ctx.metrics.api_request("GET", http.OK)
        clock, limits = self.ctx.clock, self.ctx.limits
        started = last_write = clock.seconds()
        shown = None
        current = first
        try:
            while not call.gone:
                now = clock.seconds()
                seen = (current["state"], current["logtail"])
                if not current["live"]:
                    _event(request, "end", current)
                    break
                if seen != shown:
                    _event(request, "logtail", {"state": seen[0], "logtail": seen[1]})
                    shown, last_write = seen, now
                elif now - last_write >= self.heartbeat:
                    request.write(b": still following\n\n")
                    last_write = now
                if now - started >= limits.follow_max:
                    break
                await task.deferLater(clock, limits.follow_interval, lambda: None)
                if call.gone:
                    break
                current = await log_json(self.ctx, self.build_id, grant)
        except DatabaseUnavailable as e:
            # the headers are sent: say it in the stream (the client reconnects later)
            if not call.gone:
                _event(request, "error", {"detail": f"{e}; follow again in a few seconds"})
        finally:
            if not call.gone:
                request.finish()
        return STREAMED


def _event(request: Any, name: str, data: Any) -> None:
    request.write(b"event: %s\ndata: %s\n\n" % (name.encode(), encode_json(data)))


class BuildAction(Endpoint):
    """``POST /builds/<id>/cancel``, ``/retry`` (admin, or an uploader to its archive) and
    ``/rescore`` (admin, body ``{"score": N}``)."""

    methods = ("post",)

    def __init__(self, ctx: Any, build_id: int, action: str) -> None:
        super().__init__(ctx)
        self.build_id = build_id
        self.action = action

    async def post(self, call: Call) -> Reply:
        what = f"{self.action} of build {self.build_id}"
        grant = await (
            call.require_admin(what) if self.action == "rescore" else call.require_token(what)
        )
        score = int(call.json("Rescore")["score"]) if self.action == "rescore" else None
        fresh = await operate_build(self.ctx, grant, self.build_id, self.action, score)
        return ok(build_summary_json(fresh, self.ctx.now()))


async def operate_build(
    ctx: Any, grant: Grant, build_id: int, action: str, score: int | None = None
) -> BuildSummary:
    """Cancel, retry or rescore (to ``score``) a build as ``grant`` may: the API's and the
    web pages' one way to do it. Fires with the build as it is afterwards.

    :raises Problem: 403 when the grant may not (rescoring is for admins; cancelling and
        retrying for admins and the archive's uploaders), 409 when the build's state does
        not allow it; :raises NotFound: for a build the grant may not see.
    """
    if action == "rescore" and not grant.admin:
        raise forbidden("rescoring a build needs an admin token")
    if not grant.authenticated:
        raise forbidden(f"{action} of build {build_id} needs a token")
    views = ctx.store.views
    summary = await views.builds.summary(build_id, grant)
    if not may_operate(grant, summary.archive):
        raise forbidden(f"this token may not {action} builds of {summary.archive.reference}")
    operations = ctx.operations
    state = summary.status
    if action == "cancel":
        if state not in LIVE:
            raise conflict(
                f"build {build_id} already ended {state.name}: there is nothing to cancel"
            )
        await operations.cancel(build_id)
    elif action == "retry":
        if state not in RETRYABLE:
            raise conflict(
                f"build {build_id} is {state.name}: only builds that failed or were"
                f" cancelled ({', '.join(sorted(s.name for s in RETRYABLE))}) can be retried"
            )
        await operations.retry(build_id)
    elif action == "rescore" and score is not None:
        job = summary.job
        if job is None or job.status not in (BuildQueueStatus.WAITING, BuildQueueStatus.SUSPENDED):
            doing = job.status.name.lower() if job is not None else state.name
            raise conflict(
                f"build {build_id} is not waiting (it is {doing}): only waiting builds"
                " can be rescored"
            )
        await operations.rescore(build_id, score)
    else:
        raise ValueError(f"no operation {action!r} on builds")
    views.queue.forget()  # the dispatch order changed: readers see it at once
    return await views.builds.summary(build_id, grant)
