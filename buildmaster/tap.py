"""``twistd buildmaster``: the command line, and the only module that imports the reactor.

Long: the command line is one surface (every option, its check, its help), read and checked as
a whole; and this is the only module that may import the reactor.

::

    twistd -n buildmaster --demo                 # embedded PostgreSQL + simulated builders
    twistd -n buildmaster --dsn "host=db dbname=buildmaster" --port tcp:8000 \\
        --librarian-url http://master.example:8000/librarian/ \\
        --vm-resume-command "/usr/local/bin/resume-vm %(vm_host)s %(buildd_name)s"
    twistd -n buildmaster --web-only --dsn "host=db dbname=buildmaster" --port tcp:8080 \\
        --files-dir /srv/buildmaster/files   # the API and pages only: no scans, no builders

How the process ends: a bad option is a usage error (status 1) before anything starts; a
start-up that fails logs one line saying what to fix (``buildmaster cannot start: ...``),
stops what had started and exits with status 1; SIGINT (Ctrl-C) or SIGTERM stops the master
in order and exits with status 0 (the same signal again while it stops is only noted).
"""

from __future__ import annotations

import atexit
import os
import signal
import string
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from psycopg2 import ProgrammingError
from psycopg2.extensions import parse_dsn
from twisted.internet import error
from twisted.logger import Logger
from twisted.python import usage

from buildmaster.buildargs import ArchiveURLs
from buildmaster.config import MasterConfig
from buildmaster.gctuning import tune_garbage_collection
from buildmaster.openfiles import raise_file_limit
from buildmaster.service import BuildmasterService, ServiceSettings
from buildmaster.vmreset import check_template

__all__ = ["Options", "makeService", "check_url"]

_log = Logger()

#: Scan interval without and with --demo (whose builds take seconds).
SCAN_INTERVAL = 15.0
DEMO_SCAN_INTERVAL = 5.0
#: The demo's VMs reset instantly.
DEMO_VM_RESUME_COMMAND = "true %(vm_host)s"
#: The URL options: (fields a template may use, fields it must use).
_ARCHIVE_FIELDS = frozenset({"distribution", "owner", "name"})
URL_OPTIONS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "librarian-url": (frozenset(), frozenset()),
    "build-url": (frozenset({"build_id"}), frozenset({"build_id"})),
    "primary-archive-url": (_ARCHIVE_FIELDS, frozenset()),
    "ppa-url": (_ARCHIVE_FIELDS, frozenset({"owner", "name"})),
    "private-ppa-url": (_ARCHIVE_FIELDS, frozenset({"owner", "name"})),
}


#: the options only a scanning master (or the demo) uses: refused with --web-only
SCANNER_OPTIONS = (
    "scan-interval",
    "building-poll-max",
    "max-collections",
    "socket-timeout",
    "virtualized-socket-timeout",
    "max-result-bytes",
    "max-result-files",
    "result-downloads",
    "download-idle-timeout",
    "download-min-rate",
    "vm-resume-command",
    "vm-resume-timeout",
    "stuck-timeout",
    "session-lease",
    "fault-retry",
    "primary-archive-url",
    "ppa-url",
    "private-ppa-url",
    "build-url",
    "demo-builders",
    "demo-interval",
)


def check_url(option: str, value: str, fields: frozenset[str], required: frozenset[str]) -> None:
    """Refuse (``usage.UsageError``) a URL option that is not an http(s) URL with a host, or
    a template using fields other than ``fields`` or missing one of ``required``."""
    used = set()
    try:
        for _literal, field, spec, conversion in string.Formatter().parse(value):
            if field is None:
                continue
            if field not in fields or spec or conversion:
                known = ", ".join(f"{{{f}}}" for f in sorted(fields)) or "none"
                raise usage.UsageError(
                    f"--{option} {value!r}: unknown field {{{field}}} (known fields: {known})"
                )
            used.add(field)
    except ValueError as e:  # a lone brace
        raise usage.UsageError(
            f"--{option} {value!r}: {e} (write a brace as {{{{ or }}}})"
        ) from None
    missing = sorted(required - used)
    if missing:
        raise usage.UsageError(
            f"--{option} {value!r} does not use " + " and ".join(f"{{{f}}}" for f in missing)
        )
    url = value.format(**{f: "x" for f in fields})
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise usage.UsageError(
            f"--{option} {value!r} is not an http:// or https:// URL with a host"
        )
    try:
        parts.port  # noqa: B018 - only to validate it
    except ValueError as e:
        raise usage.UsageError(f"--{option} {value!r}: {e}") from None
    if option == "private-ppa-url" and (parts.username or parts.password):
        raise usage.UsageError(
            f"--{option} {value!r} must not hold credentials: the master puts each private"
            " archive's own there"
        )


