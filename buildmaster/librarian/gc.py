"""``python -m buildmaster.librarian.gc --dsn DSN --root DIR``: one garbage collection pass.

Safe to run while a master is serving and storing files with the same database and
directory (see :mod:`buildmaster.librarian.collector`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from twisted.internet import defer, task, threads

from buildmaster.librarian.collector import DEFAULT_FRESH_GRACE, GarbageCollector
from buildmaster.librarian.storage import ContentStore
from buildmaster.store.database import Database


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Collect the librarian's garbage once.")
    parser.add_argument("--dsn", required=True, help="libpq connection string of the database")
    parser.add_argument("--root", required=True, type=Path, help="the librarian's directory")
    parser.add_argument(
        "--temp-grace",
        type=float,
        default=86400.0,
        help="seconds before an unwritten temporary upload file counts as abandoned",
    )
    parser.add_argument(
        "--fresh-grace",
        type=float,
        default=DEFAULT_FRESH_GRACE,
        help="seconds during which a content file just put in place is never deleted",
    )
    options = parser.parse_args(argv)

    async def run(reactor: Any) -> None:
        db = Database(reactor, options.dsn, size=1)
        await db.connect()
        try:

            def run_in_thread(f: Any, *args: Any) -> defer.Deferred[Any]:
                return threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

            collector = GarbageCollector(reactor, db, ContentStore(options.root), run_in_thread)
            collector.fresh_grace = options.fresh_grace
            stats = await collector.collect(options.temp_grace)
        finally:
            await db.close()
        print(f"removed {stats}")

    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
