"""Collecting a finished build: from the builder's WAITING to its next job.

Long: the whole collection of a finished build is here, in the order it happens, so that
one module is read to change it: what the builder's result means for the build
(:data:`RESULT_STATES`), the results refused or accepted, the log and files streamed into the
librarian, the end of the build recorded, the builder cleaned and given its next job.

1. :func:`collect` reads the result. BUILDERFAIL is the builder's failure (judged, the job
   requeued); GIVENBACK and an unexpected ABORTED requeue the job; anything else (and the
   end of a cancel) is a final state: :func:`store_results`.
2. :func:`store_results` checks the filemap, fetches the log and the result files
   (:class:`ResultCollector`) and records the end of the build (``finish``), which links
   what was stored: until then it is provisional and expires, so a master that dies half-way
   leaves nothing permanent behind, and the next collection ends the same way.
3. :func:`clean_and_next` sends ``clean()`` and claims the builder's next job in the same
   breath; the job is dispatched (:mod:`buildmaster.scan.dispatch`) once the builder is IDLE.

The downloads (:class:`ResultCollector`). Files are streamed from the builder's ``/filecache`` straight into librarian uploads: written
to disk as they arrive, never held in memory whole, size-capped. A result file is verified
against the SHA-1 of the builder's filemap by the upload before anything is recorded. The
log has no such checksum (the builder, launchpad-buildd as slavesim, serves its ``buildlog``
file with its length only): it is stored only when it arrived whole (its length declared and
all of it received, see :meth:`BuilderClient.fetch_file`), and the librarian records the
hashes of what it stored, as for every file. The log is gzip-compressed on the way (in the
librarian's thread pool, a megabyte at a time, so compressing a big log never stalls the
reactor).

A build's downloads run a few at a time (:attr:`CollectLimits.max_downloads`, the log
first), and its result files share one budget of bytes (:attr:`CollectLimits.max_total_size`):
the first piece that would go beyond it is refused unwritten, the other downloads in flight
are stopped and the rest are not started, and the build's results are refused. Each download
is paced, not timed as a whole: see :meth:`BuilderClient.fetch_file`.
"""

from __future__ import annotations

import datetime
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from buildmaster.builderclient import (
    DEFAULT_DOWNLOAD_IDLE_TIMEOUT,
    DEFAULT_DOWNLOAD_MIN_RATE,
    BuilderClient,
    FileMissing,
    FileTooLarge,
)
from buildmaster.config import MasterConfig
from buildmaster.enums import BuilderResult, BuildQueueStatus, BuildStatus
from buildmaster.httpclient import Sink
from buildmaster.librarian import ContentMismatch
from buildmaster.librarian import FileTooLarge as LibrarianFileTooLarge
from buildmaster.masterfaults import LIBRARIAN
from buildmaster.model import BuilderSnapshot
from buildmaster.policy import builder_may_take_jobs
from buildmaster.protocol import (
    BuilderProtocolError,
    FilemapLimits,
    ResultRefused,
    StatusReport,
    check_filemap,
)
from buildmaster.scan.context import Scope
from buildmaster.scan.dispatch import claim_next, dispatch, now, reset_if_dirty
from buildmaster.scan.judge import failed
from buildmaster.scan.machine import clean, ready
from buildmaster.store.jobs import Claimed

__all__ = [
    "RESULT_STATES",
    "Collected",
    "CollectLimits",
    "ResultCollector",
    "clean_and_next",
    "collect",
    "collect_limits",
    "log_filename",
    "store_results",
]

_log = Logger()

_COMPRESS_BATCH = 1024 * 1024
#: Less than this is compressed on the reactor thread (cheaper than a thread hop).
_INLINE_COMPRESS = 64 * 1024
GiB = 1024 * 1024 * 1024


#: What a finished build's result means for the build.
RESULT_STATES = {
    BuilderResult.OK: BuildStatus.FULLYBUILT,
    BuilderResult.PACKAGEFAIL: BuildStatus.FAILEDTOBUILD,
    BuilderResult.DEPFAIL: BuildStatus.MANUALDEPWAIT,
    BuilderResult.CHROOTFAIL: BuildStatus.CHROOTWAIT,
    BuilderResult.ABORTED: BuildStatus.CANCELLED,
}


# -- the collection, step by step ---------------------------------------------------------


