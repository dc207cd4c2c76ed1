"""A private PostgreSQL cluster: the tests', the benchmarks' and the embedded default's.

One class, :class:`PostgresCluster`, knows how to find the server binaries, create a cluster
(``initdb``), start it on a free port of 127.0.0.1 and stop it again.  It is used three ways:

* tests and benchmarks: ``PostgresCluster.throwaway()`` in a temporary directory, started and
  stopped with the blocking :meth:`PostgresCluster.start` / :meth:`PostgresCluster.stop`
  (they run outside the reactor, at session set-up);
* the master's embedded default: a persistent cluster in the state directory, started and
  stopped without blocking the reactor by :meth:`PostgresCluster.start_async` /
  :meth:`PostgresCluster.stop_async`.

Whoever starts the server, a small watchdog process (``python -m buildmaster.store.watchdog``)
is started beside it. It waits for its parent to die or to close the pipe between them,
then stops the server (and removes a throwaway cluster's files), so that a test run that is
interrupted, or a master that is killed with SIGKILL, never leaves a server behind.

When the process runs as root, ``initdb`` and ``pg_ctl`` (which refuse to run as root) are run
as the ``postgres`` user through ``runuser``, and the cluster directory is given to that user.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

__all__ = ["PostgresCluster", "PostgresNotFound", "ClusterError", "find_bindir"]

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found. Install them, e.g. "
    "on Debian/Ubuntu `apt-get install postgresql` (they land in /usr/lib/postgresql/<version>/bin), "
    "or point BUILDMASTER_PG_BINDIR at the directory that holds them, "
    "or pass --dsn to use a PostgreSQL server you already run."
)

_SERVER_TOOLS = ("initdb", "pg_ctl", "postgres")


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries could be found; the message says how to get them."""


class ClusterError(RuntimeError):
    """initdb or pg_ctl failed; the message carries their output."""


def _has_server_tools(bindir: Path) -> bool:
    return all(os.access(bindir / tool, os.X_OK) for tool in _SERVER_TOOLS)


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.name)) or (0,)


def find_bindir(
    environ: dict[str, str] | None = None, debian_root: Path = Path("/usr/lib/postgresql")
) -> Path:
    """Find the directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Looks, in order, at ``$BUILDMASTER_PG_BINDIR``, ``pg_config --bindir``, ``PATH`` and
    Debian's ``/usr/lib/postgresql/<version>/bin`` (newest version first).

    :raises PostgresNotFound: with instructions when none of those has the server tools.
    """
    env = os.environ if environ is None else environ
    candidates: list[Path] = []
    if env.get("BUILDMASTER_PG_BINDIR"):
        candidates.append(Path(env["BUILDMASTER_PG_BINDIR"]))
    pg_config = shutil.which("pg_config", path=env.get("PATH"))
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            candidates.append(Path(out))
    initdb = shutil.which("initdb", path=env.get("PATH"))
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    if debian_root.is_dir():
        versions = sorted(
            (p for p in debian_root.iterdir() if (p / "bin").is_dir()),
            key=_version_key,
            reverse=True,
        )
        candidates.extend(p / "bin" for p in versions)
    for candidate in candidates:
        if _has_server_tools(candidate):
            return candidate
    raise PostgresNotFound(INSTALL_HINT)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _make_traversable(path: Path) -> None:
    """Give "others" search permission on every parent of ``path`` that lacks it.

    The postgres user must be able to reach the cluster directory; only the execute
    (search) bit is added, never read.
    """
    for parent in reversed(path.resolve().parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, mode | stat.S_IXOTH)


