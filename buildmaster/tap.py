"""``twistd buildmaster``: the command line, and the only module that imports the reactor.

::

    twistd -n buildmaster --demo                 # embedded PostgreSQL + simulated builders
    twistd -n buildmaster --dsn "host=db dbname=buildmaster" --port tcp:8000 \\
        --librarian-url http://master.example:8000/librarian/ \\
        --vm-resume-command "/usr/local/bin/resume-vm %(vm_host)s %(buildd_name)s"
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

from twisted.python import usage

from buildmaster.buildargs import ArchiveURLs
from buildmaster.config import MasterConfig
from buildmaster.gctuning import tune_garbage_collection
from buildmaster.service import BuildmasterService, ServiceSettings
from buildmaster.vmreset import resume_argv

__all__ = ["Options", "makeService"]


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
    if value.isdigit():
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
            "Where the private cluster, the librarian's files and secrets live.",
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
        ["scan-interval", None, 15.0, "Seconds between scans of every builder.", _seconds],
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
            "Resets a virtualized builder's VM; %(vm_host)s and %(buildd_name)s expand.",
        ],
        ["vm-resume-timeout", None, 300.0, "Seconds the VM reset command may take.", _seconds],
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
    ]

    def postOptions(self) -> None:
        command = self["vm-resume-command"]
        if command:
            try:
                resume_argv(command, "vm-host", "builder")
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        for key in ("primary-archive-url", "ppa-url"):
            try:
                self[key].format(distribution="d", owner="o", name="n")
            except (KeyError, IndexError, ValueError) as e:
                raise usage.UsageError(f"--{key}: bad template {self[key]!r}: {e}") from None

    def settings(self) -> ServiceSettings:
        command = self["vm-resume-command"]
        if command is None and self["demo"]:
            command = "true %(vm_host)s"  # the demo's VMs reset instantly
        master = MasterConfig(
            scan_interval=self["scan-interval"]
            if not self["demo"] or self["scan-interval"] != 15.0
            else 5.0,
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
            access_log=bool(self["access-log"]),
            master=master,
            demo=bool(self["demo"]),
            demo_builders=self["demo-builders"],
            demo_queue_interval=self["demo-interval"],
        )


def raise_file_limit() -> None:
    """Raise this process's soft limit of open files to its hard limit.

    The master keeps a few connections open to every builder (kept alive between calls),
    besides its database connections and the librarian's files: the usual soft limit of
    1,024 is too small for a farm of a few hundred builders.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # pragma: no cover - refused: keep the soft limit
            pass


def makeService(options: Options) -> BuildmasterService:
    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor
    raise_file_limit()
    tune_garbage_collection(reactor)

    def fatal(error: BaseException) -> None:
        if reactor.running:
            reactor.stop()

    return BuildmasterService(reactor, options.settings(), on_fatal=fatal)
