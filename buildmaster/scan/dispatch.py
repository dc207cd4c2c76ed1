"""Giving a builder its next job: claim the best waiting job for it, then reset its VM,
``ensurepresent`` the chroot and the sources, ``build()``, and record the dispatch.

A failure of the builder is judged (:mod:`buildmaster.scan.judge`); a failure of the master's
own side (:mod:`buildmaster.masterfaults`) blames nobody and holds the job back for a while.
"""

from __future__ import annotations

import datetime

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from buildmaster.buildargs import (
    BUILDER_TYPE,
    BuildContext,
    CannotBuild,
    build_args,
    source_filemap,
)
from buildmaster.builderclient import BuilderUnreachable
from buildmaster.enums import BuilderCleanStatus, BuilderStatus, BuildStatus
from buildmaster.masterfaults import (
    FILE_DESCRIPTORS,
    VM_RESET_COMMAND,
    MasterFault,
    librarian_trouble,
)
from buildmaster.model import Builder, BuilderSnapshot, BuildQueue
from buildmaster.policy import builder_may_take_jobs
from buildmaster.protocol import BuilderError, BuilderProtocolError, StatusReport
from buildmaster.scan.context import Scope
from buildmaster.scan.fetches import FileFetch, fetch_note
from buildmaster.scan.judge import evict, failed
from buildmaster.scan.machine import ready, reset_vm, set_clean_status
from buildmaster.store.archives import disabled_reason
from buildmaster.store.jobs import Claimed, JobGone
from buildmaster.vmreset import VMResetFailed

__all__ = [
    "claim_next",
    "dispatch",
    "dispatch_next",
    "next_job",
    "record_discovered",
    "release_unsent",
    "reset_if_dirty",
]

_log = Logger()


def now(s: Scope) -> datetime.datetime:
    """The master's clock's time, as a date for the database."""
    return datetime.datetime.fromtimestamp(s.services.clock.seconds(), datetime.UTC)


async def next_job(s: Scope) -> None:
    """The builder is IDLE: give it its next job, or else record that it is clean (a
    claim marks it dirty anyway, so this saves a write per build)."""
    if await dispatch_next(s) is None:
        await ready(s)


async def dispatch_next(s: Scope) -> BuildQueue | None:
    """Claim the best waiting job for this builder and dispatch it."""
    if not builder_may_take_jobs(s.builder) or s.services.stopping:
        return None
    claimed = await claim_next(s)
    if claimed is None:
        await reset_if_dirty(s)
        return None
    await dispatch(s, claimed.job, claimed.context)
    return claimed.job


async def claim_next(s: Scope) -> Claimed | None:
    """Claim the best waiting job for this builder (``None``: nothing for it now, or a
    failure of the master's side holds dispatches back for a while)."""
    services, claiming, memory = s.services, s.claiming, s.memory
    builder = memory.builder
    if claiming.known_empty(s.keys):
        return None
    if services.faults.holds_back(builder.virtualized) is not None:
        return None
    keys = s.keys
    if not await claiming.claims.wait_turn(keys):
        return None  # a claim for the same kind just found nothing: do not ask again
    generations = claiming.generations(keys)
    now = services.clock.seconds()
    memory.avoid = {job_id: until for job_id, until in memory.avoid.items() if until > now}
    avoid = list(memory.avoid) + [j for j in memory.lost_here if j not in memory.avoid]
    done = claiming.claims.begin(keys)
    claimed = None
    try:
        claimed = await services.store.jobs.claim_next_for_dispatch(builder, avoid=avoid)
    finally:
        claiming.claims.end(keys, done, found=claimed is not None or bool(avoid))
    if claimed is None:
        if not avoid:  # the avoided jobs may suit other builders
            claiming.mark_empty(keys, generations)
        return None
    memory.builder = attrs.evolve(memory.builder, clean_status=BuilderCleanStatus.DIRTY)
    claiming.wake(s.keys, exclude=s.worker)
    return claimed


async def reset_if_dirty(s: Scope) -> None:
    """A virtualized builder with nothing to do gets its VM reset now, not at dispatch."""
    builder = s.builder
    if builder.virtualized and builder.clean_status is not BuilderCleanStatus.CLEAN:
        try:
            await reset_vm(s)
        except VMResetFailed as e:
            await failed(s, builder, None, e)
            return
        await set_clean_status(s, BuilderCleanStatus.CLEAN)


