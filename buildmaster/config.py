"""The master's settings, as one frozen value (built from the command line by tap.py)."""

from __future__ import annotations

import attrs

from buildmaster.buildargs import ArchiveURLs
from buildmaster.builderclient import (
    DEFAULT_DOWNLOAD_IDLE_TIMEOUT,
    DEFAULT_DOWNLOAD_MIN_RATE,
    DEFAULT_TRUSTED_TIMEOUT,
    DEFAULT_VIRTUALIZED_TIMEOUT,
)
from buildmaster.policy import FailurePolicy
from buildmaster.vmreset import check_template

__all__ = ["MasterConfig"]

GiB = 1024 * 1024 * 1024


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


def _vm_resume_command(
    instance: object, attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is not None:
        check_template(value)


def _not_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must not be negative, not {value!r}")


@attrs.frozen
class MasterConfig:
    #: seconds between scans of every builder (events dispatch in between)
    scan_interval: float = attrs.field(default=15.0, validator=_positive)
    #: XML-RPC timeout for trusted builders (ensurepresent gets 20 times this)
    socket_timeout: float = attrs.field(default=DEFAULT_TRUSTED_TIMEOUT, validator=_positive)
    #: XML-RPC timeout for virtualized builders
    virtualized_socket_timeout: float = attrs.field(
        default=DEFAULT_VIRTUALIZED_TIMEOUT, validator=_positive
    )
    #: the command that resets a virtualized builder's VM, with %(vm_host)s and/or
    #: %(buildd_name)s (:mod:`buildmaster.vmreset`; a bad template is refused here)
    vm_resume_command: str | None = attrs.field(default=None, validator=_vm_resume_command)
    vm_resume_timeout: float = attrs.field(default=300.0, validator=_positive)
    #: a cancelled build that has not aborted after this long is a builder failure
    cancel_timeout: float = attrs.field(default=180.0, validator=_positive)
    #: a builder that stays ABORTING, or BUILDING what it was told to abort, this long is
    #: stuck: a builder failure (a virtualized builder gets its VM reset instead). Longer
    #: than the real daemon's own 120 s for killing an aborted build
    stuck_timeout: float = attrs.field(default=300.0, validator=_positive)
    failure_policy: FailurePolicy = FailurePolicy()
    #: a job that failed on a builder is not given to that builder again for this long
    retry_elsewhere_for: float = attrs.field(default=600.0, validator=_positive)
    archive_urls: ArchiveURLs = ArchiveURLs()
    #: seconds between batched writes of the log tails
    logtail_interval: float = attrs.field(default=2.0, validator=_positive)
    #: a building builder is polled every ``fraction`` x the time its build has run, at
    #: least every scan interval and at most every ``max`` seconds (fraction 0: every scan)
    building_poll_fraction: float = attrs.field(default=0.1, validator=_not_negative)
    building_poll_max: float = attrs.field(default=30.0, validator=_positive)
    #: finished builds collected at once (fetch, store, clean, next dispatch); beyond it the
    #: routine polls of building builders wait their turn (:mod:`buildmaster.admission`).
    #: 0 (the default): no limit, the most builds per second when the master is saturated;
    #: a limit bounds the time from a finished build to the next ``build()`` instead
    max_collections: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    #: a collection or a poll counts against ``max_collections`` for at most this long
    collection_lease: float = attrs.field(default=2.0, validator=_positive)
    #: a job held up by a failure of the master's own side (its librarian, its file
    #: descriptors, its database, its VM reset command) waits this long before it is tried
    #: again, twice as long each time while the cause lasts, up to the ceiling
    fault_retry_initial: float = attrs.field(default=15.0, validator=_positive)
    fault_retry_max: float = attrs.field(default=600.0, validator=_positive)
    #: re-probing of automatically failed builders: first delay and ceiling
    probe_initial_delay: float = attrs.field(default=15.0, validator=_positive)
    probe_max_delay: float = attrs.field(default=600.0, validator=_positive)
    #: limits on what a builder may hand back: the log (cut there), one result file, the
    #: result files of one build together and their number (beyond: FAILEDTOUPLOAD)
    max_log_size: int = attrs.field(default=GiB, validator=attrs.validators.gt(0))
    max_result_file_size: int = attrs.field(default=8 * GiB, validator=attrs.validators.gt(0))
    max_result_bytes: int = attrs.field(default=8 * GiB, validator=attrs.validators.gt(0))
    max_result_files: int = attrs.field(default=1000, validator=attrs.validators.gt(0))
    #: downloads from one builder at once when its build is collected (the log's included)
    result_downloads: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    #: a download from a builder with no byte for this many seconds has stalled
    download_idle_timeout: float = attrs.field(
        default=DEFAULT_DOWNLOAD_IDLE_TIMEOUT, validator=_positive
    )
    #: bytes a second a download from a builder must keep up on average: each byte moves its
    #: deadline 1/rate seconds later (the first socket timeout is free)
    download_min_rate: float = attrs.field(default=DEFAULT_DOWNLOAD_MIN_RATE, validator=_positive)
    #: public URL of a build, with {build_id} (sent to builders as build_url)
    build_url_template: str | None = None
    #: each builder is worked by one master at a time (PostgreSQL advisory locks)
    exclusive_builders: bool = True
    #: seconds a master works its builders past the last statement its database session
    #: answered (:mod:`buildmaster.ownership`); the server keeps a silent session for twice
    #: as long, so the master has stopped before another can take its builders
    session_lease: float = attrs.field(default=10.0, validator=_positive)

    def timeout_for(self, virtualized: bool) -> float:
        return self.virtualized_socket_timeout if virtualized else self.socket_timeout