@attrs.define
class PostgresCluster:
    """One PostgreSQL cluster under ``directory`` (the data lives in ``directory/data``).

    :param directory: where the cluster lives. For a throwaway cluster, a fresh temporary
        directory that is removed when the cluster stops.
    :param throwaway: remove ``directory`` when the server stops.
    :param fsync: keep PostgreSQL's durability settings (``fsync``, ``synchronous_commit``,
        ``full_page_writes``). Tests turn them off; the embedded default and durability
        benchmarks keep them on.
    :param settings: extra ``postgresql.conf`` settings.
    """

    directory: Path
    throwaway: bool = False
    fsync: bool = True
    settings: dict[str, str] = attrs.field(factory=dict)
    bindir: Path = attrs.field(factory=find_bindir)
    host: str = "127.0.0.1"
    superuser: str = "postgres"
    port: int | None = None
    _watchdog: subprocess.Popen[bytes] | None = None

    @classmethod
    def throwaway_cluster(cls, fsync: bool = False, **kw: Any) -> PostgresCluster:
        """A cluster in a new temporary directory, removed again when it stops."""
        bindir = kw.pop("bindir", None) or find_bindir()
        directory = Path(tempfile.mkdtemp(prefix="buildmaster-pg-"))
        return cls(directory=directory, throwaway=True, fsync=fsync, bindir=bindir, **kw)

    # -- paths and commands -------------------------------------------------------------

    @property
    def datadir(self) -> Path:
        return self.directory / "data"

    @property
    def logfile(self) -> Path:
        return self.directory / "postgresql.log"

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string for database ``dbname`` of the running server."""
        if self.port is None:
            raise ClusterError("the cluster is not running")
        return f"host={self.host} port={self.port} user={self.superuser} dbname={dbname}"

    def _as_server_user(self, argv: Sequence[str]) -> list[str]:
        if _running_as_root():
            runuser = shutil.which("runuser") or "/sbin/runuser"
            return [runuser, "-u", "postgres", "--", *argv]
        return list(argv)

    def _initdb_argv(self) -> list[str]:
        return self._as_server_user(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                self.superuser,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )

    def _start_argv(self, port: int) -> list[str]:
        options = f"-p {port} -c listen_addresses={self.host}"
        return self._as_server_user(
            [
                str(self.bindir / "pg_ctl"),
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-o",
                options,
            ]
        )

    def _stop_argv(self, mode: str = "fast") -> list[str]:
        return self._as_server_user(
            [str(self.bindir / "pg_ctl"), "stop", "-w", "-m", mode, "-D", str(self.datadir)]
        )

    def _settings_text(self) -> str:
        settings = {
            "unix_socket_directories": "''",
            "max_connections": "200",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] '",
        }
        if not self.fsync:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        settings.update(self.settings)
        lines = [f"{key} = {value}" for key, value in settings.items()]
        return "\n# added by buildmaster\n" + "\n".join(lines) + "\n"

    # -- preparing the directory -------------------------------------------------------------

    def _prepare_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if _running_as_root():
            _make_traversable(self.directory)
            pw = pwd.getpwnam("postgres")
            os.chown(self.directory, pw.pw_uid, pw.pw_gid)
            if self.datadir.exists():
                os.chown(self.datadir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.directory, 0o700)

    def _needs_initdb(self) -> bool:
        return not (self.datadir / "PG_VERSION").exists()

    def _configure(self) -> None:
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write(self._settings_text())

    # -- blocking API (tests, benchmarks) -------------------------------------------------

    def _run(self, argv: list[str], what: str) -> None:
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            raise ClusterError(
                self._failure_text(what, result.returncode, result.stdout + result.stderr)
            )

    def _failure_text(self, what: str, code: int, output: str) -> str:
        log_tail = ""
        try:
            log_tail = self.logfile.read_text()[-2000:]
        except OSError:
            pass
        return f"{what} failed (exit {code}): {output.strip()}\n{log_tail}".strip()

    def start(self) -> None:
        """Create the cluster if needed and start the server (blocking; not for the reactor).

        :raises ClusterError: when initdb or pg_ctl fails.
        """
        self._prepare_directory()
        if self._needs_initdb():
            self._run(self._initdb_argv(), "initdb")
            self._configure()
        last_error: ClusterError | None = None
        for _attempt in range(3):
            port = free_port(self.host)
            try:
                self._run(self._start_argv(port), "pg_ctl start")
            except ClusterError as e:  # most likely the port was taken meanwhile
                last_error = e
                continue
            self.port = port
            self._start_watchdog()
            return
        assert last_error is not None
        raise last_error

    def stop(self) -> None:
        """Stop the server (and remove a throwaway cluster). Safe to call twice."""
        if self._watchdog is not None:
            watchdog, self._watchdog = self._watchdog, None
            assert watchdog.stdin is not None
            watchdog.stdin.close()  # the watchdog stops the server and cleans up
            watchdog.wait(timeout=120)
        elif self.port is not None:
            subprocess.run(self._stop_argv(), capture_output=True)
        self.port = None

    def restart(self) -> None:
        """Restart the running server on the same port (blocking): clients lose their
        connections, as they would when an operator restarts PostgreSQL."""
        if self.port is None:
            raise ClusterError("the cluster is not running")
        argv = self._start_argv(self.port)
        argv[argv.index("start")] = "restart"
        self._run(argv, "pg_ctl restart")

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- non-blocking API (the master's embedded default) ---------------------------------

    async def _run_async(self, reactor: Any, argv: list[str], what: str) -> None:
        from twisted.internet.utils import getProcessOutputAndValue

        out, err, code = await getProcessOutputAndValue(
            argv[0], argv[1:], env=dict(os.environ), reactor=reactor
        )
        if code != 0:
            output = (out + err).decode("utf-8", "replace")
            raise ClusterError(self._failure_text(what, code, output))

    async def start_async(self, reactor: Any) -> None:
        """Like :meth:`start`, but runs initdb and pg_ctl through ``reactor``'s process API.

        Creating and chowning the directory is the only file-system work done in the
        calling thread (a few system calls).
        """
        self._prepare_directory()
        if self._needs_initdb():
            await self._run_async(reactor, self._initdb_argv(), "initdb")
            self._configure()
        last_error: ClusterError | None = None
        for _attempt in range(3):
            port = free_port(self.host)
            try:
                await self._run_async(reactor, self._start_argv(port), "pg_ctl start")
            except ClusterError as e:
                last_error = e
                continue
            self.port = port
            self._start_watchdog()
            return
        assert last_error is not None
        raise last_error

    async def stop_async(self, reactor: Any) -> None:
        """Stop the server without blocking the reactor."""
        if self.port is None:
            return
        await self._run_async(reactor, self._stop_argv(), "pg_ctl stop")
        self.port = None
        if self._watchdog is not None:
            watchdog, self._watchdog = self._watchdog, None
            assert watchdog.stdin is not None
            watchdog.stdin.close()  # the server is down; the watchdog just exits
            watchdog.wait(timeout=30)  # a few milliseconds: pg_ctl finds nothing to stop

    # -- the watchdog -----------------------------------------------------------------

    def _start_watchdog(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "buildmaster.store.watchdog",
            "--remove" if self.throwaway else "--keep",
            str(self.directory),
            "--",
            *self._stop_argv("fast"),
        ]
        self._watchdog = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to our process group must not kill it first
            close_fds=True,
        )
