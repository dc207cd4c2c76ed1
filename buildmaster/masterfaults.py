"""The master's own failures: its librarian, its file descriptors, its database, its VM reset
command. They are nobody else's fault.

A builder whose download of a chroot fails because the librarian has lost the chroot's bytes,
or whose connection the master cannot open because it is out of file descriptors, is not a
broken builder, and the build it was given is not a broken build. Such a failure is a
:class:`MasterFault`: it charges neither builder nor build. The build waits (its job is
suspended, with the reason, and resumed after a delay that grows while the cause lasts:
:meth:`FaultLog.report`), the builder stays in service, and the operator is told once per
cause (:class:`FaultLog`: one ERROR when it starts, one again every ``repeat`` seconds while
it lasts, saying how many times it struck, and one INFO when it is over), not once per
builder and scan.

How a failure is recognised as the master's:

* a connection the master cannot open for lack of file descriptors (or kernel memory):
  ``connect()`` failing with EMFILE, ENFILE, ENOBUFS or ENOMEM (:func:`shortage`);
* a file a builder could not fetch that the librarian cannot serve: looked at right then,
  on the master's side (:func:`librarian_trouble`: expired, bytes missing or of the wrong
  size, or unreadable). A file the librarian can serve was the builder's problem;
* the librarian failing to store a build's results (a disk, a directory, a full file
  system), anything the database layer raises, and a VM reset command that is missing or
  not executable (:mod:`buildmaster.vmreset`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from typing import Any

import attrs
from twisted.internet import error as twisted_error
from twisted.logger import ILogObserver, Logger, LogLevel
from zope.interface import implementer

from buildmaster.librarian.errors import LibrarianError
from buildmaster.librarian.storage import SizeMismatch
from buildmaster.model import LibraryFile
from buildmaster.policy import probe_delay
from buildmaster.store.database import DatabaseError

__all__ = [
    "DATABASE",
    "FILE_DESCRIPTORS",
    "LIBRARIAN",
    "VM_RESET_COMMAND",
    "DroppedConnectionWatch",
    "FaultLog",
    "MasterFault",
    "classify",
    "librarian_trouble",
    "shortage",
]

#: holds back every dispatch while it lasts (each would fail the same way)
FILE_DESCRIPTORS = "file descriptors"
#: holds nothing back (a claim is a statement: it fails by itself while the database is away)
DATABASE = "database"
#: holds back the dispatches to virtualized builders
VM_RESET_COMMAND = "VM reset command"
#: the librarian's storage (results not stored)
LIBRARIAN = "librarian"

_SHORTAGE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class MasterFault(Exception):
    """The master's side failed: neither the builder nor the build is to blame.

    :ivar cause: what failed, one key per thing an operator fixes (``"file descriptors"``,
        ``"librarian file 42"``): reports are made once per cause.
    :ivar level: how loud the report is: ``warn`` when the cause was reported as an error
        already where it happened (the librarian reports a file whose bytes are damaged).
    """

    def __init__(self, cause: str, message: str, level: LogLevel = LogLevel.error) -> None:
        super().__init__(message)
        self.cause = cause
        self.level = level

    @property
    def holds_back(self) -> str | None:
        """Which dispatches wait while it lasts: ``"all"``, ``"virtualized"`` or ``None``
        (only the builds that need what failed)."""
        if self.cause == FILE_DESCRIPTORS:
            return "all"
        if self.cause == VM_RESET_COMMAND:
            return "virtualized"
        return None


def _errno_of(exc: BaseException) -> int | None:
    if isinstance(exc, twisted_error.ConnectError):
        code = getattr(exc, "osError", None)
        return code if isinstance(code, int) else None
    if isinstance(exc, OSError):
        return exc.errno
    return None


def shortage(exc: BaseException, doing: str = "") -> MasterFault | None:
    """A :class:`MasterFault` when ``exc`` says the master is out of file descriptors (or
    kernel memory for sockets), ``None`` otherwise.

    :param doing: what failed, for the message (``"connecting to bob"``).
    """
    code = _errno_of(exc)
    if code not in _SHORTAGE:
        return None
    assert code is not None
    what = f" ({doing})" if doing else ""
    return MasterFault(
        FILE_DESCRIPTORS,
        f"the master is out of file descriptors{what}: {errno.errorcode[code]}"
        f" ({os.strerror(code)}); raise its limit of open files (ulimit -n, systemd's"
        " LimitNOFILE) or give it fewer builders",
    )


def classify(exc: BaseException) -> MasterFault | None:
    """The :class:`MasterFault` an error that escaped a scan stands for, if it is one: the
    database's errors, the librarian's, and the master's own I/O (``OSError``)."""
    if isinstance(exc, MasterFault):
        return exc
    if isinstance(exc, DatabaseError):
        return MasterFault(DATABASE, f"database error: {exc}")
    cause: BaseException | None = exc
    while cause is not None:  # e.g. a librarian upload that failed for want of descriptors
        fault = shortage(cause)
        if fault is not None:
            return fault
        cause = cause.__cause__
    if isinstance(exc, LibrarianError | OSError):
        return MasterFault(
            LIBRARIAN,
            f"the librarian cannot store build results: {exc}; the builds stay on their"
            " builders and are collected once it can",
        )
    return None


