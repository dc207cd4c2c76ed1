"""The scan of one builder: poll it, decide, carry out.

Each builder has a :class:`BuilderWorker`. Its scans never overlap (a scan requested while
one runs is run right after it), and nothing a scan meets can escape it: builder errors are
judged, database outages are logged and retried at the next scan, and anything else is
logged as a bug. Every worker is independent: a hung builder costs only its own timeouts.

One scan: a builder out of service gives back its job and is probed again when due
(:mod:`~buildmaster.scan.probe`); any other is asked for its ``status()``, and what it says,
with what the database says, is turned into steps by the pure
:func:`~buildmaster.scan.decide.decide`, which the worker carries out with the step modules:

* IDLE: a job the database gives it was lost (requeued) or never started (claim released);
  a trusted builder is clean again; then the best waiting job is claimed and dispatched
  (:mod:`~buildmaster.scan.dispatch`).
* BUILDING our cookie: the log tail is kept (batched); a cancelled job is aborted
  (:mod:`~buildmaster.scan.cancel`). Another cookie: our job is lost, and the builder aborted
  (:mod:`~buildmaster.scan.judge`). No job at all on a builder the database thinks is clean:
  an isolation failure.
* ABORTING: wait (a cancel that takes longer than ``cancel_timeout`` is a builder failure).
* WAITING our cookie: collect the log and results, set the final state, ``clean()``, and
  dispatch the next job at once (:mod:`~buildmaster.scan.collect`). Anything else:
  requeue/clean.

A lost build counts against the builder (and is not given back to it until it is known
clean: a VM reset for a virtualized builder; a trusted builder's leftovers may make the
same build fail there). A job leaves a builder that may still run it (a lost build it is
still BUILDING or ABORTING, a ``build()`` that failed but left the builder busy) only once
the builder is known not to: aborted and back to WAITING or IDLE, or its VM reset. A state
that should end by itself and does not (:mod:`buildmaster.progress`) ends in a builder
failure with a reason an operator can act on, or a VM reset.
"""

from __future__ import annotations

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from buildmaster.buildargs import BuildContext
from buildmaster.builderclient import BuilderClient
from buildmaster.enums import BuilderStatus, BuildQueueStatus, BuildStatus
from buildmaster.librarian import LibrarianError
from buildmaster.masterfaults import classify
from buildmaster.model import Builder, BuilderSnapshot, BuildQueue
from buildmaster.ownership import OwnershipLost
from buildmaster.policy import builder_may_take_jobs, building_poll_delay
from buildmaster.progress import observe
from buildmaster.protocol import BuilderError, StatusReport
from buildmaster.scan import dispatch, judge, probe
from buildmaster.scan.carry import carry_out
from buildmaster.scan.context import Farm, Key, Memory, Scope
from buildmaster.scan.decide import Decision, Seen, decide
from buildmaster.store.database import DatabaseError

__all__ = ["BuilderWorker"]