def _seconds(value: str) -> float:
    seconds = float(value)
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{value!r} is not a positive number of seconds")
    return seconds


def _count(value: str) -> int:
    count = int(value)
    if count < 0:
        raise ValueError(f"{value!r} is negative")
    return count


_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _size(value: str) -> int:
    """Bytes: a whole number, optionally with K, M, G or T (powers of 1024; ``8G``)."""
    text = value.strip().upper().removesuffix("IB").removesuffix("B")
    unit = text[-1:] if text[-1:] in _UNITS else ""
    size = int(text.removesuffix(unit)) * _UNITS[unit]
    if size <= 0:
        raise ValueError(f"{value!r} is not a positive size")
    return size


def _positive_count(value: str) -> int:
    count = int(value)
    if count < 1:
        raise ValueError(f"{value!r} is not at least 1")
    return count


def _port(value: str) -> str:
    """A plain port number means TCP on 127.0.0.1; otherwise a strports description."""
    if value.isascii() and value.isdigit():
        return f"tcp:{value}:interface=127.0.0.1"
    return value


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "The build farm master: keeps the queue of builds in PostgreSQL, polls every builder in "
        "parallel, dispatches, collects and judges. Without --dsn it runs its own private "
        "PostgreSQL cluster in the state directory."
    )
    optParameters: list[list[Any]] = [
        ["dsn", None, None, "libpq connection string (default: a private cluster in --state-dir)."],
        [
            "state-dir",
            None,
            "buildmaster-state",
            "Where the private cluster lives (and the librarian's files, unless --files-dir).",
        ],
        [
            "files-dir",
            None,
            None,
            "The librarian's files [default: librarian/ in --state-dir]. Masters sharing a"
            " database must share this directory (NFS, CephFS: any POSIX filesystem with"
            " atomic rename); see docs/deployment.md.",
        ],
        [
            "port",
            "p",
            "tcp:8000:interface=127.0.0.1",
            "The web server (librarian): a port on 127.0.0.1, or a strports description.",
            _port,
        ],
        [
            "librarian-url",
            None,
            None,
            "The librarian's public URL, as builders reach it (default: from --port).",
        ],
        [
            "scan-interval",
            None,
            None,
            f"Seconds between scans of every builder [default: {SCAN_INTERVAL:g};"
            f" {DEMO_SCAN_INTERVAL:g} with --demo]",
            _seconds,
        ],
        [
            "building-poll-max",
            None,
            30.0,
            "A building builder is polled every tenth of its build's age, at least every"
            " scan interval and at least every this many seconds.",
            _seconds,
        ],
        [
            "max-collections",
            None,
            0,
            "Finished builds collected at once; beyond it the polls of building builders"
            " wait their turn (0: no limit). A limit keeps the time from a finished build"
            " to the next build() short when the master is overloaded, at the cost of"
            " builds per second.",
            _count,
        ],
        [
            "socket-timeout",
            None,
            40.0,
            "Seconds for a call to a trusted builder (ensurepresent: 20x).",
            _seconds,
        ],
        [
            "virtualized-socket-timeout",
            None,
            30.0,
            "Seconds for a call to a virtualized builder.",
            _seconds,
        ],
        [
            "max-result-bytes",
            None,
            8 * 1024**3,
            "The result files of one build together may take this many bytes (K, M, G"
            " allowed); beyond it the download stops and the build is FAILEDTOUPLOAD.",
            _size,
        ],
        [
            "max-result-files",
            None,
            1000,
            "A build may hand back this many result files; more: FAILEDTOUPLOAD.",
            _positive_count,
        ],
        [
            "result-downloads",
            None,
            4,
            "Downloads from one builder at once (its log and result files).",
            _positive_count,
        ],
        [
            "download-idle-timeout",
            None,
            60.0,
            "A download from a builder that brings no byte for this many seconds has stalled.",
            _seconds,
        ],
        [
            "download-min-rate",
            None,
            64 * 1024.0,
            "Bytes a second a download from a builder must keep up on average (each byte"
            " moves its deadline 1/rate seconds later, beyond the socket timeout).",
            _seconds,
        ],
        [
            "vm-resume-command",
            None,
            None,
            "Resets a virtualized builder's VM (run without a shell, in a minimal"
            " environment); %(vm_host)s and %(buildd_name)s expand, one of them is needed"
            f" [with --demo: {DEMO_VM_RESUME_COMMAND!r}].",
        ],
        ["vm-resume-timeout", None, 300.0, "Seconds the VM reset command may take.", _seconds],
        [
            "stuck-timeout",
            None,
            300.0,
            "Seconds a builder may stay ABORTING (or BUILDING what it was told to abort)"
            " before it is failed as stuck (a virtualized one gets its VM reset).",
            _seconds,
        ],
        [
            "session-lease",
            None,
            10.0,
            "With several masters: seconds this master goes on working its builders when"
            " its database session does not answer (the server keeps a silent session"
            " twice as long, so another master takes them only after this one stopped).",
            _seconds,
        ],
        [
            "fault-retry",
            None,
            15.0,
            "Seconds a build held up by a failure of the master's own side (librarian, file"
            " descriptors, database, VM reset command) waits before it is tried again;"
            " doubled while the failure lasts, up to 600.",
            _seconds,
        ],
        [
            "primary-archive-url",
            None,
            ArchiveURLs().primary,
            "URL of a primary archive, with {distribution}.",
        ],
        [
            "ppa-url",
            None,
            ArchiveURLs().ppa,
            "URL of a PPA, with {owner}, {name} and {distribution}.",
        ],
        [
            "private-ppa-url",
            None,
            ArchiveURLs().private_ppa,
            "URL of a private PPA, with {owner}, {name} and {distribution} (builders get the"
            " archive's buildd secret in it).",
        ],
        [
            "build-url",
            None,
            None,
            "Public URL of a build page, with {build_id} (sent to builders).",
        ],
        ["demo-builders", None, 12, "How many simulated builders --demo starts.", int],
        ["demo-interval", None, 2.0, "Seconds between builds --demo queues.", _seconds],
    ]
    optFlags = [
        ["demo", None, "Load the sample data, start simulated builders and queue builds."],
        ["access-log", None, "Log every request to the web server."],
        [
            "web-only",
            None,
            "Serve the API, the pages, /metrics, the health checks and the librarian over"
            " the farm's database (--dsn) without scanning: this process holds no builder"
            " and takes no share of them (docs/deployment.md).",
        ],
    ]

    def postOptions(self) -> None:
        if self["web-only"]:
            self._check_web_only()
        command = self["vm-resume-command"]
        if command:
            try:
                check_template(command)
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        for option, (fields, required) in URL_OPTIONS.items():
            if self[option] is not None:
                check_url(option, self[option], fields, required)
        if self["dsn"] is not None:
            try:
                parse_dsn(self["dsn"])
            except ProgrammingError as e:
                raise usage.UsageError(f"--dsn {self['dsn']!r}: {e}".strip()) from None

    def _check_web_only(self) -> None:
        """--web-only needs the farm's database, and refuses what only a scanning master
        (or the demo) uses."""
        if self["demo"]:
            raise usage.UsageError(
                "--web-only does not go with --demo: the demo's builders need a scanning master"
            )
        if self["dsn"] is None:
            raise usage.UsageError(
                "--web-only needs --dsn: the farm's database (a web-only process starts no"
                " private cluster)"
            )
        for option in SCANNER_OPTIONS:
            if self[option] != self.defaults[option]:
                raise usage.UsageError(
                    f"--{option} is for a master that scans: a --web-only process scans no builder"
                )

    def settings(self) -> ServiceSettings:
        """The service's settings; --demo changes only the defaults of what was not given."""
        command = self["vm-resume-command"]
        if command is None and self["demo"]:
            command = DEMO_VM_RESUME_COMMAND
        scan_interval = self["scan-interval"]
        if scan_interval is None:
            scan_interval = DEMO_SCAN_INTERVAL if self["demo"] else SCAN_INTERVAL
        master = MasterConfig(
            scan_interval=scan_interval,
            building_poll_max=self["building-poll-max"],
            max_collections=self["max-collections"],
            socket_timeout=self["socket-timeout"],
            virtualized_socket_timeout=self["virtualized-socket-timeout"],
            max_result_bytes=self["max-result-bytes"],
            max_result_files=self["max-result-files"],
            result_downloads=self["result-downloads"],
            download_idle_timeout=self["download-idle-timeout"],
            download_min_rate=self["download-min-rate"],
            vm_resume_command=command,
            vm_resume_timeout=self["vm-resume-timeout"],
            stuck_timeout=self["stuck-timeout"],
            session_lease=self["session-lease"],
            fault_retry_initial=self["fault-retry"],
            fault_retry_max=max(600.0, self["fault-retry"]),
            archive_urls=ArchiveURLs(
                primary=self["primary-archive-url"],
                ppa=self["ppa-url"],
                private_ppa=self["private-ppa-url"],
            ),
            build_url_template=self["build-url"],
        )
        return ServiceSettings(
            state_dir=Path(self["state-dir"]).absolute(),
            dsn=self["dsn"],
            port=self["port"],
            librarian_url=self["librarian-url"],
            files_dir=Path(self["files-dir"]).absolute() if self["files-dir"] else None,
            access_log=bool(self["access-log"]),
            master=master,
            demo=bool(self["demo"]),
            demo_builders=self["demo-builders"],
            demo_queue_interval=self["demo-interval"],
            web_only=bool(self["web-only"]),
        )


