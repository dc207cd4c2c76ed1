"""``python -m buildmaster.tokens``: operator API tokens, straight in the database.

The first admin token has to be made this way (every other one can be made through the
API with an admin token)::

    python -m buildmaster.tokens create --admin --dsn "host=db dbname=buildmaster"
    python -m buildmaster.tokens create --uploader '~cprov/ubuntu/ppa' --state-dir STATE
    python -m buildmaster.tokens list --state-dir STATE
    python -m buildmaster.tokens revoke 3 --state-dir STATE

The database is ``--dsn``, else ``$BUILDMASTER_DSN``, else the embedded cluster of
``--state-dir`` (the master's: the port of the running server is read from its
``postmaster.pid``; a cluster that is not running is started for the command and stopped
again). The schema is migrated first, as the master does at start. ``create`` prints the
token's secret on standard output, alone on its line: it is shown only this once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from buildmaster.access import Grant
from buildmaster.store.embedded import DATABASE as EMBEDDED_DATABASE
from buildmaster.store.tokens import ApiToken

__all__ = ["main", "locate_database"]


def _running_port(datadir: Path) -> int | None:
    """The port of the server of the embedded cluster in ``datadir``, if it runs."""
    pid_file = datadir / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
    except OSError:
        return None
    if len(lines) < 4 or not lines[3].strip().isdigit():
        return None
    try:
        os.kill(int(lines[0]), 0)
    except (ValueError, ProcessLookupError):
        return None
    except PermissionError:
        pass  # it runs, as another user (postgres)
    return int(lines[3])


def _describe(token: ApiToken, references: list[str]) -> str:
    scope = "admin" if token.admin else f"uploader to {', '.join(references)}"
    revoked = f", revoked {token.date_revoked:%Y-%m-%d %H:%M}" if token.revoked else ""
    note = f" ({token.description})" if token.description else ""
    return f"{token.id}\t{token.prefix}...\t{scope}{revoked}{note}"


async def _run(reactor: Any, options: argparse.Namespace, dsn: str) -> int:
    from buildmaster.store import NotFound, Store
    from buildmaster.store.database import Database
    from buildmaster.store.schema import migrate

    db = Database(reactor, dsn, size=1)
    await db.connect()
    try:
        await migrate(db)
        store = Store(db)
        if options.command == "create":
            archives = []
            for reference in options.uploader or ():
                try:
                    archives.append(await store.views.catalog.archive(reference, Grant(admin=True)))
                except (ValueError, NotFound) as e:
                    print(f"buildmaster.tokens: {e}", file=sys.stderr)
                    return 2
            new = await store.tokens.create(
                admin=options.admin, archives=archives, description=options.description
            )
            print(
                f"made token {new.token.id} ({'admin' if options.admin else 'uploader to ' + ', '.join(a.reference for a in archives)});"
                " its secret is shown only now:",
                file=sys.stderr,
            )
            print(new.secret)
        elif options.command == "list":
            for token in await store.tokens.all(include_revoked=options.all):
                references = [(await store.archives.get(a)).reference for a in token.archive_ids]
                print(_describe(token, references))
        else:
            try:
                await store.tokens.revoke(options.id)
            except NotFound as e:
                print(f"buildmaster.tokens: {e}", file=sys.stderr)
                return 2
            print(f"token {options.id} revoked", file=sys.stderr)
        return 0
    finally:
        await db.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m buildmaster.tokens",
        description="Operator API tokens, in the database (the first admin token is made here).",
    )
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--dsn", help="libpq connection string (default: $BUILDMASTER_DSN)")
    where.add_argument(
        "--state-dir", type=Path, help="the master's state directory (its embedded database)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", parents=[where], help="make a token; prints its secret")
    scope = create.add_mutually_exclusive_group(required=True)
    scope.add_argument("--admin", action="store_true", help="a token that may do anything")
    scope.add_argument(
        "--uploader",
        action="append",
        metavar="ARCHIVE",
        help="a token that uploads to this archive (~OWNER/DISTRIBUTION/NAME; repeatable)",
    )
    create.add_argument("--description", default="", help="what the token is for")
    listing = commands.add_parser("list", parents=[where], help="list tokens")
    listing.add_argument("--all", action="store_true", help="revoked ones too")
    revoke = commands.add_parser("revoke", parents=[where], help="revoke a token")
    revoke.add_argument("id", type=int)
    return parser


def main(argv: list[str] | None = None) -> int:
    options = _parser().parse_args(argv)

    async def run(reactor: Any, dsn: str) -> int:
        return await _run(reactor, options, dsn)

    return locate_database("buildmaster.tokens", options.dsn, options.state_dir, run)


def locate_database(
    prog: str,
    dsn: str | None,
    state_dir: Path | None,
    run: Callable[[Any, str], Awaitable[int]],
) -> int:
    """Run ``run(reactor, dsn)`` on the database of a command: ``dsn``, else
    ``$BUILDMASTER_DSN``, else the embedded cluster of ``state_dir`` (its running server's
    socket; a stopped cluster is started for the command and stopped again). Its exit
    status; 2, with a line on standard error, when there is no database to use."""
    dsn = dsn or os.environ.get("BUILDMASTER_DSN") or None
    cluster = None
    started = False
    if dsn is None:
        if state_dir is None:
            print(
                f"{prog}: say where the database is: --dsn, $BUILDMASTER_DSN or --state-dir",
                file=sys.stderr,
            )
            return 2
        from buildmaster.store.cluster import SOCKET_PORT
        from buildmaster.store.embedded import embedded_cluster

        cluster = embedded_cluster(state_dir.absolute())
        port = _running_port(cluster.datadir)
        if port is None:
            if not cluster.datadir.exists():
                print(
                    f"{prog}: {state_dir} has no database yet: start the master once first",
                    file=sys.stderr,
                )
                return 2
            cluster.start()
            started = True
        else:
            cluster.port = SOCKET_PORT  # the master's server runs: use its socket
        dsn = cluster.dsn(EMBEDDED_DATABASE)  # its owner: the command may migrate

    from twisted.internet import defer, task

    result: list[int] = []
    where = dsn

    async def react(reactor: Any) -> None:
        result.append(await run(reactor, where))

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(react(reactor)), [])
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    finally:
        if started and cluster is not None:
            cluster.stop()
    return result[0] if result else 1


if __name__ == "__main__":
    sys.exit(main())
