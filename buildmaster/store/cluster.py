"""A private PostgreSQL cluster: the tests', the benchmarks' and the embedded default's.

Long: one class owns a PostgreSQL cluster's whole life (finding the binaries, initdb,
permissions, start, stop); its steps share state and error handling.

One class, :class:`PostgresCluster`, knows how to find the server binaries, create a cluster
(``initdb``), start it and stop it again.  It is used three ways:

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

The server is private: it listens on no TCP port, only on a Unix socket in the cluster
directory (mode 0700, so only the user the server runs as, and root, can reach the socket),
and it accepts only ``peer`` authentication: the operating system user connecting must be
the one that started the cluster (or the server's own user), and may log in only as the
cluster's superuser or one of the roles named in :attr:`PostgresCluster.roles`. Its
``pg_hba.conf`` and ``pg_ident.conf`` live beside the data directory and are written again at
every start, so a cluster made by an older version is made private too.

When the process runs as root, ``initdb`` and ``pg_ctl`` (which refuse to run as root) are run
as the ``postgres`` user through ``runuser``, and the cluster directory is given to that user.
Nothing outside the cluster directory changes owner or mode: every directory above it must
already let that user through, or starting is refused with :class:`ClusterError` saying which
one does not.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
from psycopg2.extensions import make_dsn

__all__ = [
    "PostgresCluster",
    "PostgresNotFound",
    "ClusterError",
    "ClusterDirectoryError",
    "find_bindir",
    "first_unsearchable",
]

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found. Install them, e.g. "
    "on Debian/Ubuntu `apt-get install postgresql` (they land in /usr/lib/postgresql/<version>/bin), "
    "or point BUILDMASTER_PG_BINDIR at the directory that holds them, "
    "or pass --dsn to use a PostgreSQL server you already run."
)

_SERVER_TOOLS = ("initdb", "pg_ctl", "postgres")
#: The user that runs the server when this process runs as root.
SERVER_USER_WHEN_ROOT = "postgres"
#: The server's port: only names its socket file (``.s.PGSQL.5432``); nothing listens on TCP.
SOCKET_PORT = 5432
#: The longest path of a Unix socket (``sun_path`` less its terminating NUL on Linux).
MAX_SOCKET_PATH = 107
_MARKER = "# added by buildmaster"


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries could be found; the message says how to get them."""


class ClusterError(RuntimeError):
    """initdb or pg_ctl failed; the message carries their output."""


class ClusterDirectoryError(ClusterError):
    """The cluster cannot live where it was asked to; the message says why and what to do."""


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


