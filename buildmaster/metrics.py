"""The master's own measurements, for Prometheus (``/metrics``).

A :class:`Metrics` holds its instruments in a registry of its own (never the process-wide
default), so that two masters in one process do not clash. The master and the scanner call
its methods at the few places where something is measured (a scan, a collection, a
hand-over, a builder failure, a file a builder fetched or had in its cache, a database or
librarian error); what the database already knows (builders by state, the queue, finished
builds, dispatch latency) is read from it by :mod:`buildmaster.web.metrics`, into the same
registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from buildmaster.builderclient import BuilderFault, BuilderUnreachable
from buildmaster.protocol import BuilderProtocolError
from buildmaster.vmreset import VMResetFailed

__all__ = ["Metrics", "failure_kind", "LATENCY_BUCKETS", "FILE_KINDS"]

#: seconds: from a few milliseconds (a hand-over on a quiet farm) to an hour (a long queue)
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0,
)  # fmt: skip
#: the kinds of file a dispatch sends a builder to fetch
FILE_KINDS = ("chroot", "source")
#: the methods the API's requests are counted by (any other is counted as ``OTHER``)
_API_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_BYTES_BUCKETS = (1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10)


def failure_kind(error: BaseException) -> str:
    """The label of a builder failure: ``unreachable``, ``fault``, ``protocol``,
    ``vm-reset`` or ``other``."""
    if isinstance(error, VMResetFailed):
        return "vm-reset"
    if isinstance(error, BuilderUnreachable):
        return "unreachable"
    if isinstance(error, BuilderFault):
        return "fault"
    if isinstance(error, BuilderProtocolError):
        return "protocol"
    return "other"


class Metrics:
    """The master's instruments, in ``registry`` (a new one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.scan_seconds = Histogram(
            "buildmaster_scan_seconds",
            "One scan of one builder: its status poll and what followed (dispatch,"
            " collection, judgement).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.handover_seconds = Histogram(
            "buildmaster_handover_seconds",
            "From a finished build seen on its builder to the builder's next build() answered.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.collection_seconds = Histogram(
            "buildmaster_collection_seconds",
            "Fetching a finished build's log and results into the librarian, and recording"
            " its end.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.collection_bytes = Histogram(
            "buildmaster_collection_bytes",
            "Bytes stored by one collection (the compressed log and the result files).",
            buckets=_BYTES_BUCKETS,
            registry=r,
        )
        self.builder_failures = Counter(
            "buildmaster_builder_failures",
            "Builder failures counted against builders, by kind.",
            ["kind"],
            registry=r,
        )
        self.database_errors = Counter(
            "buildmaster_database_errors",
            "Work interrupted by the database (unavailable, refused), by where.",
            ["where"],
            registry=r,
        )
        self.librarian_errors = Counter(
            "buildmaster_librarian_errors",
            "Files the librarian could not store, by where.",
            ["where"],
            registry=r,
        )
        self.api_requests = Counter(
            "buildmaster_api_requests",
            "Requests to the operator API, by method and status class.",
            ["method", "status"],
            registry=r,
        )
        self.builder_files = Counter(
            "buildmaster_builder_files",
            "Files a dispatch made sure a builder has (ensurepresent), by kind (chroot,"
            " source) and whether the builder fetched them (true), had them in its cache"
            " (false) or said something else (unknown).",
            ["kind", "fetched"],
            registry=r,
        )
        self.builder_fetched_bytes = Counter(
            "buildmaster_builder_fetched_bytes",
            "Bytes of the files builders said they fetched for a dispatch (their sizes in the"
            " librarian), by kind (chroot, source).",
            ["kind"],
            registry=r,
        )
        for kind in FILE_KINDS:
            self.builder_fetched_bytes.labels(kind)
            for fetched in ("true", "false", "unknown"):
                self.builder_files.labels(kind, fetched)
        for kind in ("unreachable", "fault", "protocol", "vm-reset", "other"):
            self.builder_failures.labels(kind)
        for where in ("scan", "api"):
            self.database_errors.labels(where)
            self.librarian_errors.labels(where)

    def scanned(self, seconds: float) -> None:
        self.scan_seconds.observe(seconds)

    def handed_over(self, seconds: float) -> None:
        self.handover_seconds.observe(seconds)

    def collected(self, seconds: float, size: int) -> None:
        self.collection_seconds.observe(seconds)
        self.collection_bytes.observe(size)

    def builder_failed(self, error: BaseException) -> None:
        self.builder_failures.labels(failure_kind(error)).inc()

    def file_ensured(self, kind: str, fetched: bool | None, size: int) -> None:
        """A builder has a file for a dispatch: it ``fetched`` it (then ``size`` bytes), had
        it in its cache, or did not say (``None``)."""
        label = "unknown" if fetched is None else "true" if fetched else "false"
        self.builder_files.labels(kind, label).inc()
        if fetched:
            self.builder_fetched_bytes.labels(kind).inc(size)

    def database_error(self, where: str) -> None:
        self.database_errors.labels(where).inc()

    def librarian_error(self, where: str) -> None:
        self.librarian_errors.labels(where).inc()

    def api_request(self, method: str, status: int) -> None:
        """A request answered: counted by method (one the API knows, else ``OTHER``: the
        method is the client's, and every new label value would be kept for good) and
        status class."""
        known = method if method in _API_METHODS else "OTHER"
        self.api_requests.labels(known, f"{status // 100}xx").inc()