class BuilderWorker:
    """Everything the master does with one builder: the loop (poll, decide, carry out)."""

    _log = Logger()

    def __init__(self, master: Farm, builder: Builder) -> None:
        self.master = master
        #: the session (:class:`~buildmaster.ownership.Ownership`) its scan began in
        self.ownership_epoch = master.ownership.epoch
        self.memory = Memory(builder)
        self.scope = Scope(
            services=master,
            claiming=master.openings,
            client=self._new_client(builder),
            memory=self.memory,
            cut=self._cut,
            check_owned=self._check_owned,
            worker=self,
        )
        self._running: defer.Deferred[None] | None = None
        #: the kinds under which the master lists this worker as idle
        self.idle_keys: tuple[Key, ...] = ()
        self._again = False

    # -- what the master and the operators see of it -------------------------------------

    @property
    def builder(self) -> Builder:
        return self.memory.builder

    @builder.setter
    def builder(self, builder: Builder) -> None:
        self.memory.builder = builder

    @property
    def builder_id(self) -> int:
        return self.memory.builder.id

    @property
    def client(self) -> BuilderClient:
        return self.scope.client

    @property
    def last_status(self) -> StatusReport | None:
        """What the builder last said (``None``: not asked yet, or no answer)."""
        return self.memory.last_status

    @last_status.setter
    def last_status(self, status: StatusReport | None) -> None:
        self.memory.last_status = status

    @property
    def consecutive_failures(self) -> int:
        """Polls in a row that failed."""
        return self.memory.consecutive_failures

    @property
    def next_probe(self) -> float:
        """When a failed builder is probed next (the master's clock)."""
        return self.memory.next_probe

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
        known = self.memory.builder
        if builder is known:
            return  # (a scan asked for with the snapshot the master just gave it)
        if builder.url != known.url or builder.virtualized != known.virtualized:
            self.scope.client = self._new_client(builder)
        self.memory.builder = builder

    @property
    def keys(self) -> tuple[Key, ...]:
        return self.scope.keys

    @property
    def busy(self) -> bool:
        return self._running is not None

    def routine(self, snap: BuilderSnapshot) -> bool:
        """Whether polling the builder now is routine: it was last seen building what the
        database (``snap``) says it builds. Such a poll may wait (:meth:`due`, and its turn
        when the master is busy collecting); anything else (a cancel, a job taken away, a
        builder out of service) is looked at every scan."""
        status, build, building = self.last_status, snap.build, self.memory.building
        return not (
            building is None
            or status is None
            or status.builder_status is not BuilderStatus.BUILDING
            or build is None
            or build.status is not BuildStatus.BUILDING
            or building[0] != build.cookie
            or not snap.builder.builderok
        )

    def polled_since(self, when: float) -> bool:
        """Whether the builder was asked for its status at ``when`` or later."""
        return self.memory.polled_at >= when

    def due(self, snap: BuilderSnapshot, now: float) -> bool:
        """Whether the scan that reads ``snap`` should poll this builder now. A builder whose
        poll is :meth:`routine` is polled less often the longer its build has run
        (:func:`~buildmaster.policy.building_poll_delay`); any other is polled every scan."""
        config = self.master.config
        if config.building_poll_fraction <= 0 or not self.routine(snap):
            return True
        assert self.memory.building is not None
        interval = config.scan_interval
        delay = building_poll_delay(
            now - self.memory.building[1],
            interval,
            config.building_poll_fraction,
            config.building_poll_max,
        )
        # a slice comes round every interval: poll at the round nearest the delay
        return now - self.memory.polled_at >= delay - interval / 2

    @property
    def idle(self) -> bool:
        """Last seen IDLE, able to take a job, and not being scanned right now."""
        return (
            not self.busy
            and self.last_status is not None
            and self.last_status.builder_status is BuilderStatus.IDLE
            and builder_may_take_jobs(self.builder)
        )

    # -- the operations the master offers on one builder ---------------------------------

    async def probe(self, arch_tag: str | None = None) -> str | None:
        """echo, info, status: a failure reason, or ``None`` (:func:`.probe.probe`)."""
        return await probe.probe(self.scope, arch_tag)

    async def dispatch(self, job: BuildQueue, ctx: BuildContext | None = None) -> bool:
        """Send a claimed job to the builder (:func:`.dispatch.dispatch`)."""
        return await dispatch.dispatch(self.scope, job, ctx)

    async def dispatch_next(self) -> BuildQueue | None:
        """Claim the best waiting job for this builder and dispatch it."""
        return await dispatch.dispatch_next(self.scope)

    def schedule_probe(self) -> None:
        judge.schedule_probe(self.scope)

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
        ownership, memory = self.master.ownership, self.memory
        if not ownership.holds(memory.builder.id):
            return  # another master's (or nobody's, until the session is back)
        self.ownership_epoch = ownership.epoch
        snap = snapshot or await self.master.store.jobs.snapshot(memory.builder.id)
        self.update(snap.builder)
        builder = snap.builder
        if not builder.active or self._cut():
            return
        if not builder.builderok and not (
            # a job leaving a builder the master just failed leaves once it is known not
            # to run there (or the builder cannot be reached: then it is requeued)
            snap.job is not None and snap.job.id in memory.evicting and builder.failed_by_master
        ):
            await probe.out_of_service(self.scope, snap, self.master.arch_tag_for)
            return
        now = self.master.clock.seconds()
        memory.polled_at = now
        try:
            status = await self.client.status()
        except BuilderError as e:
            memory.last_status = None
            memory.building = None
            await judge.scan_failed(self.scope, snap, e)
            return
        memory.consecutive_failures = 0
        memory.last_status = status
        # a finished build: its collection counts against the master's limit until the
        # builder has its next build (record_dispatch) or the scan is over
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
        builder, memory = snap.builder, self.memory
        if status.builder_status is not BuilderStatus.BUILDING or status.build_id is None:
            memory.building = None
        elif memory.building is None or memory.building[0] != status.build_id:
            memory.building = (status.build_id, now)
        if status.builder_version != builder.version and status.builder_version is not None:
            self.master.logtails.set_version(builder.id, status.builder_version)
        try:
            decision = self._decide(snap, status)
            await carry_out(self.scope, decision, snap, status, self.master.logtails)
        except BuilderError as e:
            if not self._cut():
                # judge with what the builder has now: the job it had may have been requeued
                fresh = await self.master.store.jobs.snapshot(builder)
                await judge.failed(self.scope, fresh.builder, fresh.job, e)

    def _decide(self, snap: BuilderSnapshot, status: StatusReport) -> Decision:
        """What the database and the builder say, with the worker's memory: the steps."""
        memory, job, build = self.memory, snap.job, snap.build
        evicting = False
        if memory.evicting:  # (empty for nearly every poll: nothing to allocate then)
            evicting = job is not None and job.id in memory.evicting
            if not evicting:
                memory.evicting.clear()  # its job went elsewhere meanwhile
        seen = Seen(
            state=status.builder_status,
            build_id=status.build_id,
            build_status=status.build_status,
            job_status=job.status if job is not None else None,
            cookie=build.cookie if build is not None else None,
            build_state=build.status if build is not None else None,
            clean_status=snap.builder.clean_status,
            evicting=evicting,
        )
        memory.watch, stuck = observe(
            memory.watch,
            status.builder_status,
            status.build_id,
            running_ours=seen.running_ours,
            cancelling=job is not None and job.status is BuildQueueStatus.CANCELLING,
            now=self.master.clock.seconds(),
            timeout=self.master.config.stuck_timeout,
        )
        if stuck is not None:
            seen = attrs.evolve(seen, stuck=stuck)
        return decide(seen)
