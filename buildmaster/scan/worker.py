"""The scan of one builder: poll it, then dispatch, watch, collect, clean or judge.

Each builder has a :class:`BuilderWorker`. Its scans never overlap (a scan requested while
one runs is run right after it), and nothing a scan meets can escape it: builder errors are
judged, database outages are logged and retried at the next scan, and anything else is
logged as a bug. Every worker is independent: a hung builder costs only its own timeouts.

One scan, by what the builder says (``status()``) and what the database says:

* IDLE: a job the database gives it was lost (requeued) or never started (claim released);
  a trusted builder is clean again; then the best waiting job is claimed and dispatched.
* BUILDING our cookie: the log tail is kept (batched); a cancelled job is aborted.
  Another cookie: our job is lost, and the builder aborted. No job at all on a builder the
  database thinks is clean: an isolation failure.
* ABORTING: wait (a cancel that takes longer than ``cancel_timeout`` is a builder failure).
* WAITING our cookie: collect the log and results, set the final state, ``clean()``, and
  dispatch the next job at once. Anything else: requeue/clean.

A lost build counts against the builder (and is not given back to it until it is known
clean: a VM reset for a virtualized builder; a trusted builder's leftovers may make the
same build fail there). A job leaves a builder that may still run it (a lost build it is
still BUILDING or ABORTING, a ``build()`` that failed but left the builder busy) only once
the builder is known not to: aborted and back to WAITING or IDLE, or its VM reset. A state
that should end by itself and does not (:mod:`buildmaster.progress`) ends in a builder
failure with a reason an operator can act on, or a VM reset.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

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
from buildmaster.builderclient import BuilderClient, BuilderUnreachable
from buildmaster.scan.collect import ResultCollector, collect_limits, log_filename
from buildmaster.enums import (
    BuilderCleanStatus,
    BuilderResult,
    BuilderStatus,
    BuildQueueStatus,
    BuildStatus,
)
from buildmaster.librarian import LibrarianError
from buildmaster.masterfaults import (
    FILE_DESCRIPTORS,
    LIBRARIAN,
    VM_RESET_COMMAND,
    MasterFault,
    classify,
    librarian_trouble,
)
from buildmaster.model import Builder, BuilderSnapshot, BuildQueue
from buildmaster.ownership import OwnershipLost
from buildmaster.policy import (
    BuilderAction,
    JobAction,
    builder_may_take_jobs,
    building_poll_delay,
    judge_failure,
    probe_delay,
)
from buildmaster.progress import Watch, observe
from buildmaster.protocol import (
    PROTOCOL_VERSION,
    BuilderError,
    BuilderProtocolError,
    FilemapLimits,
    ResultRefused,
    StatusReport,
    check_filemap,
)
from buildmaster.store.database import DatabaseError
from buildmaster.store.jobs import Claimed, JobGone
from buildmaster.vmreset import VMResetFailed, reset_vm, resume_argv

if TYPE_CHECKING:
    from buildmaster.master import BuilddMaster

__all__ = ["BuilderWorker", "RESULT_STATES"]

#: What a finished build's result means for the build.
RESULT_STATES = {
    BuilderResult.OK: BuildStatus.FULLYBUILT,
    BuilderResult.PACKAGEFAIL: BuildStatus.FAILEDTOBUILD,
    BuilderResult.DEPFAIL: BuildStatus.MANUALDEPWAIT,
    BuilderResult.CHROOTFAIL: BuildStatus.CHROOTWAIT,
    BuilderResult.ABORTED: BuildStatus.CANCELLED,
}


#: at most this many builds lost by a builder are remembered (not given back to it)
MAX_REMEMBERED_LOST = 1000


def failure_message(builder: Builder, reason: str) -> str:
    """The seed's WARNING: ``frog (http://localhost:9221/) marked as failed due to: ...``."""
    return f"{builder.name} ({builder.url}) marked as failed due to: {reason}"


@attrs.frozen
class Eviction:
    """A job that must leave its builder, once the builder is known not to run it."""

    reason: str
    #: the kind of the event that records its return to the queue
    kind: str = "requeued"
    #: the builder was to blame: the job's failure count is reset
    forgive: bool = False