async def collect(s: Scope, snap: BuilderSnapshot, status: StatusReport) -> None:
    """The builder is WAITING with the build the database gives it: collect it (see the
    module docstring), then clean the builder and give it its next job."""
    builder, job, build = snap.builder, snap.job, snap.build
    assert job is not None and build is not None and status.build_status is not None
    services, memory = s.services, s.memory
    seen = services.clock.seconds()
    result = status.build_status
    cancelling = job.status is BuildQueueStatus.CANCELLING
    memory.abort_sent.pop(job.id, None)
    if not cancelling and result is BuilderResult.BUILDERFAIL:
        await failed(
            s,
            builder,
            job,
            BuilderProtocolError("the builder reported BUILDERFAIL"),
            must_leave=True,
        )
        await clean(s)
        await ready(s)
        return
    if not cancelling and result in (BuilderResult.GIVENBACK, BuilderResult.ABORTED):
        why = (
            "given back by the builder"
            if result is BuilderResult.GIVENBACK
            else "aborted unexpectedly"
        )
        await services.store.jobs.requeue(job, builder, why, kind="given-back")
    else:
        state = BuildStatus.CANCELLED if cancelling else RESULT_STATES[result]
        await store_results(s, snap, status, state)
        if services.faults.active:  # the librarian stored what it had to
            services.faults.over([LIBRARIAN])
    await clean_and_next(s)
    if memory.building is not None and memory.building[1] >= seen:  # its next build
        services.metrics.handed_over(memory.building[1] - seen)


async def store_results(
    s: Scope, snap: BuilderSnapshot, status: StatusReport, state: BuildStatus
) -> None:
    """Fetch the log and the result files into the librarian (a few at a time, within
    the build's budget: :meth:`ResultCollector.collect`), then record the end of the
    build. What is stored stays provisional (it expires) until ``finish`` links it, so a
    master that dies half-way leaves nothing permanent behind."""
    builder, job, build = snap.builder, snap.job, snap.build
    assert job is not None and build is not None
    services = s.services
    config, started = services.config, services.clock.seconds()
    jobs = services.store.jobs
    ctx = s.memory.contexts.get(build.id) or await jobs.context(build.id)
    restricted = ctx.archive.private
    collector = ResultCollector(services.librarian, s.client, collect_limits(config), now(s))
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
    finished = await jobs.finish(
        job,
        builder,
        state,
        now(s),
        log=log,
        files=files,
        dependencies=status.dependencies if state is BuildStatus.MANUALDEPWAIT else None,
        reason=reason,
    )
    s.memory.contexts.pop(build.id, None)
    services.metrics.collected(services.clock.seconds() - started, collector.stored)
    if finished:
        _log.info(
            "{build} on {builder}: {state}",
            build=build.cookie,
            builder=builder.name,
            state=state.name,
        )


async def clean_and_next(s: Scope) -> None:
    """``clean()`` the builder and give it its next job. The job is claimed in the
    database while ``clean()`` is on its way (the two wait on different things); it is
    dispatched once the builder is IDLE, or released, without blame, if the clean fails."""
    services = s.services
    if not builder_may_take_jobs(s.builder) or services.stopping:
        await clean(s)
        await ready(s)
        return
    claiming = defer.Deferred.fromCoroutine(claim_next(s))
    try:
        await clean(s)
    except BaseException:
        await _release_early_claim(s, claiming, "the builder could not be cleaned")
        raise
    claimed = await claiming
    if claimed is None:
        await reset_if_dirty(s)
        await ready(s)
        return
    if services.stopping:
        await services.store.jobs.release_claim(
            claimed.job, s.builder, "the master stopped before the dispatch"
        )
        return
    await dispatch(s, claimed.job, claimed.context)


async def _release_early_claim(
    s: Scope, claiming: defer.Deferred[Claimed | None], reason: str
) -> None:
    try:
        claimed = await claiming
    except Exception:
        return  # the claim failed: nothing to give back
    if claimed is not None:
        await s.services.store.jobs.release_claim(claimed.job, s.builder, reason)


# -- the downloads --------------------------------------------------------------------------


@attrs.frozen
class CollectLimits:
    """What one build may hand back, and how it is fetched."""

    #: the build log (larger: cut there, and kept with a note)
    max_log_size: int = 1 * GiB
    #: one result file (larger: the build's results are refused)
    max_file_size: int = 8 * GiB
    #: the result files together (more: the build's results are refused)
    max_total_size: int = 8 * GiB
    #: downloads from the builder at once, the log's included
    max_downloads: int = 4
    #: seconds without a byte after which a download has stalled (the builder is blamed)
    idle_timeout: float = DEFAULT_DOWNLOAD_IDLE_TIMEOUT
    #: bytes a second a download must keep up on average (after the call timeout)
    min_rate: float = DEFAULT_DOWNLOAD_MIN_RATE


