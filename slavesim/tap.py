"""``twistd slavesim``: a farm of simulated builders as a twistd service.

::

    twistd -n --pidfile= slavesim --count 100 --port 9000 --arch amd64,i386 \\
        --outcomes 'hello*=DEPFAIL:3,*=OK:2' --list builders.jsonl

This is the only module of the package that imports the global reactor.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from slavesim.builder import DEFAULT_VERSION
from slavesim.cache import DEFAULT_DOWNLOAD_TIMEOUT, DEFAULT_MAX_DOWNLOAD
from slavesim.farm import Farm
from slavesim.outcomes import RULES_SYNTAX, OutcomeRule, RuleSyntaxError, parse_rules

__all__ = ["Options", "SlavesimService", "makeService"]


def _seconds(value: str) -> float:
    seconds = float(value)
    if not (0 <= seconds < float("inf")):
        raise ValueError(f"{value!r} is not a number of seconds >= 0")
    return seconds


class Options(usage.Options):
    """Command line of ``twistd slavesim``."""

    synopsis = "[options]"
    longdesc = (
        "Run simulated builders that speak the launchpad-buildd protocol (1.0): builder i "
        "listens on port P+i (or any free port with --port 0) and serves POST /rpc and "
        "GET /filecache/<sha1>. Outcome rules: " + RULES_SYNTAX + ", first match wins, "
        "e.g. 'bob*/*=BUILDERFAIL,hello*=DEPFAIL[libfoo (>= 1.0)]:3,*=OK:2'."
    )
    optParameters: list[list[Any]] = [
        ["count", None, 1, "Number of builders.", int],
        ["port", "p", 8221, "First port: builder i listens on PORT+i (0: any free port).", int],
        ["interface", None, "127.0.0.1", "Address to listen on."],
        ["name-prefix", None, "sim", "Builder names are PREFIX000, PREFIX001, ..."],
        ["cache-dir", None, None, "File caches go in CACHE_DIR/<name>/ (default: a temp dir)."],
        ["build-time", None, 3.0, "Seconds a build takes unless a rule says otherwise.", _seconds],
        ["abort-time", None, 1.0, "Seconds ABORTING lasts.", _seconds],
        [
            "latency",
            None,
            0.0,
            "Seconds every builder waits before carrying out and answering each XML-RPC call.",
            _seconds,
        ],
        ["outcomes", None, "", "Outcome rules: " + RULES_SYNTAX],
        ["list", None, None, "Write the builders (JSON lines: name, url, arch_tags) to FILE."],
        ["url-host", None, None, "Host name to put in builder URLs (default: the interface)."],
        ["builder-version", None, DEFAULT_VERSION, "builder_version reported by status."],
        ["history", None, 100, "Calls each builder remembers.", int],
        ["max-download", None, DEFAULT_MAX_DOWNLOAD, "Largest download, in bytes.", int],
        [
            "download-timeout",
            None,
            DEFAULT_DOWNLOAD_TIMEOUT,
            "Seconds before a download is given up.",
            _seconds,
        ],
    ]
    optFlags = [
        ["spread-arch", None, "Builder i gets only the i-th tag (round robin), not all."],
        [
            "no-fast-path",
            None,
            "Answer every request through twisted.web (a diagnostic: the answers are the same).",
        ],
        [
            "real-daemon",
            None,
            "Behave like the real daemon where recovery must cope: build directories that "
            "outlive a crash, an abort of nothing that sticks in ABORTING, BUILDERFAIL 120 s "
            "after an abort that cannot kill the build, nothing answered while downloading.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["arch"] = []
        self["rules"] = []

    def opt_arch(self, value: str) -> None:
        """Architecture tag(s), repeatable or comma-separated (default: amd64)."""
        self["arch"].extend(tag.strip() for tag in value.split(",") if tag.strip())

    opt_a = opt_arch

    def postOptions(self) -> None:
        if self["count"] < 1:
            raise usage.UsageError("--count must be at least 1")
        port = self["port"]
        if port and not (1 <= port and port + self["count"] - 1 <= 65535):
            raise usage.UsageError(
                f"--port {port} with --count {self['count']} needs ports beyond 65535"
            )
        if port < 0:
            raise usage.UsageError("--port must be >= 0")
        if not self["arch"]:
            self["arch"] = ["amd64"]
        if self["history"] < 0 or self["max-download"] < 0:
            raise usage.UsageError("--history and --max-download must be >= 0")
        try:
            self["rules"] = parse_rules(self["outcomes"])
        except RuleSyntaxError as e:
            raise usage.UsageError(f"--outcomes: {e}") from None


class SlavesimService(Service):
    """Start a :class:`~slavesim.farm.Farm` of builders; stop it with the service."""

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        *,
        count: int,
        port: int,
        interface: str,
        arch_tags: list[str],
        spread_arch: bool,
        name_prefix: str,
        cache_dir: Path | None,
        build_time: float,
        abort_time: float,
        rules: list[OutcomeRule],
        list_file: str | None,
        url_host: str | None,
        version: str,
        history_size: int,
        max_download: int,
        download_timeout: float,
        latency: float = 0.0,
        fast_path: bool = True,
        real_daemon: bool = False,
    ) -> None:
        self._reactor = reactor
        self._latency = latency
        self._fast_path = fast_path
        self._real_daemon = real_daemon
        self._count = count
        self._port = port
        self._interface = interface
        self._arch_tags = arch_tags
        self._spread_arch = spread_arch
        self._name_prefix = name_prefix
        self._own_cache_dir = cache_dir is None
        self._cache_dir = cache_dir
        self._list_file = list_file
        self._farm_args: dict[str, Any] = {
            "build_time": build_time,
            "abort_time": abort_time,
            "rules": rules,
            "version": version,
            "history_size": history_size,
            "max_download": max_download,
            "download_timeout": download_timeout,
            "url_host": url_host,
        }
        self.farm: Farm | None = None

    def startService(self) -> None:
        super().startService()
        failures: list[Failure] = []
        d = Deferred.fromCoroutine(self._start())
        d.addErrback(failures.append)
        if failures:
            # Listening happens synchronously: let twistd report a taken port and exit.
            failures[0].raiseException()

    async def _start(self) -> None:
        if self._cache_dir is None:
            self._cache_dir = Path(tempfile.mkdtemp(prefix="slavesim-"))
        self.farm = Farm(self._reactor, self._cache_dir, **self._farm_args)
        builders = await self.farm.start_builders(
            self._count,
            self._arch_tags,
            name_prefix=self._name_prefix,
            port=self._port,
            interface=self._interface,
            spread_arch=self._spread_arch,
        )
        for builder in builders:
            builder.faults.latency = self._latency
            builder.fast_path = self._fast_path
            if self._real_daemon:
                builder.faults.like_the_real_daemon()
        self._log.info(
            "{count} simulated builders ready, file caches in {cache_dir}",
            count=len(builders),
            cache_dir=str(self._cache_dir),
        )
        if self._list_file is not None:
            self._write_list(self._list_file)

    def _write_list(self, path: str) -> None:
        assert self.farm is not None
        lines = "".join(json.dumps(b.to_json()) + "\n" for b in self.farm.listings())
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(lines)
        os.replace(tmp, path)  # readers never see half a list
        self._log.info("Builder list written to {path}", path=path)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self.farm is not None:
            await self.farm.stop()
        if self._own_cache_dir and self._cache_dir is not None:
            shutil.rmtree(self._cache_dir, ignore_errors=True)


def _raise_file_limit(needed: int) -> None:
    """Let the process have enough descriptors for ``needed`` listening sockets and more."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed * 2 + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def settle_garbage_collector(reactor: Any) -> None:
    """Fewer and shorter pauses of the cyclic garbage collector in a farm process.

    Hundreds of builders share the process, and a pause stalls them all. The young
    generation gets 10,000 allocations between passes (not 700), so the short-lived objects
    of calls and downloads die before they are promoted and full passes become rare; and
    what exists once the reactor runs (modules, the farm's set-up) is frozen out of every
    pass.
    """
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(10_000, older, oldest)

    def freeze() -> None:
        gc.collect()
        gc.freeze()

    reactor.callWhenRunning(freeze)


def makeService(options: Options) -> SlavesimService:
    """The twistd service for ``options``."""
    from twisted.internet import reactor

    _raise_file_limit(options["count"])
    settle_garbage_collector(reactor)
    return SlavesimService(
        reactor,
        count=options["count"],
        port=options["port"],
        interface=options["interface"],
        arch_tags=options["arch"],
        spread_arch=bool(options["spread-arch"]),
        name_prefix=options["name-prefix"],
        cache_dir=Path(options["cache-dir"]) if options["cache-dir"] else None,
        build_time=options["build-time"],
        abort_time=options["abort-time"],
        rules=options["rules"],
        list_file=options["list"],
        url_host=options["url-host"],
        version=options["builder-version"],
        history_size=options["history"],
        max_download=options["max-download"],
        download_timeout=options["download-timeout"],
        latency=options["latency"],
        fast_path=not options["no-fast-path"],
        real_daemon=bool(options["real-daemon"]),
    )