class _Ending:
    """How the ``twistd buildmaster`` process ends.

    twistd has no way for a service to choose the exit status (it exits with 0 unless the
    reactor was stopped by a signal, which it re-raises): after a failed start the status
    is set at the very end, once twistd has shut down and cleaned up (an ``atexit`` handler
    that flushes the standard streams and exits with 1).

    Stop signals are handled here rather than by twistd: the first SIGINT or SIGTERM stops
    the reactor (a stop that was asked for is a success: status 0), and another one while
    stopping is only noted, where twistd's own handler would stop the stopped reactor again
    and log a traceback.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.status = 0
        self.stopping = False
        reactor.addSystemEventTrigger("before", "shutdown", self._shutting_down)
        reactor.callWhenRunning(self._handle_signals)

    def _shutting_down(self) -> None:
        self.stopping = True

    def _handle_signals(self) -> None:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, self._signalled)

    def _signalled(self, number: int, frame: object) -> None:
        # A Python signal handler runs between two steps of whatever the main thread is
        # doing, the log's own writing included: it only queues the signal, and the
        # reactor's loop logs it and stops, in the order the signals came.
        self.reactor.callFromThread(self._signal_received, signal.Signals(number).name)

    def _signal_received(self, name: str) -> None:
        if self.stopping:
            _log.info("Received {signal} while stopping: still stopping", signal=name)
            return
        self.stopping = True
        _log.info("Received {signal}, shutting down.", signal=name)
        self._stop()

    def _stop(self) -> None:
        try:
            self.reactor.stop()
        except error.ReactorNotRunning:
            pass  # stopping already

    def fail(self, reason: BaseException) -> None:
        """Starting failed (already logged): stop, and exit with status 1 in the end."""
        if self.status == 0:
            self.status = 1
            atexit.register(self._exit)
        self.stopping = True
        if self.reactor.running:
            self._stop()
        else:  # failed before the reactor ran
            self.reactor.callWhenRunning(self._stop)

    def _exit(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(self.status)


def makeService(options: Options) -> BuildmasterService:
    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor
    raise_file_limit()
    tune_garbage_collection(reactor)
    ending = _Ending(reactor)
    return BuildmasterService(reactor, options.settings(), on_fatal=ending.fail)