class BuilderWorker:
    """Everything the master does with one builder."""

    _log = Logger()

    def __init__(self, master: BuilddMaster, builder: Builder) -> None:
        self.master = master
        self.builder = builder
        #: the session (:class:`~buildmaster.ownership.Ownership`) its scan began in
        self.ownership_epoch = master.ownership.epoch
        self.client = self._new_client(builder)
        self.last_status: StatusReport | None = None
        self.consecutive_failures = 0
        self.probe_attempts = 0
        self.next_probe = 0.0
        self._abort_sent: dict[int, float] = {}
        #: the job whose failure was already counted during its current stay here
        self._charged: int | None = None
        #: jobs that failed here: not given to this builder again until then
        self._avoid: dict[int, float] = {}
        #: the context of the build dispatched here, kept for its collection
        self._contexts: dict[int, BuildContext] = {}
        self._running: defer.Deferred[None] | None = None
        #: the kinds under which the master lists this worker as idle
        self.idle_keys: tuple[tuple[int, bool], ...] = ()
        self._again = False
        #: when the builder was last asked for its status (the master's clock)
        self._polled_at = 0.0
        #: the build it was last seen building, and since when
        self._building: tuple[str, float] | None = None
        #: the state it was first seen in that should end by itself (buildmaster.progress)
        self._watch: Watch | None = None
        #: the job on it that must leave it once it is known not to run it
        self._evicting: dict[int, Eviction] = {}
        #: jobs it lost: not given back to it until it is known clean (oldest first)
        self._lost_here: dict[int, None] = {}

    def _new_client(self, builder: Builder) -> BuilderClient:
        config = self.master.config
        return BuilderClient(
            self.master.http,
            builder.url,
            config.timeout_for(builder.virtualized),
            gate=self._check_owned,
            max_result_files=config.max_result_files,
        )

    def _check_owned(self) -> None:
        """Nothing reaches a builder this master no longer holds (:mod:`buildmaster.ownership`).

        :raises OwnershipLost:
        """
        if not self.master.may_act(self):
            raise OwnershipLost(f"this master no longer holds {self.builder.name}")

    def _cut(self) -> bool:
        """Whether the work with the builder must stop: the master stops, or no longer
        holds the builder."""
        return self.master.stopping or not self.master.may_act(self)

    def update(self, builder: Builder) -> None:
        """Take a fresher view of the builder's row."""
        if (builder.url, builder.virtualized) != (self.builder.url, self.builder.virtualized):
            self.client = self._new_client(builder)
        self.builder = builder

    @property
    def keys(self) -> list[tuple[int, bool]]:
        return [(p, self.builder.virtualized) for p in self.builder.processor_ids]

    @property
    def busy(self) -> bool:
        return self._running is not None

    def routine(self, snap: BuilderSnapshot) -> bool:
        """Whether polling the builder now is routine: it was last seen building what the
        database (``snap``) says it builds. Such a poll may wait (:meth:`due`, and its turn
        when the master is busy collecting); anything else (a cancel, a job taken away, a
        builder out of service) is looked at every scan."""
        status, build = self.last_status, snap.build
        return not (
            self._building is None
            or status is None
            or status.builder_status is not BuilderStatus.BUILDING
            or build is None
            or build.status is not BuildStatus.BUILDING
            or self._building[0] != build.cookie
            or not snap.builder.builderok
        )

    def polled_since(self, when: float) -> bool:
        """Whether the builder was asked for its status at ``when`` or later."""
        return self._polled_at >= when

    def due(self, snap: BuilderSnapshot, now: float) -> bool:
        """Whether the scan that reads ``snap`` should poll this builder now. A builder whose
        poll is :meth:`routine` is polled less often the longer its build has run
        (:func:`~buildmaster.policy.building_poll_delay`); any other is polled every scan."""
        config = self.master.config
        if config.building_poll_fraction <= 0 or not self.routine(snap):
            return True
        assert self._building is not None
        interval = config.scan_interval
        delay = building_poll_delay(
            now - self._building[1],
            interval,
            config.building_poll_fraction,
            config.building_poll_max,
        )
        # a slice comes round every interval: poll at the round nearest the delay
        return now - self._polled_at >= delay - interval / 2

    @property
    def idle(self) -> bool:
        """Last seen IDLE, able to take a job, and not being scanned right now."""
        return (
            not self.busy
            and self.last_status is not None
            and self.last_status.builder_status is BuilderStatus.IDLE
            and builder_may_take_jobs(self.builder)
        )

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.master.clock.seconds(), datetime.UTC)

    # -- running scans ---------------------------------------------------------------------

    def current_scan(self) -> defer.Deferred[None]:
        """Fires when the scan in progress (if any) is done."""
        if self._running is None:
            return defer.succeed(None)
        done: defer.Deferred[None] = defer.Deferred()

        def passthrough(result: object) -> object:
            done.callback(None)
            return result

        self._running.addBoth(passthrough)
        return done

    def request_scan(self, snapshot: BuilderSnapshot | None = None) -> defer.Deferred[None]:
        """Scan now, or right after the scan in progress. Fires when that scan is done."""
        if self._running is not None:
            self._again = True
            return self.current_scan()
        running = defer.Deferred.fromCoroutine(self._scans(snapshot))
        if running.called:  # over already (nothing to wait for)
            return defer.succeed(None)
        self._running = running
        return self.current_scan()

    async def _scans(self, snapshot: BuilderSnapshot | None) -> None:
        try:
            while True:
                self._again = False
                await self._guarded_scan(snapshot)
                if not self._again or self.master.stopping:
                    return
                snapshot = None
        finally:
            self._running = None
            self.master.note_idle(self)

    async def _guarded_scan(self, snapshot: BuilderSnapshot | None) -> None:
        metrics, started = self.master.metrics, self.master.clock.seconds()
        try:
            await self.scan(snapshot)
        except OwnershipLost as e:
            self._log.info(
                "Stopped working {builder}: {reason}", builder=self.builder.name, reason=e
            )
        except Exception as e:
            if isinstance(e, DatabaseError):
                metrics.database_error("scan")
            elif isinstance(e, LibrarianError):
                metrics.librarian_error("scan")
            # the master's own failures (database, librarian, file descriptors) blame
            # nobody and are reported once per cause (an outage going on: by the pool,
            # once); anything else is a bug
            fault = classify(e)
            if fault is None:
                self._log.failure(
                    "Scan of {builder} failed unexpectedly", builder=self.builder.name
                )
            elif not self.master.store.db.explains(e):
                self.master.faults.report(fault)
        metrics.scanned(self.master.clock.seconds() - started)

    async def scan(self, snapshot: BuilderSnapshot | None = None) -> None:
        """One scan of the builder (see the module docstring)."""
        ownership = self.master.ownership
        if not ownership.holds(self.builder.id):
            return  # another master's (or nobody's, until the session is back)
        self.ownership_epoch = ownership.epoch
        snap = snapshot or await self.master.store.jobs.snapshot(self.builder.id)
        self.update(snap.builder)
        builder = snap.builder
        if not builder.active or self._cut():
            return
        if not builder.builderok and not (
            # a job leaving a builder the master just failed leaves once it is known not
            # to run there (or the builder cannot be reached: then it is requeued)
            snap.job is not None and snap.job.id in self._evicting and builder.failed_by_master
        ):
            self.last_status = None
            self._watch = None
            if not builder.failed_by_master:
                # an operator's: it comes back when they say it is fit, leftovers gone
                self._lost_here.clear()
            if snap.job is not None:
                reason = (
                    f"{builder.name} is out of service: {builder.failnotes or 'no reason given'}"
                )
                await self.master.store.jobs.requeue(snap.job, builder, reason)
            if builder.failed_by_master and self.master.clock.seconds() >= self.next_probe:
                await self._reprobe(snap)
            return
        now = self.master.clock.seconds()
        self._polled_at = now
        try:
            status = await self.client.status()
        except BuilderError as e:
            self.last_status = None
            self._building = None
            await self._scan_failed(snap, e)
            return
        self.consecutive_failures = 0
        self.last_status = status
        # a finished build: its collection counts against the master's limit until the
        # builder has its next build (_record_dispatch) or the scan is over
        finished = status.builder_status is BuilderStatus.WAITING
        admission = self.master.admission
        if finished:
            admission.collection_started(builder.id)
        admission.poll_answered(builder.id, finished)
        try:
            await self._handle(snap, status, now)
        finally:
            if finished:
                admission.collection_ended(builder.id)

    async def _handle(self, snap: BuilderSnapshot, status: StatusReport, now: float) -> None:
        builder = snap.builder
        if status.builder_status is not BuilderStatus.BUILDING or status.build_id is None:
            self._building = None
        elif self._building is None or self._building[0] != status.build_id:
            self._building = (status.build_id, now)
        if status.builder_version != builder.version and status.builder_version is not None:
            self.master.logtails.set_version(builder.id, status.builder_version)
        try:
            await self._act(snap, status)
        except BuilderError as e:
            if not self._cut():
                # judge with what the builder has now: the job it had may have been requeued
                fresh = await self.master.store.jobs.snapshot(builder)
                await self._failed(fresh.builder, fresh.job, e)

    async def _act(self, snap: BuilderSnapshot, status: StatusReport) -> None:
        builder, job, build = snap.builder, snap.job, snap.build
        cookie = build.cookie if build is not None else None
        state = status.builder_status
        eviction = None
        if self._evicting:  # (empty for nearly every poll: nothing to allocate then)
            eviction = self._evicting.get(job.id) if job is not None else None
            if eviction is None:
                self._evicting.clear()  # its job went elsewhere meanwhile
        running_ours = job is not None and status.build_id == cookie and eviction is None
        if await self._stuck(snap, status, running_ours):
            return
        if eviction is not None:
            assert job is not None
            await self._evict(builder, job, status, eviction)
            return
        if state is BuilderStatus.IDLE:
            if job is not None:
                await self._idle_with_job(builder, job, build.status if build else None)
            await self._next_job()
        elif state is BuilderStatus.BUILDING:
            if job is not None and status.build_id == cookie:
                await self._discovered(snap)
                if job.status is BuildQueueStatus.CANCELLING:
                    await self._cancel_running(builder, job)
                else:
                    self.master.logtails.add(job.id, builder.id, status.logtail)
            elif job is not None:
                await self._lost(
                    builder,
                    job,
                    status,
                    f"the builder is building {status.build_id!r}, not {cookie}",
                )
            else:
                await self._unexpected_work(builder, status)
        elif state is BuilderStatus.ABORTING:
            if job is not None and status.build_id == cookie:
                await self._discovered(snap)
                if job.status is BuildQueueStatus.CANCELLING:
                    await self._check_cancel_timeout(builder, job)
            elif job is not None:
                await self._lost(
                    builder,
                    job,
                    status,
                    f"the builder is aborting {status.build_id!r}, not {cookie}",
                )
            elif builder.clean_status is BuilderCleanStatus.CLEAN:
                await self._isolation_failure(builder, status)
        else:  # WAITING
            if job is not None and status.build_id == cookie:
                await self._discovered(snap)
                await self._collect(snap, status)
                return
            if job is not None:
                await self._lost(
                    builder,
                    job,
                    status,
                    f"the builder finished {status.build_id!r}, not {cookie}",
                )
            elif builder.clean_status is BuilderCleanStatus.CLEAN:
                await self._isolation_failure(builder, status)
                return
            elif status.build_status is BuilderResult.BUILDERFAIL:
                # leftovers it was told to abort, and could not kill: it says it failed
                await self._failed(
                    builder,
                    None,
                    BuilderProtocolError(
                        f"the builder reported BUILDERFAIL for {status.build_id!r}"
                        " (a build it could not stop)"
                    ),
                )
            await self._clean()
            await self._next_job()

    async def _discovered(self, snap: BuilderSnapshot) -> None:
        """The builder has our build, which the database does not show dispatched: the
        master stopped between ``build()`` and its record. Record the dispatch now (the
        build may have ended since), so that it has its builder, dates and event."""
        if snap.job is not None and snap.build is not None:
            if snap.build.status is BuildStatus.NEEDSBUILD:
                await self.master.store.jobs.mark_building(snap.job, snap.builder, self._now())

    # -- the builder and its job disagree ------------------------------------------------

    async def _idle_with_job(
        self, builder: Builder, job: BuildQueue, build_state: BuildStatus | None
    ) -> None:
        """The builder is idle but the database gives it a job: free the builder of it."""
        jobs = self.master.store.jobs
        if job.status is BuildQueueStatus.CANCELLING:
            await jobs.fail_job(
                job, builder, "cancelled (the builder was idle)", BuildStatus.CANCELLED
            )
        elif build_state is BuildStatus.NEEDSBUILD:
            # claimed, but build() never reached the builder (the master stopped mid-dispatch)
            await jobs.release_claim(
                job, builder, "the builder is idle: the dispatch never reached it"
            )
        else:
            await self._lost(
                builder,
                job,
                StatusReport(BuilderStatus.IDLE),
                "the builder is idle: it lost the build",
            )

    async def _lost(
        self, builder: Builder, job: BuildQueue, status: StatusReport, reason: str
    ) -> None:
        """The builder is not doing the build the database gives it: the build is lost,
        and the builder is to blame (counted, judged; disabled when it keeps losing them).
        The job goes back to the queue at once if the builder is IDLE or WAITING, once it is
        known not to run it otherwise (it may be building it under another name), and it is
        not given back to this builder until the builder is known clean."""
        self._log.warn(
            "{builder} lost job {job}: {reason}", builder=builder.name, job=job.id, reason=reason
        )
        jobs = self.master.store.jobs
        builder_count, _ = await jobs.count_failure(builder, None)
        judgement = judge_failure(builder_count, None, policy=self.master.config.failure_policy)
        await self.master.store.events.record(
            "failure", f"{reason} ({judgement.reason})", build=job.build_id, builder=builder.id
        )
        self._remember_lost(job)
        await self._set_clean_status(BuilderCleanStatus.DIRTY)
        if status.builder_status in (BuilderStatus.BUILDING, BuilderStatus.ABORTING):
            eviction = Eviction(reason, kind="lost")
            self._evicting = {job.id: eviction}
            await self._evict(builder, job, status, eviction, then_next=False)
        else:
            await jobs.requeue(job, builder, reason, kind="lost")
        if judgement.builder is BuilderAction.DISABLE:
            await self._apply(
                builder, None, BuilderAction.DISABLE, JobAction.NONE, f"lost builds: {reason}"
            )

    def _remember_lost(self, job: BuildQueue) -> None:
        self._lost_here.pop(job.id, None)
        self._lost_here[job.id] = None
        while len(self._lost_here) > MAX_REMEMBERED_LOST:
            del self._lost_here[next(iter(self._lost_here))]

    async def _evict(
        self,
        builder: Builder,
        job: BuildQueue,
        status: StatusReport | None,
        eviction: Eviction,
        then_next: bool = True,
    ) -> None:
        """Move ``job`` off the builder, which may still run it, once it is known not to: a
        virtualized builder has its VM reset; a trusted one is aborted, cleaned once it is
        WAITING, and then the job goes back to the queue. An abort that does not end is
        the stuck watch's (:mod:`buildmaster.progress`).

        :param status: what the builder said last (``None``: nothing known; wait).
        :param then_next: give the builder its next job once it is free.
        """
        state = status.builder_status if status is not None else None
        if builder.virtualized and self.master.config.vm_resume_command:
            await self._reset_vm(builder)
            self.last_status = StatusReport(BuilderStatus.IDLE)
            await self._release(builder, job, eviction)
            await self._set_clean_status(BuilderCleanStatus.CLEAN)
        elif state is BuilderStatus.BUILDING:
            await self._abort(status)
            return
        elif state is BuilderStatus.WAITING:
            await self._clean()
            await self._release(builder, job, eviction)
        elif state is BuilderStatus.IDLE:
            await self._release(builder, job, eviction)
        else:
            return  # ABORTING, or not known: wait
        if then_next:
            await self._next_job()

    async def _release(self, builder: Builder, job: BuildQueue, eviction: Eviction) -> None:
        """The builder is known not to run ``job`` any more: back to the queue with it."""
        self._evicting.pop(job.id, None)
        self._log.info(
            "{builder} no longer runs job {job}: back to the queue",
            builder=builder.name,
            job=job.id,
        )
        await self.master.store.jobs.requeue(
            job, builder, eviction.reason, kind=eviction.kind, forgive=eviction.forgive
        )

    async def _stuck(self, snap: BuilderSnapshot, status: StatusReport, running_ours: bool) -> bool:
        """Watch the states that should end by themselves; a builder stuck in one is failed
        with the reason (a virtualized one gets its VM reset instead). Whether it was."""
        job = snap.job
        self._watch, stuck = observe(
            self._watch,
            status.builder_status,
            status.build_id,
            running_ours=running_ours,
            cancelling=job is not None and job.status is BuildQueueStatus.CANCELLING,
            now=self.master.clock.seconds(),
            timeout=self.master.config.stuck_timeout,
        )
        if stuck is None:
            return False
        self._watch = None
        builder = snap.builder
        jobs = self.master.store.jobs
        if builder.virtualized and self.master.config.vm_resume_command:
            reason = stuck.reason(virtualized=True)
            self._log.warn(
                "{builder} ({url}) is {reason}",
                builder=builder.name,
                url=builder.url,
                reason=reason,
            )
            await self.master.store.events.record(
                "reset", reason, build=job.build_id if job else None, builder=builder.id
            )
            await self._reset_vm(builder)
            self.last_status = StatusReport(BuilderStatus.IDLE)
            if job is not None:
                await self._release(builder, job, self._evicting.get(job.id, Eviction(reason)))
            await self._set_clean_status(BuilderCleanStatus.CLEAN)
            return True
        reason = stuck.reason(virtualized=False)
        await self._apply(builder, None, BuilderAction.DISABLE, JobAction.NONE, reason)
        if job is not None:
            self._evicting.pop(job.id, None)
            await jobs.requeue(job, builder, f"{builder.name} failed: {reason}")
        return True

    async def _unexpected_work(self, builder: Builder, status: StatusReport) -> None:
        if builder.clean_status is BuilderCleanStatus.CLEAN:
            await self._isolation_failure(builder, status)
        else:
            # leftovers of a build the database gave up on: stop it, then clean it
            self._log.info(
                "Aborting leftover build {cookie} on {builder}",
                cookie=status.build_id,
                builder=builder.name,
            )
            await self._abort(status)

    async def _abort(self, status: StatusReport | None) -> None:
        """``abort()`` what the builder is doing (``status``); the abort should end by
        itself, and the stuck watch starts now."""
        await self.client.abort()
        build_id = status.build_id if status is not None else None
        watch = self._watch
        if watch is None or (watch.state, watch.build_id) != (BuilderStatus.ABORTING, build_id):
            self._watch = Watch(BuilderStatus.ABORTING, build_id, self.master.clock.seconds())

    async def _isolation_failure(self, builder: Builder, status: StatusReport) -> None:
        reason = (
            f"isolation failure: the builder reports {status.builder_status.name} {status.build_id!r}"
            " while the database says it is clean and has no job"
        )
        judgement = judge_failure(0, None, isolation=True, policy=self.master.config.failure_policy)
        await self._apply(builder, None, judgement.builder, JobAction.NONE, reason)

    async def _set_clean_status(self, status: BuilderCleanStatus) -> None:
        if self.builder.clean_status is not status:
            await self.master.store.jobs.set_clean_status(self.builder, status)
            self.builder = attrs.evolve(self.builder, clean_status=status)

    async def _ready(self) -> None:
        """An IDLE trusted builder is clean (a virtualized one is clean once its VM is reset)."""
        if not self.builder.virtualized:
            await self._set_clean_status(BuilderCleanStatus.CLEAN)

    async def _clean(self) -> None:
        state = await self.client.clean()
        if state is not BuilderStatus.IDLE:
            raise BuilderProtocolError(f"clean() left the builder {state.name}")
        self.last_status = StatusReport(BuilderStatus.IDLE)

    # -- dispatching ------------------------------------------------------------------

    async def _next_job(self) -> None:
        """The builder is IDLE: give it its next job, or else record that it is clean (a
        claim marks it dirty anyway, so this saves a write per build)."""
        if await self.dispatch_next() is None:
            await self._ready()

    async def dispatch_next(self) -> BuildQueue | None:
        """Claim the best waiting job for this builder and dispatch it."""
        if not builder_may_take_jobs(self.builder) or self.master.stopping:
            return None
        claimed = await self._claim_next()
        if claimed is None:
            await self._reset_if_dirty()
            return None
        await self.dispatch(claimed.job, claimed.context)
        return claimed.job

    async def _claim_next(self) -> Claimed | None:
        """Claim the best waiting job for this builder (``None``: nothing for it now, or a
        failure of the master's side holds dispatches back for a while)."""
        builder = self.builder
        if self.master.known_empty(self.keys):
            return None
        if self.master.faults.holds_back(builder.virtualized) is not None:
            return None
        keys = tuple(self.keys)
        if not await self.master.claims.wait_turn(keys):
            return None  # a claim for the same kind just found nothing: do not ask again
        generations = self.master.generations(keys)
        now = self.master.clock.seconds()
        self._avoid = {job_id: until for job_id, until in self._avoid.items() if until > now}
        avoid = list(self._avoid) + [j for j in self._lost_here if j not in self._avoid]
        done = self.master.claims.begin(keys)
        claimed = None
        try:
            claimed = await self.master.store.jobs.claim_next_for_dispatch(builder, avoid=avoid)
        finally:
            self.master.claims.end(keys, done, found=claimed is not None or bool(avoid))
        if claimed is None:
            if not avoid:  # the avoided jobs may suit other builders
                self.master.mark_empty(keys, generations)
            return None
        self.builder = attrs.evolve(self.builder, clean_status=BuilderCleanStatus.DIRTY)
        self.master.wake(self.keys, exclude=self)
        return claimed

    async def _reset_if_dirty(self) -> None:
        """A virtualized builder with nothing to do gets its VM reset now, not at dispatch."""
        builder = self.builder
        if builder.virtualized and builder.clean_status is not BuilderCleanStatus.CLEAN:
            try:
                await self._reset_vm(builder)
            except VMResetFailed as e:
                await self._failed(builder, None, e)
                return
            await self._set_clean_status(BuilderCleanStatus.CLEAN)

    async def dispatch(self, job: BuildQueue, ctx: BuildContext | None = None) -> bool:
        """Send a claimed job to the builder: VM reset, files, ``build()``, then record it.

        Any failure is judged: the job goes back to the queue (or fails), the builder may be
        disabled. Returns whether the builder accepted the build.

        :param ctx: the build's context when the claim brought it along (else read here).
        """
        builder = self.builder
        jobs = self.master.store.jobs
        self._charged = None  # a new stay: its first failure counts against the job
        if ctx is None or ctx.build.id != job.build_id:
            ctx = await jobs.context(job.build_id)
        self._contexts = {ctx.build.id: ctx}
        if ctx.chroot is None:
            das = ctx.distroarchseries
            reason = f"not dispatched: no chroot for {das.distribution_name}/{das.series_name}/{das.architecturetag}"
            self._log.warn("{build}: {reason}", build=ctx.build.cookie, reason=reason)
            await jobs.suspend(job, builder, reason)
            return False
        try:
            filemap = source_filemap(ctx)
        except CannotBuild as e:
            await jobs.fail_job(job, builder, f"not dispatched: {e}")
            return False
        build_sent = False
        try:
            if self.master.faults.active:
                await self._check_librarian(ctx)
            if builder.virtualized:
                await self._reset_vm(builder)
            await self._ensure_files(ctx)
            args = build_args(
                ctx, self.master.config.archive_urls, builder.virtualized, self._build_url(ctx)
            )
            build_sent = True
            result = await self.client.build(
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
            delay = self.master.faults.report(e)
            if not build_sent:
                resume = self._now() + datetime.timedelta(seconds=delay)
                await jobs.suspend(job, builder, f"waiting: {e}", resume_after=resume)
            # else build() may have gone out: the claim stays for the next scan to settle
            return False
        except BuilderError as e:
            if self._cut():
                if not build_sent:
                    await jobs.release_claim(job, builder, "the master stopped during the dispatch")
                # else build() was cut short and may have reached the builder: the claim stays,
                # and the next scan (of whichever master) sees whether the builder took it
                return False
            status = await self._status_after_build() if build_sent else None
            if (
                status is not None
                and isinstance(e, BuilderUnreachable)
                and e.request_sent
                and status.builder_status is BuilderStatus.BUILDING
                and status.build_id == ctx.build.cookie
            ):
                self._log.warn(
                    "{builder} started {build} but its answer to build() was lost: {error}",
                    builder=builder.name,
                    build=ctx.build.cookie,
                    error=e,
                )
                return await self._record_dispatch(job, builder, ctx)
            self._log.warn(
                "Dispatching {build} to {builder} failed: {error}",
                build=ctx.build.cookie,
                builder=builder.name,
                error=e,
            )
            # after build(), unless the builder is IDLE it may be running the job (under
            # another name, or BUILDING with nothing running after a fault): the job leaves
            # it only once it is known not to
            may_run = build_sent and (
                status is None or status.builder_status is not BuilderStatus.IDLE
            )
            await self._failed(builder, job, e, must_leave=True, evict=may_run)
            eviction = self._evicting.get(job.id)
            if eviction is not None and status is not None:
                try:
                    await self._evict(self.builder, job, status, eviction, then_next=False)
                except BuilderError as again:
                    self._log.info(
                        "{builder}: the job stays until it is known not to run it ({error})",
                        builder=builder.name,
                        error=again,
                    )
            return False
        return await self._record_dispatch(job, builder, ctx)

    async def _status_after_build(self) -> StatusReport | None:
        """``build()`` failed after it was sent: what the builder is doing now. Its answer
        may have been lost (a timeout, a dropped connection) while it started the build, or
        it may have started something and faulted: the job must not be sent anywhere else
        while the builder may run it, which would have it built twice."""
        try:
            return await self.client.status()
        except BuilderError:
            return None

    async def _record_dispatch(self, job: BuildQueue, builder: Builder, ctx: BuildContext) -> bool:
        # the builder has its next build: a collection that led here is over and stops
        # counting against the limit (what is left is bookkeeping, not the hand-over)
        self.master.admission.collection_ended(builder.id)
        try:
            await self.master.store.jobs.record_dispatch(job, builder, self._now())
        except JobGone:
            # cancelled meanwhile: the next scan finds the builder busy with nothing and aborts
            self._log.info("{build} went away while it was dispatched", build=ctx.build.cookie)
            return False
        self.last_status = StatusReport(BuilderStatus.BUILDING, build_id=ctx.build.cookie)
        self._building = (ctx.build.cookie, self.master.clock.seconds())
        faults = self.master.faults
        if faults.active:  # a dispatch went through: what it needed works again
            faults.over([FILE_DESCRIPTORS] + ([VM_RESET_COMMAND] if builder.virtualized else []))
        self._log.info(
            "Dispatched {build} to {builder}", build=ctx.build.cookie, builder=builder.name
        )
        return True

    def _context(self, build_id: int) -> BuildContext | None:
        return self._contexts.get(build_id)

    def _build_url(self, ctx: BuildContext) -> str | None:
        template = self.master.config.build_url_template
        return template.format(build_id=ctx.build.id) if template else None

    async def _reset_vm(self, builder: Builder) -> None:
        command = self.master.config.vm_resume_command
        if not command:
            return
        self._check_owned()
        argv = resume_argv(command, builder.vm_host, builder.name)
        try:
            await reset_vm(self.master.reactor, argv, self.master.config.vm_resume_timeout)
        finally:
            # connections kept alive to the machine before its reset lead nowhere (at best
            # to a reset, at worst to silence until a call's deadline)
            self.client.close_idle()
        # a new machine: nothing of what it lost is left on it
        self._lost_here.clear()
        self._watch = None

    async def _ensure_files(self, ctx: BuildContext) -> None:
        """``ensurepresent`` of the chroot and every source file, all at once."""
        assert ctx.chroot is not None
        librarian = self.master.librarian
        wanted = [ctx.chroot] + [f.file for f in ctx.files]
        mark = librarian.serving_mark
        calls = []
        for file in wanted:
            password = librarian.token_for(file.id) if file.restricted else None
            username = "buildd" if password else None
            calls.append(
                defer.Deferred.fromCoroutine(
                    self.client.ensurepresent(
                        file.sha1, librarian.hand_out(file), username, password
                    )
                )
            )
        results = await defer.DeferredList(calls, consumeErrors=True)
        failed = [
            file
            for file, (ok, value) in zip(wanted, results, strict=True)
            if not ok or not value.present
        ]
        if failed:
            # the builder could not fetch them: the librarian's fault if it cannot serve them
            trouble = await librarian_trouble(librarian, failed, since=mark)
            if trouble is not None:
                raise trouble
        for file, (ok, value) in zip(wanted, results, strict=True):
            if not ok:
                value.raiseException()  # type: ignore[attr-defined]
            if not value.present:
                raise BuilderProtocolError(
                    f"ensurepresent of {file.filename} failed: {value.message}"
                )

    async def _check_librarian(self, ctx: BuildContext) -> None:
        """Before a builder is sent to fetch files the librarian failed to serve lately,
        look whether it can now (on the master's side: no builder is bothered).

        :raises MasterFault: when it still cannot.
        """
        assert ctx.chroot is not None
        faults = self.master.faults
        files = [ctx.chroot] + [f.file for f in ctx.files]
        doubtful = [f for f in files if f"librarian file {f.id}" in faults.causes]
        if not doubtful:
            return
        trouble = await librarian_trouble(self.master.librarian, doubtful)
        if trouble is not None:
            raise trouble
        faults.over(f"librarian file {f.id}" for f in doubtful)

    # -- building -----------------------------------------------------------------

    async def _cancel_running(self, builder: Builder, job: BuildQueue) -> None:
        if job.id not in self._abort_sent:
            self._log.info("Cancelling job {job} on {builder}", job=job.id, builder=builder.name)
            self._abort_sent[job.id] = self.master.clock.seconds()
            await self.client.abort()
        else:
            await self._check_cancel_timeout(builder, job)

    async def _check_cancel_timeout(self, builder: Builder, job: BuildQueue) -> None:
        sent = self._abort_sent.setdefault(job.id, self.master.clock.seconds())
        timeout = self.master.config.cancel_timeout
        if self.master.clock.seconds() - sent < timeout:
            return
        reason = f"the build did not abort within {timeout:g} seconds"
        self._abort_sent.pop(job.id, None)
        await self.master.store.jobs.fail_job(job, builder, reason, BuildStatus.CANCELLED)
        await self._apply(builder, None, BuilderAction.DISABLE, JobAction.NONE, reason)

    # -- collecting -----------------------------------------------------------------

    async def _collect(self, snap: BuilderSnapshot, status: StatusReport) -> None:
        builder, job, build = snap.builder, snap.job, snap.build
        assert job is not None and build is not None and status.build_status is not None
        jobs = self.master.store.jobs
        seen = self.master.clock.seconds()
        result = status.build_status
        cancelling = job.status is BuildQueueStatus.CANCELLING
        self._abort_sent.pop(job.id, None)
        if not cancelling and result is BuilderResult.BUILDERFAIL:
            await self._failed(
                builder,
                job,
                BuilderProtocolError("the builder reported BUILDERFAIL"),
                must_leave=True,
            )
            await self._clean()
            await self._ready()
            return
        if not cancelling and result in (BuilderResult.GIVENBACK, BuilderResult.ABORTED):
            why = (
                "given back by the builder"
                if result is BuilderResult.GIVENBACK
                else "aborted unexpectedly"
            )
            await jobs.requeue(job, builder, why, kind="given-back")
        else:
            state = BuildStatus.CANCELLED if cancelling else RESULT_STATES[result]
            await self._store_results(snap, status, state)
            if self.master.faults.active:  # the librarian stored what it had to
                self.master.faults.over([LIBRARIAN])
        await self._clean_and_next()
        if self._building is not None and self._building[1] >= seen:  # its next build
            self.master.metrics.handed_over(self._building[1] - seen)

    async def _clean_and_next(self) -> None:
        """``clean()`` the builder and give it its next job. The job is claimed in the
        database while ``clean()`` is on its way (the two wait on different things); it is
        dispatched once the builder is IDLE, or released, without blame, if the clean fails."""
        if not builder_may_take_jobs(self.builder) or self.master.stopping:
            await self._clean()
            await self._ready()
            return
        claiming = defer.Deferred.fromCoroutine(self._claim_next())
        try:
            await self._clean()
        except BaseException:
            await self._release_early_claim(claiming, "the builder could not be cleaned")
            raise
        claimed = await claiming
        if claimed is None:
            await self._reset_if_dirty()
            await self._ready()
            return
        if self.master.stopping:
            await self.master.store.jobs.release_claim(
                claimed.job, self.builder, "the master stopped before the dispatch"
            )
            return
        await self.dispatch(claimed.job, claimed.context)

    async def _release_early_claim(
        self, claiming: defer.Deferred[Claimed | None], reason: str
    ) -> None:
        try:
            claimed = await claiming
        except Exception:
            return  # the claim failed: nothing to give back
        if claimed is not None:
            await self.master.store.jobs.release_claim(claimed.job, self.builder, reason)

    async def _store_results(
        self, snap: BuilderSnapshot, status: StatusReport, state: BuildStatus
    ) -> None:
        """Fetch the log and the result files into the librarian (a few at a time, within
        the build's budget: :meth:`ResultCollector.collect`), then record the end of the
        build. What is stored stays provisional (it expires) until ``finish`` links it, so a
        master that dies half-way leaves nothing permanent behind."""
        builder, job, build = snap.builder, snap.job, snap.build
        assert job is not None and build is not None
        config, started = self.master.config, self.master.clock.seconds()
        ctx = self._context(build.id) or await self.master.store.jobs.context(build.id)
        restricted = ctx.archive.private
        collector = ResultCollector(
            self.master.librarian, self.client, collect_limits(config), self._now()
        )
        reason = None
        accepted: dict[str, str] = {}
        if state is BuildStatus.FULLYBUILT:
            try:
                accepted = check_filemap(
                    status.filemap, FilemapLimits(max_files=config.max_result_files)
                )
            except ResultRefused as e:
                state, reason = BuildStatus.FAILEDTOUPLOAD, f"results refused: {e}"
        log_name = None
        if build.log_id is None:
            das, spr = ctx.distroarchseries, ctx.sourcepackagerelease
            log_name = log_filename(
                das.distribution_name,
                das.series_name,
                das.architecturetag,
                spr.name,
                spr.version,
                state.name,
            )
        collected = await collector.collect(accepted, log_name, restricted)
        files = list(collected.files)
        log = build.log_id if log_name is None else collected.log
        if collected.log_note:
            reason = f"{reason}; {collected.log_note}" if reason else collected.log_note
        if collected.refused is not None:
            # what was stored of them expires: the garbage collector takes it
            state, reason = BuildStatus.FAILEDTOUPLOAD, f"results refused: {collected.refused}"
        finished = await self.master.store.jobs.finish(
            job,
            builder,
            state,
            self._now(),
            log=log,
            files=files,
            dependencies=status.dependencies if state is BuildStatus.MANUALDEPWAIT else None,
            reason=reason,
        )
        self._contexts.pop(build.id, None)
        self.master.metrics.collected(self.master.clock.seconds() - started, collector.stored)
        if finished:
            self._log.info(
                "{build} on {builder}: {state}",
                build=build.cookie,
                builder=builder.name,
                state=state.name,
            )

    # -- failures -------------------------------------------------------------------

    async def _scan_failed(self, snap: BuilderSnapshot, error: BuilderError) -> None:
        """The builder could not be polled. A few of these in a row are shrugged off."""
        if self._cut():
            return
        self.consecutive_failures += 1
        tolerated = self.master.config.failure_policy.tolerated_scan_failures
        if self.consecutive_failures <= tolerated:
            self._log.info(
                "{builder} scan failed ({n}/{tolerated} tolerated): {error}",
                builder=snap.builder.name,
                n=self.consecutive_failures,
                tolerated=tolerated,
                error=error,
            )
            return
        await self._failed(snap.builder, snap.job, error)

    async def _failed(
        self,
        builder: Builder,
        job: BuildQueue | None,
        error: BuilderError,
        must_leave: bool = False,
        evict: bool = False,
    ) -> None:
        """Count the failure against builder and job, judge, and act on the judgement.

        ``must_leave``: the job cannot stay on the builder (it never started, or the builder
        gave up on it), so "leave it where it is" means "back to the queue".
        ``evict``: the builder may still run the job: it goes back to the queue only once
        the builder is known not to (see :meth:`_evict`).
        """
        self.master.metrics.builder_failed(error)
        # a job is charged once per stay on a builder, however many scans fail meanwhile
        charge = job is not None and job.id != self._charged
        builder_count, job_count = await self.master.store.jobs.count_failure(
            builder, job.build_id if job else None, count_build=charge
        )
        if job is not None:
            self._charged = job.id
        judgement = judge_failure(
            builder_count, job_count, policy=self.master.config.failure_policy
        )
        job_action = judgement.job
        if must_leave and job_action is JobAction.NONE:
            job_action = JobAction.REQUEUE
        reason = str(error)
        await self.master.store.events.record(
            "failure",
            f"{reason} ({judgement.reason})",
            build=job.build_id if job else None,
            builder=builder.id,
        )
        await self._apply(
            builder, job, judgement.builder, job_action, reason, judgement.forgive_job, evict
        )

    async def _apply(
        self,
        builder: Builder,
        job: BuildQueue | None,
        builder_action: BuilderAction,
        job_action: JobAction,
        reason: str,
        forgive_job: bool = False,
        evict: bool = False,
    ) -> None:
        jobs = self.master.store.jobs
        if job is not None:
            if job_action is JobAction.REQUEUE:
                if evict:
                    self._evicting = {job.id: Eviction(reason, forgive=forgive_job)}
                else:
                    self._evicting.pop(job.id, None)
                    await jobs.requeue(job, builder, reason, forgive=forgive_job)
                # "try it elsewhere": not here again for a while
                self._avoid[job.id] = (
                    self.master.clock.seconds() + self.master.config.retry_elsewhere_for
                )
            elif job_action is JobAction.FAIL:
                await jobs.fail_job(job, builder, reason)
        if builder_action is BuilderAction.DISABLE:
            self._log.warn("{message}", message=failure_message(builder, reason))
            await jobs.fail_builder(builder, reason)
            self.builder = attrs.evolve(
                builder, builderok=False, failed_by_master=True, failnotes=reason
            )
            self.last_status = None
            self.probe_attempts = 0
            self.schedule_probe()
        elif builder_action is BuilderAction.RESET:
            await self._set_clean_status(BuilderCleanStatus.DIRTY)

    def schedule_probe(self) -> None:
        config = self.master.config
        delay = probe_delay(self.probe_attempts, config.probe_initial_delay, config.probe_max_delay)
        self.next_probe = self.master.clock.seconds() + delay

    # -- probing -----------------------------------------------------------------------

    async def probe(self, arch_tag: str | None = None) -> str | None:
        """echo, info (protocol 1.0, the right architecture), status. Returns a failure
        reason, or ``None`` when the builder answers correctly."""
        try:
            await self.client.echo("Test")
            info = await self.client.info()
            if info.protocol_version != PROTOCOL_VERSION:
                return f"protocol version {info.protocol_version!r}, expected {PROTOCOL_VERSION!r}"
            if arch_tag is not None and info.arch_tag != arch_tag:
                return f"architecture {info.arch_tag!r}, expected {arch_tag!r}"
            if BUILDER_TYPE not in info.builder_types:
                return f"cannot build {BUILDER_TYPE} (it offers {', '.join(info.builder_types) or 'nothing'})"
            self.last_status = await self.client.status()
        except BuilderError as e:
            self.last_status = None
            return str(e)
        return None

    async def _reprobe(self, snap: BuilderSnapshot) -> None:
        """An automatically failed builder: is it healthy again? (with backoff)"""
        builder = snap.builder
        self.probe_attempts += 1
        reason = await self.probe(await self.master.arch_tag_for(builder))
        if reason is None and self.last_status is not None:
            state = self.last_status.builder_status
            try:
                if state is BuilderStatus.WAITING:
                    await self.client.clean()
                    state = BuilderStatus.IDLE
                elif state is BuilderStatus.BUILDING:
                    await self.client.abort()
                    reason = "it was still building something: aborted it"
                elif state is BuilderStatus.ABORTING:
                    reason = "it is still aborting"
            except BuilderError as e:
                reason = str(e)
        if reason is not None:
            self.schedule_probe()
            self._log.info(
                "{builder} still failing: {reason} (next probe in {delay:.0f} s)",
                builder=builder.name,
                reason=reason,
                delay=self.next_probe - self.master.clock.seconds(),
            )
            return
        await self.master.store.jobs.restore_builder(builder, "answers correctly again")
        self._log.info("{builder} is back in service", builder=builder.name)
        self.probe_attempts = 0
        self.consecutive_failures = 0
        self.builder = attrs.evolve(
            builder, builderok=True, failed_by_master=False, failnotes=None, failure_count=0
        )
        self.last_status = StatusReport(BuilderStatus.IDLE)
        await self._next_job()
