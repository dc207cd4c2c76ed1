"""The throwaway PostgreSQL cluster used by tests, benchmarks and the embedded default."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg2
import pytest

from buildmaster.store.cluster import PostgresCluster, PostgresNotFound, find_bindir


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


def test_throwaway_cluster_runs_on_loopback_without_fsync_and_leaves_nothing() -> None:
    cluster = PostgresCluster.throwaway_cluster()
    cluster.start()
    try:
        dsn = cluster.dsn()
        assert "host=127.0.0.1" in dsn
        conn = psycopg2.connect(dsn)
        with conn, conn.cursor() as cur:
            cur.execute("SHOW fsync")
            assert cur.fetchone() == ("off",)
            cur.execute("SELECT inet_server_addr()::text")
            assert cur.fetchone() == ("127.0.0.1/32",)
        conn.close()
        directory = cluster.directory
        assert (directory / "data" / "PG_VERSION").exists()
    finally:
        cluster.stop()
    assert _refused(dsn)
    assert not directory.exists()


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


def test_a_persistent_cluster_keeps_its_data_across_restarts(tmp_path: Path) -> None:
    cluster = PostgresCluster(directory=tmp_path / "state" / "postgres")
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
    assert (tmp_path / "state" / "postgres" / "data" / "PG_VERSION").exists()