async def dispatch(s: Scope, job: BuildQueue, ctx: BuildContext | None = None) -> bool:
    """Send a claimed job to the builder: VM reset, files, ``build()``, then record it.

    Any failure is judged: the job goes back to the queue (or fails), the builder may be
    disabled. Returns whether the builder accepted the build.

    :param ctx: the build's context when the claim brought it along (else read here).
    """
    services, memory = s.services, s.memory
    builder = memory.builder
    jobs = services.store.jobs
    memory.charged = None  # a new stay: its first failure counts against the job
    if ctx is None or ctx.build.id != job.build_id:
        ctx = await jobs.context(job.build_id)
    memory.contexts = {ctx.build.id: ctx}
    if not ctx.archive.enabled:
        # disabled since it was queued (the change suspends the archive's waiting jobs, but
        # one may have come back to the queue at the same moment): it waits for the archive
        await jobs.suspend(job, builder, disabled_reason(ctx.archive))
        return False
    if ctx.chroot is None:
        das = ctx.distroarchseries
        reason = f"not dispatched: no chroot for {das.distribution_name}/{das.series_name}/{das.architecturetag}"
        _log.warn("{build}: {reason}", build=ctx.build.cookie, reason=reason)
        await jobs.suspend(job, builder, reason)
        return False
    try:
        filemap = source_filemap(ctx)
    except CannotBuild as e:
        await jobs.fail_job(job, builder, f"not dispatched: {e}")
        return False
    build_sent = False
    files_note = ""
    try:
        if services.faults.active:
            await check_librarian(s, ctx)
        if builder.virtualized:
            await reset_vm(s)
        files_note = await ensure_files(s, ctx)
        args = build_args(ctx, services.config.archive_urls, builder.virtualized, build_url(s, ctx))
        build_sent = True
        result = await s.client.build(
            ctx.build.cookie, BUILDER_TYPE, ctx.chroot.sha1, filemap, args
        )
        if not result.started:
            raise BuilderProtocolError(f"build() refused: {result.status} {result.info}")
        if result.info != ctx.build.cookie:
            raise BuilderProtocolError(
                f"build() answered for {result.info!r}, not {ctx.build.cookie}"
            )
    except MasterFault as e:
        # the master's side failed: nobody is to blame, the job waits
        delay = services.faults.report(e)
        if not build_sent:
            resume = now(s) + datetime.timedelta(seconds=delay)
            await jobs.suspend(job, builder, f"waiting: {e}", resume_after=resume)
        # else build() may have gone out: the claim stays for the next scan to settle
        return False
    except BuilderError as e:
        if s.cut():
            if not build_sent:
                await jobs.release_claim(job, builder, "the master stopped during the dispatch")
            # else build() was cut short and may have reached the builder: the claim stays,
            # and the next scan (of whichever master) sees whether the builder took it
            return False
        status = await status_after_build(s) if build_sent else None
        if (
            status is not None
            and isinstance(e, BuilderUnreachable)
            and e.request_sent
            and status.builder_status is BuilderStatus.BUILDING
            and status.build_id == ctx.build.cookie
        ):
            _log.warn(
                "{builder} started {build} but its answer to build() was lost: {error}",
                builder=builder.name,
                build=ctx.build.cookie,
                error=e,
            )
            return await record_dispatch(s, job, builder, ctx, files_note)
        _log.warn(
            "Dispatching {build} to {builder} failed: {error}",
            build=ctx.build.cookie,
            builder=builder.name,
            error=e,
        )
        # after build(), unless the builder is IDLE it may be running the job (under
        # another name, or BUILDING with nothing running after a fault): the job leaves
        # it only once it is known not to
        may_run = build_sent and (status is None or status.builder_status is not BuilderStatus.IDLE)
        await failed(s, builder, job, e, must_leave=True, evict=may_run)
        eviction = memory.evicting.get(job.id)
        if eviction is not None and status is not None:
            try:
                await evict(s, memory.builder, job, status, eviction)
            except BuilderError as again:
                _log.info(
                    "{builder}: the job stays until it is known not to run it ({error})",
                    builder=builder.name,
                    error=again,
                )
        return False
    return await record_dispatch(s, job, builder, ctx, files_note)


async def status_after_build(s: Scope) -> StatusReport | None:
    """``build()`` failed after it was sent: what the builder is doing now. Its answer
    may have been lost (a timeout, a dropped connection) while it started the build, or
    it may have started something and faulted: the job must not be sent anywhere else
    while the builder may run it, which would have it built twice."""
    try:
        return await s.client.status()
    except BuilderError:
        return None