@attrs.frozen
class Collected:
    """What :meth:`ResultCollector.collect` stored."""

    #: the log's alias (``None``: not asked for, or the builder has none)
    log: int | None
    #: why the log is not whole (it was cut at the limit)
    log_note: str | None
    #: (file name, alias) of every result file, in the order given; empty when refused
    files: tuple[tuple[str, int], ...]
    #: why the results were refused (what was stored of them expires)
    refused: str | None


def collect_limits(config: MasterConfig) -> CollectLimits:
    """The limits a master's configuration sets."""
    return CollectLimits(
        max_log_size=config.max_log_size,
        max_file_size=config.max_result_file_size,
        max_total_size=config.max_result_bytes,
        max_downloads=config.result_downloads,
        idle_timeout=config.download_idle_timeout,
        min_rate=config.download_min_rate,
    )


class _Budget:
    """The bytes the result files of one build may still take."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.left = total

    def take(self, size: int) -> None:
        if size > self.left:
            self.left = 0
            raise ResultRefused(f"the result files are larger than {self.total} bytes together")
        self.left -= size


def log_filename(
    distribution: str, series: str, arch: str, name: str, version: str, state: str
) -> str:
    """``buildlog_ubuntu-hoary-i386.alsa-utils_1.0.9a-4ubuntu1_FULLYBUILT.txt.gz``."""
    version = version.replace(":", "%3A")
    return f"buildlog_{distribution}-{series}-{arch}.{name}_{version}_{state}.txt.gz"


class _GzipSink:
    """Compresses what it is given into an upload, a batch at a time, off the reactor thread."""

    def __init__(self, upload: Any, run_in_thread: Any) -> None:
        self._upload = upload
        self._run = run_in_thread
        # wbits 31: a gzip container that `zcat` and browsers read
        self._compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        self._pending: list[bytes] = []
        self._pending_size = 0
        self.raw_size = 0

    def __call__(self, data: bytes) -> defer.Deferred[None] | None:
        self.raw_size += len(data)
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size < _COMPRESS_BATCH:
            return None
        return defer.Deferred.fromCoroutine(self._flush())

    async def _flush(self) -> None:
        batch, self._pending, self._pending_size = b"".join(self._pending), [], 0
        if len(batch) < _INLINE_COMPRESS:
            compressed = self._compressor.compress(batch)  # a fraction of a millisecond
        else:
            compressed = await self._run(self._compressor.compress, batch)
        if compressed:
            await self._upload.write(compressed)

    async def finish(self, trailer: bytes = b"") -> None:
        if trailer:
            self._pending.append(trailer)
        await self._flush()
        tail = self._compressor.flush()
        if tail:
            await self._upload.write(tail)


#: A result stays provisional (it expires) until it is linked to its build: a master that
#: dies in between leaves nothing the garbage collector will not clear.
PROVISIONAL = datetime.timedelta(days=1)


class ResultCollector:
    """Stores one builder's log and result files in the librarian.

    What it stores expires after :data:`PROVISIONAL` unless the caller links it to its build
    (which clears the expiry), so an interrupted collection leaves no permanent orphan.
    """

    def __init__(
        self, librarian: Any, client: BuilderClient, limits: CollectLimits, now: datetime.datetime
    ) -> None:
        self._librarian = librarian
        self._client = client
        self._limits = limits
        self._expires = now + PROVISIONAL
        #: bytes stored so far (the compressed log and the result files)
        self.stored = 0
        self._budget = _Budget(limits.max_total_size)
        #: downloads in flight: whether each is the log's
        self._fetches: dict[defer.Deferred[int], bool] = {}
        #: why the results are refused (the log is still fetched)
        self._refused: ResultRefused | None = None
        #: the first other failure: the collection is over (it will be made again)
        self._failed: Failure | None = None

    async def collect(
        self, files: Mapping[str, str], log_name: str | None, restricted: bool
    ) -> Collected:
        """Fetch the log (when ``log_name`` is given) and the result files (name: SHA-1),
        at most ``max_downloads`` at once, the log first.

        Once the results are refused, the other result downloads are stopped and no more
        are started (the log is still fetched); once a download fails otherwise, all of
        them are stopped.

        :returns: what was stored; results refused for the build's fault (too large, too
            many bytes together, not the promised bytes, missing) say so in ``refused``.
        :raises BuilderError: the builder could not be read (collect again later).
        """
        jobs: list[tuple[str, str | None]] = list(files.items())
        if log_name is not None:
            jobs.insert(0, (log_name, None))
        outcomes: list[Any] = [None] * len(jobs)
        pending = iter(enumerate(jobs))
        workers = [
            defer.Deferred.fromCoroutine(self._work(pending, restricted, outcomes))
            for _ in range(min(self._limits.max_downloads, len(jobs)))
        ]
        await defer.gatherResults(workers, consumeErrors=True)
        if self._failed is not None:
            self._failed.raiseException()  # e.g. the builder went away: collect again later
        log, log_note = outcomes.pop(0) if log_name is not None else (None, None)
        if self._refused is not None:
            return Collected(log, log_note, (), str(self._refused))
        stored = tuple((name, int(alias)) for name, alias in zip(files, outcomes, strict=True))
        return Collected(log, log_note, stored, None)

    async def _work(
        self,
        pending: Iterator[tuple[int, tuple[str, str | None]]],
        restricted: bool,
        outcomes: list[Any],
    ) -> None:
        """Take the next download until none is left (one of ``max_downloads`` workers)."""
        for index, (name, sha1) in pending:
            if self._failed is not None or (sha1 is not None and self._refused is not None):
                continue
            try:
                if sha1 is None:
                    outcomes[index] = await self.store_log(name, restricted)
                else:
                    outcomes[index] = await self.store_file(name, sha1, restricted)
            except ResultRefused as e:
                if self._refused is None:
                    self._refused = e
                    self._stop(the_log_too=False)  # their bytes are of no use now
            except Exception:  # (CancelledError included: stopped by _stop)
                if sha1 is not None and self._refused is not None:
                    continue  # the results are refused, whatever else befell them
                if self._failed is None:
                    self._failed = Failure()
                    self._stop(the_log_too=True)

    def _stop(self, the_log_too: bool) -> None:
        for fetch, is_log in list(self._fetches.items()):
            if the_log_too or not is_log:
                fetch.cancel()

    async def _fetch(self, name: str, sink: Sink, max_size: int, is_log: bool) -> int:
        """``BuilderClient.fetch_file``, paced, and stopped by :meth:`_stop`."""
        fetch = defer.Deferred.fromCoroutine(
            self._client.fetch_file(
                name, sink, max_size, self._limits.idle_timeout, self._limits.min_rate
            )
        )
        self._fetches[fetch] = is_log
        try:
            return await fetch
        finally:
            del self._fetches[fetch]

    async def store_log(self, filename: str, restricted: bool) -> tuple[int | None, str | None]:
        """Fetch ``/filecache/buildlog`` into the librarian (compressed).

        A log larger than the limit is cut there, and says so at its end. A log whose
        transfer broke off (or that came without its length) is not stored.

        :returns: ``(alias id, note)``; the alias is ``None`` when the builder has no log
            (HTTP 404); the note explains a truncation.
        :raises BuilderError: when the builder cannot be reached (collect again later).
        """
        upload = self._librarian.new_upload(
            filename, "application/x-gzip", restricted=restricted, expires=self._expires
        )
        sink = _GzipSink(upload, self._librarian.run_in_thread)
        note = None
        try:
            try:
                await self._fetch("buildlog", sink, self._limits.max_log_size, is_log=True)
            except FileMissing:
                await upload.abort()
                return None, None
            except FileTooLarge:
                note = f"build log larger than {self._limits.max_log_size} bytes: truncated"
            await sink.finish(f"\n[buildmaster: {note}]\n".encode() if note else b"")
            alias = await upload.finish()
            self.stored += upload.received
            return alias, note
        except BaseException:
            await upload.abort()
            raise

    async def store_file(self, filename: str, sha1: str, restricted: bool) -> int:
        """Fetch one result file into the librarian, verifying its SHA-1.

        :raises ResultRefused: when the bytes do not match the SHA-1, are too large, or are
            not on the builder.
        :raises BuilderError: when the builder cannot be reached.
        """
        upload = self._librarian.new_upload(
            filename,
            "application/octet-stream",
            restricted=restricted,
            expires=self._expires,
            expected_sha1=sha1,
            max_size=self._limits.max_file_size,
        )
        too_large = f"result file {filename!r} is larger than {self._limits.max_file_size} bytes"
        budget = self._budget

        def write(data: bytes) -> Any:
            budget.take(len(data))  # beyond the build's budget: refused before it is written
            return upload.write(data)

        try:
            await self._fetch(sha1, write, self._limits.max_file_size, is_log=False)
            alias = int(await upload.finish())
            self.stored += upload.received
            return alias
        except (FileTooLarge, LibrarianFileTooLarge):
            await upload.abort()
            raise ResultRefused(too_large) from None
        except FileMissing:
            await upload.abort()
            raise ResultRefused(
                f"result file {filename!r} ({sha1}) is not on the builder"
            ) from None
        except ContentMismatch as e:
            await upload.abort()
            raise ResultRefused(f"result file {filename!r} refused: {e}") from None
        except BaseException:
            await upload.abort()
            raise
