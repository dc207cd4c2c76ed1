"""The throwaway PostgreSQL cluster used by tests, benchmarks and the embedded default."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psycopg2
import pytest

from buildmaster.store.cluster import (
    ClusterDirectoryError,
    PostgresCluster,
    PostgresNotFound,
    find_bindir,
    first_unsearchable,
)


def _fake_bindir(path: Path) -> Path:
    path.mkdir(parents=True)
    for tool in ("initdb", "pg_ctl", "postgres"):
        (path / tool).write_text("#!/bin/sh\nexit 0\n")
        (path / tool).chmod(0o755)
    return path


def test_debian_layout_newest_version_wins(tmp_path: Path) -> None:
    root = tmp_path / "postgresql"
    _fake_bindir(root / "13" / "bin")
    newest = _fake_bindir(root / "15" / "bin")
    (root / "16" / "bin").mkdir(parents=True)  # no server tools: skipped
    assert find_bindir({"PATH": str(tmp_path / "empty")}, debian_root=root) == newest


def test_explicit_bindir_wins(tmp_path: Path) -> None:
    chosen = _fake_bindir(tmp_path / "mine")
    env = {"PATH": os.environ.get("PATH", ""), "BUILDMASTER_PG_BINDIR": str(chosen)}
    assert find_bindir(env) == chosen


def test_no_binaries_says_how_to_install_them(tmp_path: Path) -> None:
    with pytest.raises(PostgresNotFound) as info:
        find_bindir({"PATH": str(tmp_path)}, debian_root=tmp_path / "nothing")
    assert "apt-get install postgresql" in str(info.value)
    assert "--dsn" in str(info.value)


def _refused(dsn: str) -> bool:
    try:
        psycopg2.connect(dsn, connect_timeout=2).close()
    except psycopg2.OperationalError:
        return True
    return False


def _as_another_user(cluster: PostgresCluster, dsn: str) -> subprocess.CompletedProcess[str]:
    """Try ``dsn`` with psql as user nobody (the tests run as root to do this)."""
    return subprocess.run(
        ["runuser", "-u", "nobody", "--", str(cluster.bindir / "psql"), dsn, "-c", "SELECT 1"],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_throwaway_cluster_is_private_without_fsync_and_leaves_nothing() -> None:
    cluster = PostgresCluster.throwaway_cluster()
    cluster.start()
    try:
        dsn = cluster.dsn()
        conn = psycopg2.connect(dsn)
        with conn, conn.cursor() as cur:
            cur.execute("SHOW fsync")
            assert cur.fetchone() == ("off",)
            # no TCP at all: a Unix socket in the cluster's own directory
            cur.execute("SELECT inet_server_addr(), current_setting('listen_addresses')")
            assert cur.fetchone() == (None, "")
            cur.execute("SELECT current_setting('unix_socket_directories')")
            assert cur.fetchone() == (str(cluster.directory),)
            cur.execute("CREATE ROLE stranger LOGIN")  # exists, but may not log in (peer map)
        conn.close()
        directory = cluster.directory
        assert (directory / "data" / "PG_VERSION").exists()
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        with pytest.raises(psycopg2.OperationalError, match="authentication failed"):
            psycopg2.connect(cluster.dsn(user="stranger"))
        if os.geteuid() == 0:
            other = _as_another_user(cluster, dsn)
            assert other.returncode != 0
            assert "Permission denied" in other.stderr, other.stderr
    finally:
        cluster.stop()
    assert _refused(dsn)
    assert not directory.exists()


def test_unsearchable_directories_are_found_from_the_root_down() -> None:
    modes = {"/": 0o755, "/a": 0o755, "/a/b": 0o700, "/a/b/c": 0o701}
    owners = {"/a/b": 1000}

    def stat_of(path: Path) -> os.stat_result:
        if str(path) not in modes:
            raise FileNotFoundError(path)
        uid = owners.get(str(path), 0)
        return os.stat_result((stat.S_IFDIR | modes[str(path)], 0, 0, 2, uid, 0, 0, 0, 0, 0))

    assert first_unsearchable(Path("/a/b/c/d"), 999, [999], stat_of) == Path("/a/b")
    assert first_unsearchable(Path("/a/b/c/d"), 1000, [1000], stat_of) is None  # its owner
    assert first_unsearchable(Path("/a/x/y"), 999, [999], stat_of) is None  # /a/x is not made yet
    modes["/a/b"] = 0o710
    # in group 0: the group's bits count, not the others' (as the kernel does)
    assert first_unsearchable(Path("/a/b/c/d"), 999, [0], stat_of) == Path("/a/b/c")
    modes["/a/b/c"] = 0o711
    assert first_unsearchable(Path("/a/b/c/d"), 999, [0], stat_of) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as another user only under root")
def test_as_root_a_cluster_out_of_the_servers_reach_is_refused_and_nothing_is_chmodded() -> None:
    closed = Path(tempfile.mkdtemp(prefix="buildmaster-closed-"))  # mode 0700, root's
    try:
        before = {p: p.stat().st_mode for p in (closed, *closed.parents)}
        with pytest.raises(ClusterDirectoryError) as info:
            PostgresCluster(directory=closed / "state" / "postgres").start()
        assert f"may not pass through {closed} (mode 700" in str(info.value)
        assert "run as an ordinary user" in str(info.value)
        assert {p: p.stat().st_mode for p in before} == before
        assert not (closed / "state").exists()
    finally:
        closed.rmdir()


def test_a_path_too_long_for_a_socket_is_refused(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100) / "postgres"
    with pytest.raises(ClusterDirectoryError, match="too deep for the server's Unix socket"):
        PostgresCluster(directory=deep).start()


def test_server_is_stopped_when_its_starter_is_killed() -> None:
    script = textwrap.dedent(
        """
        import os, signal
        from buildmaster.store.cluster import PostgresCluster
        c = PostgresCluster.throwaway_cluster()
        c.start()
        print(c.dsn(), flush=True)
        print(c.directory, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=Path.cwd()
    )
    assert out.returncode == -9, out.stderr
    dsn, directory = out.stdout.splitlines()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (_refused(dsn) and not Path(directory).exists()):
        time.sleep(0.1)
    assert _refused(dsn), "the server outlived the process that started it"
    assert not Path(directory).exists()


def test_a_persistent_cluster_keeps_its_data_across_restarts(reachable_tmp: Path) -> None:
    cluster = PostgresCluster(directory=reachable_tmp / "state" / "postgres")
    cluster.start()
    try:
        conn = psycopg2.connect(cluster.dsn())
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        conn.close()
    finally:
        cluster.stop()
    cluster.start()
    try:
        conn = psycopg2.connect(cluster.dsn())
        with conn.cursor() as cur:
            cur.execute("SELECT x FROM kept")
            assert cur.fetchall() == [(42,)]
            cur.execute("SHOW fsync")
            assert cur.fetchone() == ("on",)  # the embedded default is durable
        conn.close()
    finally:
        cluster.stop()
    assert (reachable_tmp / "state" / "postgres" / "data" / "PG_VERSION").exists()