async def librarian_trouble(
    librarian: Any, files: Iterable[LibraryFile], since: int | None = None
) -> MasterFault | None:
    """Whether the librarian can serve ``files`` (a builder failed to fetch them): a
    :class:`MasterFault` for the first it could not, or cannot, ``None`` when it served
    them all that were asked for and can serve them.

    :param since: the librarian's :attr:`~buildmaster.librarian.Librarian.serving_mark`
        when the builder was asked to fetch them: a failure of the librarian's own to serve
        one of them since then (damaged bytes, out of file descriptors, its database away),
        or connections closed unread for lack of file descriptors since then, is the
        master's, whatever the file looks like now.

    Then looks at the files on the master's side: expired, bytes missing or of the wrong
    size (reported by the librarian as corrupt, once), unreadable.
    """
    files = list(files)
    if since is not None and librarian.dropped_connections_since(since):
        # the builder's request may never have reached the librarian: it was closed at accept
        return shortage(
            OSError(errno.EMFILE, os.strerror(errno.EMFILE)), "closing builders' downloads unread"
        )
    for file in files:
        failed = librarian.serving_failure(file.id, since) if since is not None else None
        if failed is None:
            continue
        name = f"{file.filename} (librarian file {file.id})"
        if failed.errno is not None:
            fault = shortage(OSError(failed.errno, os.strerror(failed.errno)), f"serving {name}")
            if fault is not None:
                return fault
        return MasterFault(
            f"librarian file {file.id}",
            f"the librarian could not serve {name}: {failed.why}",
            # damaged bytes were reported by the librarian as an error already
            level=LogLevel.warn if failed.damaged else LogLevel.error,
        )
    for file in files:
        cause = f"librarian file {file.id}"
        name = f"{file.filename} (librarian file {file.id})"
        if librarian.is_expired(file):
            return MasterFault(cause, f"the librarian cannot serve {name}: it has expired")
        try:
            fd = await librarian.open_content(file)
        except (FileNotFoundError, SizeMismatch) as e:
            why = "its bytes are missing" if isinstance(e, FileNotFoundError) else str(e)
            librarian.report_corrupt(file, f"{why}; not served")
            return MasterFault(
                cause,
                f"the librarian cannot serve {name}: {why} (see the librarian's error)",
                level=LogLevel.warn,
            )
        except OSError as e:
            return shortage(e, f"opening {name}") or MasterFault(
                cause, f"the librarian cannot read {name}: {e}"
            )
        os.close(fd)
    return None


@attrs.define
class _Cause:
    first: float
    last_report: float
    count: int = 1
    attempts: int = 0
    retry_at: float = 0.0


