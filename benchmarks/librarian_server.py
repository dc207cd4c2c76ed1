"""The master side of the librarian benchmark (started by ``librarian_bench.py``).

Connects to the database, stores the given file through ``Librarian.addFile`` a few times
(timing each and sampling this process's RSS), then serves on 127.0.0.1:

* ``/librarian/``          the librarian's resource (sendfile rounds);
* ``/librarian-plain/``    the same resource with sendfile disabled (threaded reads);
* ``/static/``             stock ``twisted.web.static.File`` over the source file's directory.

It prints one JSON object per line on stdout (``upload`` results, then ``serving`` with the
port and the URLs) and runs until it gets SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import resource as resource_usage
import time
from pathlib import Path
from typing import Any, cast

from twisted.internet import defer, task
from twisted.web import resource, server, static

from buildmaster.librarian import Librarian
from buildmaster.store.database import Database


def rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def run(reactor: Any, options: argparse.Namespace) -> None:
    db = Database(reactor, options.dsn, size=4)
    await db.connect()
    reactor.getThreadPool()  # start the pool before the baseline
    lib = Librarian(
        reactor,
        db,
        root=options.root,
        public_url="http://127.0.0.1:0/librarian/",
        secret=b"benchmark-secret-benchmark-secret",
    )
    source: Path = options.source
    size = source.stat().st_size
    alias_id = 0
    for attempt in range(options.uploads):
        peak = [rss_bytes()]

        def sample(peak: list[int] = peak) -> None:
            peak[0] = max(peak[0], rss_bytes())

        before = rss_bytes()
        cpu_before = resource_usage.getrusage(resource_usage.RUSAGE_SELF)
        sampler = task.LoopingCall(sample)
        sampler.clock = reactor
        sampler.start(0.02)
        start = time.perf_counter()
        with source.open("rb") as f:
            alias_id = await lib.addFile(
                f"chroot-{attempt}.tar", size, f, "application/x-tar", restricted=False
            )
        elapsed = time.perf_counter() - start
        cpu_after = resource_usage.getrusage(resource_usage.RUSAGE_SELF)
        sampler.stop()
        emit(
            kind="upload",
            attempt=attempt,
            bytes=size,
            seconds=elapsed,
            mb_per_s=size / elapsed / 1e6,
            rss_before=before,
            rss_peak=peak[0],
            rss_growth=peak[0] - before,
            cpu_seconds=(cpu_after.ru_utime + cpu_after.ru_stime)
            - (cpu_before.ru_utime + cpu_before.ru_stime),
        )
    file = await lib.get(alias_id)

    root = resource.Resource()
    root.putChild(b"librarian", lib.resource())
    root.putChild(b"librarian-plain", lib.resource(use_sendfile=False))
    root.putChild(b"static", cast(resource.IResource, static.File(str(source.parent))))
    site = server.Site(root)
    site.displayTracebacks = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1", backlog=128)
    number = port.getHost().port
    lib.public_url = f"http://127.0.0.1:{number}/librarian/"
    path = lib.url_for(file).split("/librarian/", 1)[1]
    emit(
        kind="serving",
        pid=os.getpid(),
        port=number,
        librarian=f"http://127.0.0.1:{number}/librarian/{path}",
        plain=f"http://127.0.0.1:{number}/librarian-plain/{path}",
        static=f"http://127.0.0.1:{number}/static/{source.name}",
        rss=rss_bytes(),
    )
    stopped: defer.Deferred[None] = defer.Deferred()
    reactor.addSystemEventTrigger("before", "shutdown", lambda: stopped.callback(None))
    await stopped
    await port.stopListening()
    await db.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--source", required=True, type=Path)
    parser.add_argument("--uploads", type=int, default=3)
    options = parser.parse_args(argv)
    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor, options)))


if __name__ == "__main__":
    main()