async def record_dispatch(
    s: Scope, job: BuildQueue, builder: Builder, ctx: BuildContext, note: str = ""
) -> bool:
    """The builder has the build: record it (and the end of the collection that led here),
    with ``note`` in its "dispatched" event (what the builder fetched)."""
    services = s.services
    # the builder has its next build: a collection that led here is over and stops
    # counting against the limit (what is left is bookkeeping, not the hand-over)
    services.admission.collection_ended(builder.id)
    try:
        await services.store.jobs.record_dispatch(job, builder, now(s), note)
    except JobGone:
        # cancelled meanwhile: the next scan finds the builder busy with nothing and aborts
        _log.info("{build} went away while it was dispatched", build=ctx.build.cookie)
        return False
    s.memory.last_status = StatusReport(BuilderStatus.BUILDING, build_id=ctx.build.cookie)
    s.memory.building = (ctx.build.cookie, services.clock.seconds())
    faults = services.faults
    if faults.active:  # a dispatch went through: what it needed works again
        faults.over([FILE_DESCRIPTORS] + ([VM_RESET_COMMAND] if builder.virtualized else []))
    _log.info("Dispatched {build} to {builder}", build=ctx.build.cookie, builder=builder.name)
    return True


async def record_discovered(s: Scope, snap: BuilderSnapshot) -> None:
    """The builder has our build, which the database does not show dispatched: the
    master stopped between ``build()`` and its record. Record the dispatch now (the
    build may have ended since), so that it has its builder, dates and event."""
    if snap.job is not None and snap.build is not None:
        if snap.build.status is BuildStatus.NEEDSBUILD:
            await s.services.store.jobs.mark_building(snap.job, snap.builder, now(s))


async def release_unsent(s: Scope, builder: Builder, job: BuildQueue) -> None:
    """Claimed, but ``build()`` never reached the builder (the master stopped
    mid-dispatch): the job goes back to the queue, nobody blamed."""
    await s.services.store.jobs.release_claim(
        job, builder, "the builder is idle: the dispatch never reached it"
    )


def build_url(s: Scope, ctx: BuildContext) -> str | None:
    template = s.services.config.build_url_template
    return template.format(build_id=ctx.build.id) if template else None


async def ensure_files(s: Scope, ctx: BuildContext) -> str:
    """``ensurepresent`` of the chroot and every source file, all at once. Counts what
    the builder fetched and what it had in its cache (its answers' second element), and
    says it in words for the build's "dispatched" event."""
    assert ctx.chroot is not None
    librarian = s.services.librarian
    wanted = [ctx.chroot] + [f.file for f in ctx.files]
    mark = librarian.serving_mark
    calls = []
    for file in wanted:
        password = librarian.token_for(file.id) if file.restricted else None
        username = "buildd" if password else None
        calls.append(
            defer.Deferred.fromCoroutine(
                s.client.ensurepresent(file.sha1, librarian.hand_out(file), username, password)
            )
        )
    results = await defer.DeferredList(calls, consumeErrors=True)
    # what the builder has now, and whether it fetched it (counted even if the dispatch
    # fails below: the bytes were fetched)
    metrics = s.services.metrics
    had = []
    for i, (file, (ok, value)) in enumerate(zip(wanted, results, strict=True)):
        if ok and value.present:
            kind = "chroot" if i == 0 else "source"
            metrics.file_ensured(kind, value.fetched, file.filesize)
            had.append(FileFetch(kind, file.filesize, value.fetched, value.message))
    missing = [
        file
        for file, (ok, value) in zip(wanted, results, strict=True)
        if not ok or not value.present
    ]
    if missing:
        # the builder could not fetch them: the librarian's fault if it cannot serve them
        trouble = await librarian_trouble(librarian, missing, since=mark)
        if trouble is not None:
            raise trouble
    for file, (ok, value) in zip(wanted, results, strict=True):
        if not ok:
            value.raiseException()  # type: ignore[attr-defined]
        if not value.present:
            raise BuilderProtocolError(f"ensurepresent of {file.filename} failed: {value.message}")
    return fetch_note(had)


async def check_librarian(s: Scope, ctx: BuildContext) -> None:
    """Before a builder is sent to fetch files the librarian failed to serve lately,
    look whether it can now (on the master's side: no builder is bothered).

    :raises MasterFault: when it still cannot.
    """
    assert ctx.chroot is not None
    faults = s.services.faults
    files = [ctx.chroot] + [f.file for f in ctx.files]
    doubtful = [f for f in files if f"librarian file {f.id}" in faults.causes]
    if not doubtful:
        return
    trouble = await librarian_trouble(s.services.librarian, doubtful)
    if trouble is not None:
        raise trouble
    faults.over(f"librarian file {f.id}" for f in doubtful)