def _may_search(st: os.stat_result, uid: int, gids: Sequence[int]) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def first_unsearchable(
    path: Path,
    uid: int,
    gids: Sequence[int],
    stat_of: Callable[[Path], os.stat_result] = os.stat,
) -> Path | None:
    """The first directory above ``path`` that user ``uid`` (in groups ``gids``) may not
    search (pass through), from the root down; ``None`` when every one lets it through.
    Directories that do not exist yet are skipped (whoever creates them chooses).

    Only the permission bits are read (not ACLs), as the kernel applies them to a user
    that is not root.
    """
    for parent in reversed(Path(path).absolute().parents):
        try:
            st = stat_of(parent)
        except FileNotFoundError:
            continue
        if not _may_search(st, uid, gids):
            return parent
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


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
    :param roles: roles besides the superuser that may log in (through ``peer``
        authentication, as the operating system user that started the cluster).
    """

    directory: Path
    throwaway: bool = False
    fsync: bool = True
    settings: dict[str, str] = attrs.field(factory=dict)
    bindir: Path = attrs.field(factory=find_bindir)
    superuser: str = "postgres"
    roles: tuple[str, ...] = ()
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

    @property
    def socket_directory(self) -> Path:
        """Where the server's Unix socket is (the only way in: no TCP)."""
        return self.directory

    @property
    def socket_path(self) -> Path:
        return self.socket_directory / f".s.PGSQL.{SOCKET_PORT}"

    @property
    def server_user(self) -> str:
        """The operating system user the server runs as."""
        if _running_as_root():
            return SERVER_USER_WHEN_ROOT
        return _user_name(os.geteuid())

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        """A libpq connection string for database ``dbname`` of the running server, as
        ``user`` (default: the superuser). It holds no secret: ``peer`` authentication."""
        if self.port is None:
            raise ClusterError("the cluster is not running")
        return str(
            make_dsn(
                host=str(self.socket_directory),
                port=self.port,
                user=user or self.superuser,
                dbname=dbname,
            )
        )

    def _as_server_user(self, argv: Sequence[str]) -> list[str]:
        if _running_as_root():
            runuser = shutil.which("runuser") or "/sbin/runuser"
            return [runuser, "-u", SERVER_USER_WHEN_ROOT, "--", *argv]
        return list(argv)

    def _initdb_argv(self) -> list[str]:
        return self._as_server_user(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                self.superuser,
                "--auth-local=peer",
                "--auth-host=reject",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )

    def _start_argv(self) -> list[str]:
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
            ]
        )

    def _stop_argv(self, mode: str = "fast") -> list[str]:
        return self._as_server_user(
            [str(self.bindir / "pg_ctl"), "stop", "-w", "-m", mode, "-D", str(self.datadir)]
        )

    def _settings_text(self) -> str:
        settings = {
            # private: no TCP, a socket only the server's user (and root) can reach
            "listen_addresses": _quoted(""),
            "port": str(SOCKET_PORT),
            "unix_socket_directories": _quoted(str(self.socket_directory)),
            "unix_socket_permissions": "0700",
            "hba_file": _quoted(str(self.directory / "pg_hba.conf")),
            "ident_file": _quoted(str(self.directory / "pg_ident.conf")),
            "max_connections": "200",
            "log_min_messages": "warning",
            "log_line_prefix": _quoted("%m [%p] "),
        }
        if not self.fsync:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        settings.update(self.settings)
        lines = [f"{key} = {value}" for key, value in settings.items()]
        return f"\n{_MARKER}\n" + "\n".join(lines) + "\n"

    def _hba_text(self) -> str:
        return (
            f"{_MARKER}: Unix socket only, peer authentication through the map in pg_ident.conf\n"
            "local all all peer map=buildmaster\n"
        )

    def _ident_text(self) -> str:
        clients = dict.fromkeys([_user_name(os.geteuid()), self.server_user])
        roles = dict.fromkeys([self.superuser, *self.roles])
        lines = [f"buildmaster {client} {role}" for client in clients for role in roles]
        return f"{_MARKER}: who may log in as which role\n" + "\n".join(lines) + "\n"

    # -- preparing the directory -------------------------------------------------------------

    def _prepare_directory(self) -> None:
        socket_path = os.fsencode(self.socket_path.absolute())
        if len(socket_path) > MAX_SOCKET_PATH:
            raise ClusterDirectoryError(
                f"{self.directory} is too deep for the server's Unix socket"
                f" ({len(socket_path)} bytes with its file name, at most {MAX_SOCKET_PATH}):"
                " use a shorter path"
            )
        if _running_as_root():
            self._check_reachable()
        self.directory.mkdir(parents=True, exist_ok=True)
        if _running_as_root():
            pw = pwd.getpwnam(SERVER_USER_WHEN_ROOT)
            os.chown(self.directory, pw.pw_uid, pw.pw_gid)
            if self.datadir.exists():
                os.chown(self.datadir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.directory, 0o700)

    def _check_reachable(self) -> None:
        """Refuse when the server's user cannot pass through a directory above ours."""
        user = SERVER_USER_WHEN_ROOT
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise ClusterDirectoryError(
                f"running as root, the PostgreSQL server must run as user {user!r}, which"
                " does not exist: create it (e.g. `apt-get install postgresql`), or run as"
                " an ordinary user"
            ) from None
        blocked = first_unsearchable(self.directory, pw.pw_uid, os.getgrouplist(user, pw.pw_gid))
        if blocked is not None:
            st = blocked.stat()
            raise ClusterDirectoryError(
                f"user {user} cannot reach {self.directory}: it may not pass through"
                f" {blocked} (mode {stat.S_IMODE(st.st_mode):o}, owner"
                f" {_user_name(st.st_uid)}). Running as root, the PostgreSQL server runs as"
                f" {user}, and the directories above its own are left as they are: put it"
                f" where {user} can reach it, or run as an ordinary user"
            )

    def _needs_initdb(self) -> bool:
        return not (self.datadir / "PG_VERSION").exists()

    def _configure(self) -> None:
        """Write our settings (at the end of ``postgresql.conf``: they win), ``pg_hba.conf``
        and ``pg_ident.conf``, replacing what an earlier start (or version) wrote."""
        conf = self.datadir / "postgresql.conf"
        text = conf.read_text()
        marker = text.find(f"\n{_MARKER}\n")
        if marker >= 0:
            text = text[:marker]
        conf.write_text(text + self._settings_text())
        for name, content in (
            ("pg_hba.conf", self._hba_text()),
            ("pg_ident.conf", self._ident_text()),
        ):
            path = self.directory / name
            path.write_text(content)
            os.chmod(path, 0o600)
            if _running_as_root():
                pw = pwd.getpwnam(SERVER_USER_WHEN_ROOT)
                os.chown(path, pw.pw_uid, pw.pw_gid)

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
        self._run(self._start_argv(), "pg_ctl start")
        self.port = SOCKET_PORT
        self._start_watchdog()

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
        """Restart the running server (blocking): clients lose their connections, as they
        would when an operator restarts PostgreSQL."""
        if self.port is None:
            raise ClusterError("the cluster is not running")
        argv = self._start_argv()
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

        Preparing the directory and writing the configuration are the only file-system work
        done in the calling thread (a few small files).
        """
        self._prepare_directory()
        if self._needs_initdb():
            await self._run_async(reactor, self._initdb_argv(), "initdb")
        self._configure()
        await self._run_async(reactor, self._start_argv(), "pg_ctl start")
        self.port = SOCKET_PORT
        self._start_watchdog()

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


def _quoted(value: str) -> str:
    """A ``postgresql.conf`` string literal."""
    return "'" + value.replace("'", "''") + "'"
