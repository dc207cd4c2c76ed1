"""BuilddMaster: the service that keeps every builder busy.

Long: the one service that holds every worker: its scan cycle, the polls waiting their turn,
the wake-ups of idle builders and the operations share its state (the builders it works, the
kinds with no waiting job, the idle builders).

It holds one :class:`~buildmaster.scan.BuilderWorker` per builder and

* scans every builder once per ``scan_interval``, in parallel (each scan independent; a busy
  worker is skipped, never overlapped): the interval is cut into up to 20 slices and each
  slice's builders are read with their jobs in one query and scanned together, so polls and
  the finished builds they find come spread over the interval rather than in one burst;
* on ``NOTIFY buildqueue_waiting`` (a job became available) wakes an idle builder of the
  right kind at once, and every successful claim wakes the next one, so a burst of jobs
  spreads over the idle builders without waiting for a tick;
* on ``NOTIFY builder_scan`` (another process cancelled a running build or changed a
  builder's manual mode: :mod:`buildmaster.operations`) scans that builder at once, if it
  holds it;
* remembers which (processor, virtualized) kinds have no waiting job, so idle builders do
  not ask the database again until a notification says otherwise;
* writes log tails in batches;
* with several masters on one database, works only the builders it holds a session-level
  advisory lock for (a master that dies frees its builders), and stops working them the
  moment its session is lost (:mod:`buildmaster.ownership`);
* reports its own failures (database, librarian, file descriptors, VM reset command) once
  per cause (:mod:`buildmaster.masterfaults`), and puts the jobs they held up back in the
  queue when their wait is over.

It also offers the seed's API (``addDistroArchSeries``, ``setupBuilders``,
``findBuildCandidate``, ``dispatchBuildCandidate``, ``is_available``) and the operations on
builds (cancel, retry, rescore, manual mode). Every operation that does I/O returns a
Deferred (each says what it fires with and fails with), so it can be used from any Twisted
program or trial test, with or without coroutines.
"""

from __future__ import annotations

import datetime
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from buildmaster.admission import Admission
from buildmaster.config import MasterConfig
from buildmaster.enums import BuilderStatus, BuildStatus
from buildmaster.httpclient import HTTPClient
from buildmaster.logtails import LogtailBuffer
from buildmaster.masterfaults import DATABASE, FaultLog, MasterFault
from buildmaster.metrics import Metrics
from buildmaster.model import Builder, BuilderSnapshot, BuildQueue, DistroArchSeries, HasId, id_of
from buildmaster.operations import SCAN_CHANNEL, FarmOperations, parse_scan_wanted
from buildmaster.ownership import OWNERSHIP_LOCK, Ownership, OwnershipLost
from buildmaster.protocol import BuilderError
from buildmaster.readiness import Readiness
from buildmaster.scan import BuilderWorker, Openings, failure_message
from buildmaster.store import Store
from buildmaster.store.database import DatabaseError, application_name

__all__ = ["BuilddMaster", "OWNERSHIP_LOCK"]

#: The scan interval is cut into slices, each scanning the builders whose id falls in it, so
#: that the farm's polls, and the builds they find finished, come spread over the interval
#: instead of in one burst: at most this many slices, each at least SCAN_SLICE seconds.
MAX_SCAN_SLICES = 20
SCAN_SLICE = 0.05
#: How often (seconds) a master deletes the usage rows of the owners idle for 20 half-lives
#: (the fair-share claims read every owner's rows of their kind)
FORGET_INTERVAL = 3600.0


