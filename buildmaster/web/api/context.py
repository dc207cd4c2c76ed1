"""What the operator API's resources work with: the store, the librarian, and the master
through two small interfaces (what it knows that the database does not yet, and the
operations on builds and builders)."""

from __future__ import annotations

import datetime
from typing import Any, Protocol

import attrs
from twisted.internet import defer

from buildmaster.enums import BuildStatus
from buildmaster.librarian import Librarian
from buildmaster.metrics import Metrics
from buildmaster.model import Builder, BuildQueue, DistroArchSeries, HasId
from buildmaster.store import Store
from buildmaster.web.api.answers import SharedAnswers

__all__ = ["FarmReader", "WebOnlyFarm", "Operations", "ApiLimits", "ApiContext"]


class FarmReader(Protocol):
    """What the master knows that the database does not have yet."""

    @property
    def scans(self) -> bool:
        """Whether this process scans builders at all (``False``: a web-only process)."""

    def live_logtail(self, job_id: int) -> str | None:
        """The newest log tail of a running job, if not yet written to the database."""

    @property
    def scanning(self) -> bool:
        """Whether the scan loop runs."""

    @property
    def last_scan_cycle(self) -> float | None:
        """When (the master's clock) the last scan cycle read the database."""


class WebOnlyFarm:
    """The :class:`FarmReader` of a process that holds no builder (``twistd buildmaster
    --web-only``): it knows nothing the database does not. A running build's log tail is
    the one the scanning master last wrote (every ``logtail_interval`` seconds)."""

    scans = False
    scanning = False
    last_scan_cycle: float | None = None

    def live_logtail(self, job_id: int) -> str | None:
        return None


class Operations(Protocol):
    """The master's operations on builds and builders (:class:`BuilddMaster`'s: each returns
    a Deferred)."""

    def cancel(self, build: HasId | int) -> defer.Deferred[BuildStatus]: ...

    def retry(self, build: HasId | int) -> defer.Deferred[BuildQueue]: ...

    def rescore(self, build: HasId | int, score: int) -> defer.Deferred[BuildQueue]: ...

    def set_manual(self, builder: HasId | int, manual: bool) -> defer.Deferred[Builder]: ...

    def builder_changed(self, builder: HasId | int) -> defer.Deferred[None]: ...

    def addOrUpdateChroot(
        self, distroarchseries: HasId | int, chroot: HasId | int
    ) -> defer.Deferred[DistroArchSeries]: ...


@attrs.frozen
class ApiLimits:
    #: the largest JSON request body
    max_json_body: int = 64 * 1024
    #: the largest .dsc read for parsing
    max_dsc_size: int = 1024 * 1024
    #: how long an upload session (and its unsubmitted files) lives
    upload_lifetime: datetime.timedelta = datetime.timedelta(days=1)
    #: page sizes: the default and the largest a client may ask for
    page_size: int = 50
    max_page_size: int = 1000
    #: seconds between two looks at a followed build (server-sent events)
    follow_interval: float = 1.0
    #: seconds a followed build's stream stays open at most (the client reconnects)
    follow_max: float = 3600.0
    #: seconds a reading of the queue's kinds may be old (a walk through the whole queue)
    queue_max_age: float = 2.0
    #: seconds a forecast of the dispatch order (the queue listing, a waiting build's
    #: position) may be old: a walk through the whole queue and its ordering, seconds of
    #: work at 100,000 waiting jobs; a build not in it gets one at most
    #: ``queue_max_age`` old, and a change through the API a new one
    order_max_age: float = 10.0
    #: seconds an anonymous GET answer is shared with the anonymous requests for the same
    #: target (:mod:`buildmaster.web.api.answers`; 0: each is answered afresh)
    shared_answers: float = 1.0


@attrs.frozen
class ApiContext:
    store: Store
    librarian: Librarian
    #: IReactorTime: the clock of the request handlers (streams, estimates)
    clock: Any
    operations: Operations
    farm: FarmReader
    metrics: Metrics
    limits: ApiLimits = ApiLimits()
    #: anonymous answers shared for ``limits.shared_answers`` seconds
    answers: SharedAnswers = attrs.field(
        default=attrs.Factory(
            lambda self: SharedAnswers(self.clock, self.limits.shared_answers), takes_self=True
        )
    )

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)
