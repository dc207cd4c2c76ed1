"""``python -m buildmaster.tokens``: the first admin token, straight in the database."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.utils import getProcessOutputAndValue

ROOT = Path(__file__).resolve().parent.parent


async def tokens(*args: str, env: dict[str, str] | None = None) -> tuple[str, str, int]:
    inherited = {k: v for k, v in os.environ.items() if k != "BUILDMASTER_DSN"}
    environment = {**inherited, "PYTHONPATH": str(ROOT), **(env or {})}
    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-m", "buildmaster.tokens", *args], env=environment, path=str(ROOT)
    )
    return out.decode(), err.decode(), code


@pytest_twisted.ensureDeferred
async def test_the_first_admin_token_is_made_listed_and_revoked(api_world: Any, dsn: str) -> None:
    out, err, code = await tokens("create", "--admin", "--description", "ops", "--dsn", dsn)
    assert code == 0, err
    secret = out.strip()
    assert secret.startswith("bm_") and "shown only now" in err
    client = api_world.anonymous.with_token(secret)
    me = await client.get("/api/v1/tokens/current")
    assert me.json["scope"] == "admin" and me.json["description"] == "ops"
    out, err, code = await tokens(
        "create", "--uploader", "~cprov/ubuntu/ppa", env={"BUILDMASTER_DSN": dsn}
    )
    assert code == 0, err
    listing, _, _ = await tokens("list", "--dsn", dsn)
    lines = listing.strip().splitlines()
    assert "admin (ops)" in lines[-2] and "uploader to ~cprov/ubuntu/ppa" in lines[-1]
    assert secret not in listing
    token_id = me.json["id"]
    _, err, code = await tokens("revoke", str(token_id), "--dsn", dsn)
    assert code == 0 and "revoked" in err
    assert (await client.get("/api/v1/tokens/current")).status == 401
    _, err, code = await tokens("create", "--uploader", "~nobody/ubuntu/ppa", "--dsn", dsn)
    assert code == 2 and "no archive ~nobody/ubuntu/ppa" in err
    _, err, code = await tokens("revoke", "9999", "--dsn", dsn)
    assert code == 2 and "no token 9999" in err


@pytest_twisted.ensureDeferred
async def test_without_a_database_it_says_where_to_find_one(tmp_path: Path) -> None:
    _, err, code = await tokens("list")
    assert code == 2 and "--dsn, $BUILDMASTER_DSN or --state-dir" in err
    _, err, code = await tokens("list", "--state-dir", str(tmp_path))
    assert code == 2 and "start the master once first" in err


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_the_embedded_database_of_a_state_directory(
    reactor: Any, reachable_tmp: Path
) -> None:
    """With --state-dir: the running embedded cluster's socket is used; a stopped one is
    started for the command and stopped again."""
    from buildmaster.store.embedded import embedded_cluster, prepare_database

    tmp_path = reachable_tmp
    cluster = embedded_cluster(tmp_path)
    await cluster.start_async(reactor)
    try:
        await prepare_database(reactor, cluster)
        out, err, code = await tokens("create", "--admin", "--state-dir", str(tmp_path))
        assert code == 0, err
        assert out.strip().startswith("bm_")
    finally:
        await cluster.stop_async(reactor)
    listing, err, code = await tokens("list", "--state-dir", str(tmp_path))
    assert code == 0, err
    assert "\tadmin" in listing
    assert not (tmp_path / "postgres" / "data" / "postmaster.pid").exists()