class BuilddMaster(service.Service):
    """The scanning and dispatching service.

    :param reactor: IReactorTime + IReactorTCP + IReactorProcess (never the global one):
        connections, the VM reset command.
    :param store: the database.
    :param librarian: where files are served from and results are stored.
    :param metrics: what the master measures (/metrics); a new one by default.
    :param clock: what schedules the scans and decides what is due (scan ticks, building
        builders' polls, re-probes, cancel and retry windows, log tail writes, collection
        leases) and the deadlines of the calls to builders; ``reactor`` by default. Tests
        pass a ``Clock`` to drive time.
    """

    _log = Logger()
    name = "buildd-master"

    def __init__(
        self,
        reactor: Any,
        store: Store,
        librarian: Any,
        config: MasterConfig | None = None,
        metrics: Metrics | None = None,
        clock: Any = None,
    ) -> None:
        self.reactor = reactor
        self.clock = reactor if clock is None else clock
        self.store = store
        self.librarian = librarian
        self.config = config or MasterConfig()
        #: how the master introduces itself to builders (which master sent a call): the name
        #: its database sessions have too
        self.user_agent = application_name()
        self.http = HTTPClient(reactor, clock=self.clock, user_agent=self.user_agent.encode())
        self.logtails = LogtailBuffer(store)
        #: what the master measures (/metrics)
        self.metrics = metrics if metrics is not None else Metrics()
        #: when the last scan cycle read the database (the master's clock; /readyz)
        self.last_scan_cycle: float | None = None
        self.workers: dict[int, BuilderWorker] = {}
        self.stopping = False
        self._distroarchseries: dict[int, DistroArchSeries] = {}
        self._listening = False
        #: which kinds have no waiting job, which idle builders wait for one, the claims
        self.openings = Openings(self.clock, lambda: self._listening, self._works)
        #: the builders this master works (advisory locks held by its database session)
        self.ownership = Ownership(
            store.db,
            self.config.exclusive_builders,
            self._session_lost,
            clock=self.clock,
            lease=self.config.session_lease,
            releasable=self._releasable,
            on_room=self._room_to_take,
        )
        self._slices = max(1, min(MAX_SCAN_SLICES, int(self.config.scan_interval / SCAN_SLICE)))
        self._next_slice = 0
        self._scan_loop = task.LoopingCall.withCount(self._tick)
        self._scan_loop.clock = self.clock
        self._logtail_loop = task.LoopingCall(self._flush_logtails)
        self._logtail_loop.clock = self.clock
        #: the master's own failures, reported once per cause
        self.faults = FaultLog(
            self.clock,
            retry_initial=self.config.fault_retry_initial,
            retry_max=self.config.fault_retry_max,
        )
        self._resume_loop = task.LoopingCall(self._resume_due)
        self._resume_loop.clock = self.clock
        self._forget_loop = task.LoopingCall(self._forget_idle_owners)
        self._forget_loop.clock = self.clock
        self._loops: list[defer.Deferred[Any]] = []
        self._started: defer.Deferred[None] = defer.succeed(None)
        self._readiness = Readiness()
        self.admission = Admission(
            self.clock, self.config.max_collections, self.config.collection_lease, self._take_turns
        )
        #: routine polls waiting their turn, oldest first: builder id -> worker, the latest
        #: snapshot of it, when it started waiting
        self._turns: dict[int, tuple[BuilderWorker, BuilderSnapshot, float]] = {}
        self._taking_turns = False
        #: the operations through the database alone (a builder held elsewhere is woken)
        self._farm_operations = FarmOperations(store, wake=self._wake)

    #: a master scans (:class:`~buildmaster.web.api.context.FarmReader`; a web-only
    #: process does not)
    scans = True

    # -- the service -------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.stopping = False
        self._started = defer.Deferred.fromCoroutine(self._start())
        self._readiness.watch(self._started)

    def _warn_unreset_vms(self) -> None:
        """Virtualized builders run untrusted builds: without a reset command, each build
        finds what the one before it left in the VM."""
        if self.config.vm_resume_command:
            return
        names = sorted(w.builder.name for w in self.workers.values() if w.builder.virtualized)
        if names:
            self._log.warn(
                "No VM reset command is set (--vm-resume-command): the virtualized builders"
                " {names} will build without their VMs being reset between builds",
                names=", ".join(names),
            )

    def when_ready(self) -> defer.Deferred[None]:
        """Fires with ``None`` once the master runs (listening for new jobs, its first scan
        of every builder done, its loops started); fails with the error that stopped it
        from starting (a :class:`~buildmaster.store.database.DatabaseError`, most likely).
        Called before ``startService``, it waits for the start."""
        return self._readiness.wait()

    async def _start(self) -> None:
        await self.store.db.listen("buildqueue_waiting", self._queue_changed)
        await self.store.db.listen(SCAN_CHANNEL, self.scan_wanted)
        self._listening = True
        self.store.db.on_session_lost(self._session_back)
        for das in await self.store.distributions.all_arch_series():
            self._distroarchseries[das.id] = das
        await self.ownership.start()  # the lease, and how many masters share the farm
        await self._safe_scan(None)  # everything once at start, then a slice at a time
        self._warn_unreset_vms()
        self._loops = [
            self._scan_loop.start(self.config.scan_interval / self._slices, now=False),
            self._logtail_loop.start(self.config.logtail_interval, now=False),
            self._resume_loop.start(
                min(self.config.scan_interval, self.config.fault_retry_initial), now=False
            ),
            self._forget_loop.start(FORGET_INTERVAL, now=False),
        ]

    def stopService(self) -> defer.Deferred[None]:
        """Fires with ``None`` once the master has stopped: its loops stopped, the scans in
        progress over (their remote calls are cut short), the pending log tails written."""
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.stopping = True
        self._listening = False
        try:
            await self._started
        except Exception:
            self._log.failure("The master had not started properly")
        for loop in (self._scan_loop, self._logtail_loop, self._resume_loop, self._forget_loop):
            if loop.running:
                loop.stop()
        self.ownership.stop()
        self._turns.clear()
        self.admission.clear()
        running = [w.current_scan() for w in self.workers.values()]
        self.http.abort_all()
        await defer.DeferredList(running, consumeErrors=True)
        await defer.DeferredList(self._loops, consumeErrors=True)
        await self._flush_logtails()
        self.http.close_idle()

    @property
    def scanning(self) -> bool:
        """Whether the scan loop runs (what /readyz reports)."""
        return bool(self.running) and not self.stopping and self._scan_loop.running

    def live_logtail(self, job_id: int) -> str | None:
        """The newest log tail of a running job, if not yet written to the database."""
        return self.logtails.pending(job_id)

    # -- scanning ----------------------------------------------------------------------

    @property
    def ticking(self) -> bool:
        """Whether a periodic tick is still reading the database (its scans are then
        started; :attr:`scans_under_way` says whether they are over)."""
        return self._scan_loop.running and self._scan_loop.call is None

    @property
    def scans_under_way(self) -> bool:
        """Whether a scan is under way: a periodic tick still reading the database, or a
        builder being scanned (a test that drives the master's clock waits for it to end)."""
        return self.ticking or any(w.busy for w in self.workers.values())

    def _tick(self, count: int) -> defer.Deferred[None]:
        """Scan the next slice, and any slice a late reactor skipped (``count`` > 1)."""
        first, n = self._next_slice, min(count, self._slices)
        self._next_slice = (first + count) % self._slices
        parts = [(first + i) % self._slices for i in range(n)]
        return defer.Deferred.fromCoroutine(self._safe_scan(parts))

    async def _safe_scan(self, parts: list[int] | None) -> None:
        try:
            await self.scan_all(wait=False, parts=parts, only_due=True)
            self.last_scan_cycle = self.clock.seconds()
        except DatabaseError as e:
            if not self.store.db.explains(e):  # an outage is logged once, by the pool
                self.metrics.database_error("scan")
                self.faults.report(MasterFault(DATABASE, f"scans skipped: database error: {e}"))
        except Exception:
            self._log.failure("Scan cycle failed")
        else:
            if self.faults.active and DATABASE in self.faults.causes:
                self.faults.over([DATABASE])

    async def _resume_due(self) -> None:
        """Put back in the queue the jobs a failure of the master's side held up, whose
        wait is over (their dispatch tells whether the cause is gone)."""
        try:
            await self.resume_waiting()
        except DatabaseError as e:
            if not self.store.db.explains(e):
                self.faults.report(MasterFault(DATABASE, f"waiting jobs not resumed: {e}"))
        except Exception:
            self._log.failure("Resuming waiting jobs failed")

    async def _forget_idle_owners(self) -> None:
        """Forget the fair-share usage of the owners long idle (the claims read every owner
        of their kind): once per ``FORGET_INTERVAL``."""
        try:
            forgotten = await self.store.jobs.forget_idle_owners()
        except DatabaseError as e:
            if not self.store.db.explains(e):
                self.faults.report(MasterFault(DATABASE, f"idle owners' usage not pruned: {e}"))
        except Exception:
            self._log.failure("Forgetting idle owners' usage failed")
        else:
            if forgotten:
                self._log.info(
                    "Forgot the fair-share usage of {n} idle owner(s) and kind(s)", n=forgotten
                )

    def resume_waiting(self) -> defer.Deferred[int]:
        """Put back in the queue the jobs a failure of the master's own side suspended
        (:mod:`buildmaster.masterfaults`) whose wait is over (the master does so by itself
        every so often).

        Fires with how many went back; fails with a
        :class:`~buildmaster.store.database.DatabaseError`.
        """
        return defer.Deferred.fromCoroutine(self._resume_waiting())

    async def _resume_waiting(self) -> int:
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)
        resumed = await self.store.jobs.resume_due(now)
        if resumed:
            self._log.info("{count} waiting jobs back in the queue", count=resumed)
        return resumed

    def scan_all(
        self, wait: bool = True, parts: list[int] | None = None, only_due: bool = False
    ) -> defer.Deferred[None]:
        """Scan every builder (this master works) in parallel, from one read of the database.

        Fires with ``None``; fails with a :class:`~buildmaster.store.database.DatabaseError`
        when the builders could not be read (a builder's own failure is judged, not raised).

        :param wait: fire only once every scan is done (otherwise as soon as they are started).
        :param parts: only the builders of these slices of the scan interval (``id % slices``).
        :param only_due: skip the building builders whose next poll is not due yet
            (:meth:`BuilderWorker.due`; the periodic scans do, a scan asked for does not).
        """
        return defer.Deferred.fromCoroutine(self._scan_all(wait, parts, only_due))

    async def _scan_all(self, wait: bool, parts: list[int] | None, only_due: bool) -> None:
        slices = self._slices
        snapshots = await self.store.jobs.snapshots(
            parts=(slices, parts) if parts is not None else None
        )
        owned = await self._own([s.builder.id for s in snapshots])
        now = self.clock.seconds()
        seen = set()
        scans = []
        for snap in snapshots:
            if snap.builder.id not in owned:
                continue
            seen.add(snap.builder.id)
            worker = self._worker(snap.builder)
            if not worker.busy and (not only_due or worker.due(snap, now)):
                if only_due and self.admission.limit > 0 and worker.routine(snap):
                    self._poll_in_turn(worker, snap, now)
                else:
                    scans.append(worker.request_scan(snap))
        for builder_id in set(self.workers) - seen:
            if parts is not None and builder_id % slices not in parts:
                continue  # another slice's builder
            if not self.workers[builder_id].busy:
                self.openings.forget_idle(self.workers.pop(builder_id))
                self._turns.pop(builder_id, None)
        self.openings.expire()
        if wait:
            await defer.DeferredList(scans, consumeErrors=True)

    def _poll_in_turn(self, worker: BuilderWorker, snap: BuilderSnapshot, now: float) -> None:
        """Poll a building builder now, or when its turn comes (:mod:`buildmaster.admission`)."""
        builder_id = worker.builder.id
        waiting = self._turns.get(builder_id)
        if waiting is not None:  # a fresher view, the same place in line
            self._turns[builder_id] = (worker, snap, waiting[2])
            return
        self._turns[builder_id] = (worker, snap, now)
        self._take_turns()

    def _take_turns(self) -> None:
        """Poll the builders waiting their turn, oldest first, while there is room."""
        if self._taking_turns:
            return  # called back from a poll started below: the loop goes on
        self._taking_turns = True
        try:
            while self._turns and not self.stopping and self.admission.may_poll():
                builder_id = next(iter(self._turns))
                worker, snap, since = self._turns.pop(builder_id)
                if (
                    worker.busy
                    or self.workers.get(builder_id) is not worker
                    or not self._works(builder_id)
                    or worker.polled_since(since)
                ):
                    continue  # scanned meanwhile (asked for), gone, or another master's
                self.admission.poll_started(builder_id)
                worker.request_scan(snap).addBoth(self._turn_over, builder_id)
        finally:
            self._taking_turns = False

    def _turn_over(self, result: object, builder_id: int) -> object:
        self.admission.poll_done(builder_id)
        return result

    async def _own(self, builder_ids: list[int]) -> set[int]:
        return await self.ownership.acquire(builder_ids)

    def _session_lost(self) -> None:
        """The database session is gone: with it the builders' locks (another master may
        take them now) and the notifications. Nothing more reaches those builders: the
        calls in flight are cut, the polls waiting their turn forgotten."""
        self._listening = False
        self._turns.clear()
        self.http.abort_all()

    def _releasable(self) -> list[int]:
        """The builders that may go to another master now: no scan under way (no call in
        flight), the idle ones first."""
        free = [w for w in self.workers.values() if not w.busy]
        free.sort(key=lambda w: not w.idle)
        return [w.builder.id for w in free]

    def _room_to_take(self) -> None:
        """A master left (its share grew): scan every builder now, taking what is free,
        rather than a slice at a time over the next scan interval."""
        if self.running and not self.stopping and self._scan_loop.running:
            defer.Deferred.fromCoroutine(self._safe_scan(None))

    def _session_back(self) -> None:
        if not self.stopping:
            self._listening = True

    def may_act(self, worker: BuilderWorker) -> bool:
        """Whether ``worker`` may still talk to its builder: the master runs, and holds the
        builder as it did when the worker's scan began (a master not started, driven
        through its API, holds whatever it is given)."""
        return not self.running or self.ownership.still(worker.builder.id, worker.ownership_epoch)

    def _worker(self, builder: Builder) -> BuilderWorker:
        worker = self.workers.get(builder.id)
        if worker is None:
            worker = self.workers[builder.id] = BuilderWorker(self, builder)
        else:
            worker.update(builder)
        return worker

    async def _flush_logtails(self) -> None:
        try:
            await self.logtails.flush()
        except DatabaseError as e:
            if not self.store.db.explains(e):
                self._log.warn("Log tails not written: {error}", error=e)
        except Exception:
            self._log.failure("Writing log tails failed")

    # -- events ---------------------------------------------------------------------

    def _queue_changed(self, payload: str) -> None:
        """NOTIFY buildqueue_waiting: ``"<processor> <virtualized> <count>"``, or ``""``
        (after a reconnection) for "anything may have changed"."""
        try:
            processor, virtualized, count = payload.split()
            keys = [(int(processor), virtualized == "true")]
            jobs = int(count)
        except ValueError:
            keys = list(
                self.openings.empty_keys | {k for w in self.workers.values() for k in w.keys}
            )
            jobs = len(self.workers)
        self.openings.job_waiting(keys, count=jobs)

    def scan_wanted(self, payload: str) -> None:
        """NOTIFY builder_scan: ``"<builder id>"``, a builder another process wants looked at
        now (:mod:`buildmaster.operations`); scanned if this master holds it, and its slice
        of the builders scanned if no master has it yet (a builder just added). The empty
        payload after a reconnection asks for nothing: the scans catch up by themselves."""
        builder_id = parse_scan_wanted(payload)
        if builder_id is None:
            if payload:
                self._log.warn(
                    "Ignored a builder_scan notification that names no builder: {payload!r}",
                    payload=payload[:80],
                )
            return
        if self.stopping:
            return
        worker = self.workers.get(builder_id)
        if worker is None:
            self._scan_new(builder_id)
            return
        if self._works(builder_id):
            worker.request_scan()

    def _scan_new(self, builder_id: int) -> None:
        """A builder this master has no worker for (just added, or brought back): scan its
        slice of the builders now, rather than when that slice's turn comes (up to a scan
        interval later). Every master does: whichever takes its lock works it."""
        if self.running and self._scan_loop.running:
            defer.Deferred.fromCoroutine(self._safe_scan([builder_id % self._slices]))

    def _wake(self, builder_id: int) -> defer.Deferred[None]:
        """Have the builder scanned now: by this master if it holds it (a master not started,
        driven through its API, holds what it has a worker for), else by the master that does
        (NOTIFY builder_scan)."""
        worker = self.workers.get(builder_id)
        if worker is not None and (not self.running or self._works(builder_id)):
            worker.request_scan()
            return defer.succeed(None)
        return self._farm_operations.wake_owner(builder_id)

    def note_idle(self, worker: BuilderWorker) -> None:
        """A worker finished a scan: list it under its kinds if it can take a job."""
        self.openings.note_idle(worker, listed=worker.builder.id in self.workers)

    def _works(self, builder_id: int) -> bool:
        """Whether this master works the builder (holds its lock, when that matters)."""
        return self.ownership.holds(builder_id)

    def arch_tag_for(self, builder: Builder) -> defer.Deferred[str | None]:
        """Fires with the architecture tag a builder should report (from the registered
        architectures), or ``None`` when none matches its processors."""
        for das in self._distroarchseries.values():
            if das.processor_id in builder.processor_ids:
                return defer.succeed(das.architecturetag)
        return defer.succeed(None)

    # -- the seed's API ------------------------------------------------------------------

    def addDistroArchSeries(self, distroarchseries: DistroArchSeries) -> None:
        """Register an architecture whose builders this master probes and feeds."""
        self._distroarchseries[distroarchseries.id] = distroarchseries

    def setupBuilders(self, distroarchseries: DistroArchSeries) -> defer.Deferred[None]:
        """Probe, in parallel, every builder for the architecture's processor: echo, info
        (protocol 1.0, the right architecture tag), status. A builder that fails the probe is
        marked failed (``builderok = False``, ``failnotes`` = the reason, a WARNING). Fires
        when every probe is done."""
        self.addDistroArchSeries(distroarchseries)
        return defer.Deferred.fromCoroutine(self._setup_builders(distroarchseries))

    async def _setup_builders(self, das: DistroArchSeries) -> None:
        builders = [
            b for b in await self.store.builders.all() if das.processor_id in b.processor_ids
        ]
        await defer.DeferredList(
            [defer.Deferred.fromCoroutine(self._probe(b, das.architecturetag)) for b in builders],
            consumeErrors=True,
        )

    async def _probe(self, builder: Builder, arch_tag: str) -> None:
        worker = self._worker(builder)
        try:
            reason = await worker.probe(arch_tag)
        except MasterFault as e:  # the master's side: the builder is not judged
            self.faults.report(e)
            return
        except OwnershipLost:
            return  # another master works it
        if reason is None:
            if not builder.builderok and builder.failed_by_master:
                await self.store.jobs.restore_builder(builder, "answers correctly again")
            return
        if not builder.builderok and not builder.failed_by_master:
            return  # an operator took it out of service: leave it so
        self._log.warn("{message}", message=failure_message(builder, reason))
        await self.store.jobs.fail_builder(builder, reason)
        snap = await self.store.jobs.snapshot(builder)
        if snap.job is not None:
            await self.store.jobs.requeue(
                snap.job, snap.builder, f"{builder.name} failed: {reason}"
            )
        worker.update(snap.builder)
        worker.schedule_probe()

    def is_available(self, builder: Builder | HasId | int) -> defer.Deferred[bool]:
        """Whether the builder is ok and says, right now, that it is IDLE (``False`` too
        when another master works it)."""

        async def available() -> bool:
            fresh = await self.store.builders.get(id_of(builder))
            if not fresh.builderok:
                return False
            worker = self._worker(fresh)
            try:
                status = await worker.client.status()
            except (BuilderError, OwnershipLost, MasterFault):
                return False
            worker.last_status = status
            return status.builder_status is BuilderStatus.IDLE

        return defer.Deferred.fromCoroutine(available())

    def findBuildCandidate(self, builder: Builder) -> defer.Deferred[BuildQueue | None]:
        """The best waiting job for the builder (not claimed)."""
        return defer.Deferred.fromCoroutine(self.store.queue.findBuildCandidate(builder))

    def dispatchBuildCandidate(self, builder: Builder, job: BuildQueue) -> defer.Deferred[bool]:
        """Claim ``job`` for ``builder`` and dispatch it (VM reset, files, ``build()``).

        Fires with ``True`` once the builder has accepted the build and the job shows its
        builder, buildstart and a BUILDING build; with ``False`` when the dispatch failed
        (the failure is judged and recorded; the job is back in the queue or failed).

        :raises buildmaster.store.jobs.JobGone: when the job is no longer waiting.
        """

        async def dispatch() -> bool:
            fresh = await self.store.builders.get(builder)
            claimed = await self.store.jobs.claim(job, fresh)
            worker = self._worker(fresh)
            worker.update(await self.store.builders.get(builder))
            return await worker.dispatch(claimed)

        return defer.Deferred.fromCoroutine(dispatch())

    # -- operations --------------------------------------------------------------------

    def cancel(self, build: HasId | int) -> defer.Deferred[BuildStatus]:
        """Cancel a build: at once if it waits; a running one is aborted on its builder and
        ends CANCELLED when the builder reports it aborted.

        Fires with the build's new state (CANCELLED, or CANCELLING while its builder
        aborts it); fails with :class:`~buildmaster.store.NotFound` for an unknown build and
        :class:`~buildmaster.transitions.IllegalTransition` for a build that cannot be
        cancelled (it has ended).
        """
        return self._farm_operations.cancel(build)

    def retry(self, build: HasId | int) -> defer.Deferred[BuildQueue]:
        """Queue a failed or cancelled build again, with a fresh score.

        Fires with its new queue entry; fails with :class:`~buildmaster.store.NotFound` for
        an unknown build, and with :class:`~buildmaster.transitions.IllegalTransition` or
        ``ValueError`` for a build that did not end in a failure or a cancel.
        """
        return defer.Deferred.fromCoroutine(self.store.jobs.retry(build))

    def rescore(self, build: HasId | int, score: int) -> defer.Deferred[BuildQueue]:
        """Give a waiting build a manual score (it sticks).

        Fires with its queue entry, rescored; fails with :class:`~buildmaster.store.NotFound`
        when the build is not waiting in the queue.
        """
        return defer.Deferred.fromCoroutine(self.store.jobs.rescore(build, score))

    def set_manual(self, builder: HasId | int, manual: bool) -> defer.Deferred[Builder]:
        """Manual mode: the builder is still scanned and its builds collected, but it gets
        no new job.

        Fires with the builder as it is now; fails with :class:`~buildmaster.store.NotFound`
        for an unknown builder.
        """
        return defer.Deferred.fromCoroutine(self._set_manual(builder, manual))

    async def _set_manual(self, builder: HasId | int, manual: bool) -> Builder:
        fresh = await self.store.builders.set_manual(builder, manual)
        worker = self.workers.get(fresh.id)
        if worker is not None and (not self.running or self._works(fresh.id)):
            worker.update(fresh)
            if self.running and not manual:
                worker.request_scan()  # it may take a waiting job now
        else:
            await self._farm_operations.wake_owner(fresh.id)
        return fresh

    def builder_changed(self, builder: HasId | int) -> defer.Deferred[None]:
        """An operator changed the builder's row (enabled or disabled it, moved it to another
        URL, gave it other processors): the master that holds it looks at it now, with the
        new row, rather than at its next poll. Fires with ``None``."""
        builder_id = builder if isinstance(builder, int) else builder.id
        worker = self.workers.get(builder_id)
        if worker is not None and (not self.running or self._works(builder_id)):
            if self.running and not self.stopping:
                worker.request_scan()
            return defer.succeed(None)
        return self._farm_operations.wake_owner(builder_id)

    def addOrUpdateChroot(
        self, distroarchseries: HasId | int, chroot: HasId | int
    ) -> defer.Deferred[DistroArchSeries]:
        """Set an architecture's chroot (a librarian file); jobs that waited for it go back
        in the queue.

        Fires with the architecture as it is now; fails with
        :class:`~buildmaster.store.NotFound` for an unknown architecture.
        """
        return self._farm_operations.addOrUpdateChroot(distroarchseries, chroot)