class FaultLog:
    """The master's failures, one report per cause, and how long the work they hold up waits.

    :param clock: IReactorTime.
    :param repeat: seconds between two reports of a cause that lasts.
    :param retry_initial: seconds the first wait lasts; it doubles while the cause lasts,
        up to ``retry_max``.
    """

    _log = Logger()

    def __init__(
        self,
        clock: Any,
        repeat: float = 600.0,
        retry_initial: float = 15.0,
        retry_max: float = 600.0,
    ) -> None:
        self._clock = clock
        self.repeat = repeat
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._causes: dict[str, _Cause] = {}
        self._holding: dict[str, str] = {}

    @property
    def active(self) -> bool:
        """Whether any cause was reported and is not known to be over (a cheap test for
        the paths every build takes)."""
        return bool(self._causes)

    @property
    def causes(self) -> frozenset[str]:
        """The causes that were reported and are not known to be over."""
        return frozenset(self._causes)

    def report(self, fault: MasterFault) -> float:
        """Note ``fault``; log it if it is new, or if its last report is ``repeat`` seconds
        old. Returns how long the work it held up should wait before it is tried again: the
        current wait of its cause (the first lasts ``retry_initial`` seconds; each failure
        after a wait is over starts one twice as long, up to ``retry_max``)."""
        now = self._clock.seconds()
        cause = self._causes.get(fault.cause)
        if cause is None:
            cause = self._causes[fault.cause] = _Cause(first=now, last_report=now)
            self._log.emit(
                fault.level,
                "{message}; no builder or build is blamed, the work waits and is tried again",
                message=str(fault),
                cause=fault.cause,
            )
        else:
            cause.count += 1
            if now - cause.last_report >= self.repeat:
                cause.last_report = now
                self._log.emit(
                    fault.level,
                    "Still: {message} ({count} times in {minutes:.0f} min)",
                    message=str(fault),
                    count=cause.count,
                    minutes=(now - cause.first) / 60,
                    cause=fault.cause,
                )
        if now >= cause.retry_at:
            # a new wait (the first, or the last one was over and it failed again): longer
            cause.retry_at = now + probe_delay(cause.attempts, self.retry_initial, self.retry_max)
            cause.attempts += 1
        if fault.holds_back is not None:
            self._holding[fault.cause] = fault.holds_back
        return cause.retry_at - now

    def holds_back(self, virtualized: bool) -> str | None:
        """The cause that holds back a dispatch to a builder (of this kind) now, if any."""
        if not self._holding:
            return None
        now = self._clock.seconds()
        for name, scope in self._holding.items():
            if scope == "virtualized" and not virtualized:
                continue
            if self._causes[name].retry_at > now:
                return name
        return None

    def over(self, causes: Iterable[str]) -> None:
        """These causes are over (what they held up worked): say so, and forget them."""
        for name in causes:
            cause = self._causes.pop(name, None)
            if cause is None:
                continue
            self._holding.pop(name, None)
            self._log.info(
                "Over: {cause} ({count} failures in {minutes:.1f} min)",
                cause=name,
                count=cause.count,
                minutes=(self._clock.seconds() - cause.first) / 60,
            )


#: what Twisted's listening ports log when, out of file descriptors, they accept and at once
#: close the connections waiting (``twisted.internet.tcp._accept``)
_DROPPED_FORMAT = "EMFILE recovery: Closed socket from {address}"


@implementer(ILogObserver)
class DroppedConnectionWatch:
    """A log observer that tells the librarian when the process closed accepted connections
    unread for lack of file descriptors, so that a builder whose download was cut that way is
    not blamed for it (:func:`librarian_trouble`). Observe with
    ``globalLogPublisher.addObserver(watch)``; descriptors are the process's, so any of its
    listening ports closing connections counts."""

    def __init__(self, librarian: Any) -> None:
        self._librarian = librarian

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_format") == _DROPPED_FORMAT:
            self._librarian.note_dropped_connections()
