"""What a step of the scan works with: the master's services, and one builder's memory.

The steps (:mod:`~buildmaster.scan.dispatch`, :mod:`~buildmaster.scan.collect`,
:mod:`~buildmaster.scan.cancel`, :mod:`~buildmaster.scan.judge`,
:mod:`~buildmaster.scan.probe`) never see the master. Each takes a :class:`Scope`: the
:class:`Services` the master provides (the store's job queries and events, the librarian,
the clock, the reactor for the VM reset command, the config, the metrics, the fault log), the
:class:`Claiming` side of the master's schedule (for claiming a builder's next job), the
builder's client, and the worker's :class:`Memory` of that builder.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import attrs
from twisted.internet import defer

from buildmaster.admission import Admission
from buildmaster.buildargs import BuildContext
from buildmaster.builderclient import BuilderClient
from buildmaster.config import MasterConfig
from buildmaster.httpclient import HTTPClient
from buildmaster.logtails import LogtailBuffer
from buildmaster.masterfaults import FaultLog
from buildmaster.metrics import Metrics
from buildmaster.model import Builder
from buildmaster.ownership import Ownership
from buildmaster.progress import Watch
from buildmaster.protocol import StatusReport
from buildmaster.scan.claims import ClaimGate, Key
from buildmaster.store.database import Database
from buildmaster.store.events import EventQueries
from buildmaster.store.jobs import JobQueries

__all__ = [
    "Claiming",
    "Eviction",
    "Farm",
    "Key",
    "Memory",
    "Scope",
    "ScanStore",
    "Services",
]

#: at most this many builds lost by a builder are remembered (not given back to it)
MAX_REMEMBERED_LOST = 1000


class ScanStore(Protocol):
    """The part of the store the scan uses."""

    @property
    def db(self) -> Database: ...

    @property
    def jobs(self) -> JobQueries: ...

    @property
    def events(self) -> EventQueries: ...


class Services(Protocol):
    """What the steps of a scan use of the master that runs them."""

    @property
    def store(self) -> ScanStore: ...

    #: where files are served from and results stored (:class:`buildmaster.librarian.Librarian`)
    @property
    def librarian(self) -> Any: ...

    #: what times everything (a ``Clock`` in tests)
    @property
    def clock(self) -> Any: ...

    #: what runs the VM reset command (IReactorProcess)
    @property
    def reactor(self) -> Any: ...

    @property
    def config(self) -> MasterConfig: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def faults(self) -> FaultLog: ...

    @property
    def admission(self) -> Admission: ...

    @property
    def stopping(self) -> bool: ...


class Claiming(Protocol):
    """What claiming a builder's next job needs of the master's schedule: which kinds of
    builder have no waiting job, one claim at a time per kind, and waking the idle builders
    of a kind when a claim found a job."""

    @property
    def claims(self) -> ClaimGate: ...

    def known_empty(self, keys: Iterable[Key]) -> bool: ...

    def generations(self, keys: Iterable[Key]) -> dict[Key, int]: ...

    def mark_empty(self, keys: Iterable[Key], generations: dict[Key, int]) -> None: ...

    def wake(self, keys: Iterable[Key], exclude: object = None, count: int = 1) -> None: ...


class Farm(Services, Protocol):
    """What a worker needs of the master that runs it (:class:`buildmaster.master.BuilddMaster`
    provides it): the steps' services, claiming, and the master's schedule."""

    @property
    def openings(self) -> Claiming: ...

    @property
    def http(self) -> HTTPClient: ...

    @property
    def ownership(self) -> Ownership: ...

    @property
    def logtails(self) -> LogtailBuffer: ...

    def may_act(self, worker: Any) -> bool:
        """Whether ``worker`` may still talk to its builder."""
        ...

    def note_idle(self, worker: Any) -> None:
        """``worker`` finished a scan (the master lists it as idle if it can take a job)."""
        ...

    def arch_tag_for(self, builder: Builder) -> defer.Deferred[str | None]: ...


@attrs.frozen
class Eviction:
    """A job that must leave its builder, once the builder is known not to run it."""

    reason: str
    #: the kind of the event that records its return to the queue
    kind: str = "requeued"
    #: the builder was to blame: the job's failure count is reset
    forgive: bool = False


@attrs.define(eq=False)
class Memory:
    """What a worker knows of its builder beyond what the database says."""

    #: the builder's row, as last read (and as the worker changed it since)
    builder: Builder
    #: what the builder last said (``None``: not asked yet, or it did not answer)
    last_status: StatusReport | None = None
    #: polls in a row that failed
    consecutive_failures: int = 0
    #: probes of a failed builder since it failed, and when the next one is due
    probe_attempts: int = 0
    next_probe: float = 0.0
    #: when a cancelled job's abort was sent, by job
    abort_sent: dict[int, float] = attrs.Factory(dict)
    #: the job whose failure was already counted during its current stay here
    charged: int | None = None
    #: jobs that failed here: not given to this builder again until then
    avoid: dict[int, float] = attrs.Factory(dict)
    #: the context of the build dispatched here, kept for its collection
    contexts: dict[int, BuildContext] = attrs.Factory(dict)
    #: when the builder was last asked for its status (the master's clock)
    polled_at: float = 0.0
    #: the build it was last seen building, and since when
    building: tuple[str, float] | None = None
    #: the state it was first seen in that should end by itself (buildmaster.progress)
    watch: Watch | None = None
    #: the job on it that must leave it once it is known not to run it
    evicting: dict[int, Eviction] = attrs.Factory(dict)
    #: jobs it lost: not given back to it until it is known clean (oldest first)
    lost_here: dict[int, None] = attrs.Factory(dict)

    def remember_lost(self, job_id: int) -> None:
        self.lost_here.pop(job_id, None)
        self.lost_here[job_id] = None
        while len(self.lost_here) > MAX_REMEMBERED_LOST:
            del self.lost_here[next(iter(self.lost_here))]


@attrs.define(eq=False)
class Scope:
    """Everything a step of the scan of one builder works with."""

    services: Services
    claiming: Claiming
    client: BuilderClient
    memory: Memory
    #: whether the work with the builder must stop (the master stops, or no longer holds it)
    cut: Callable[[], bool]
    #: raises :class:`~buildmaster.ownership.OwnershipLost` when the master no longer holds it
    check_owned: Callable[[], None]
    #: who the steps act for (not woken by the claims it makes)
    worker: object = None

    @property
    def builder(self) -> Builder:
        return self.memory.builder

    @property
    def keys(self) -> tuple[Key, ...]:
        return _keys(self.memory.builder.processor_ids, self.memory.builder.virtualized)


@functools.lru_cache(maxsize=256)
def _keys(processor_ids: tuple[int, ...], virtualized: bool) -> tuple[Key, ...]:
    """The kinds of job a builder with these processors takes (few combinations)."""
    return tuple((p, virtualized) for p in processor_ids)
