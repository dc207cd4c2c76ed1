"""Builders run untrusted code: hostile results are refused with a clear reason on the build,
bounded in memory and disk, and never crash the master."""

from __future__ import annotations

import gzip
from typing import Any

import attrs
import pytest
import pytest_twisted

from buildmaster.config import MasterConfig
from buildmaster.enums import BuildStatus
from buildmaster.store import Store
from buildmaster.testing import wait_for

MiB = 1024 * 1024
CONFIG = MasterConfig(
    socket_timeout=5.0,
    scan_interval=3600,
    max_log_size=MiB,
    max_result_file_size=MiB,
    vm_resume_command="true %(vm_host)s",
)


async def finish_hostile(reactor: Any, make_world: Any, kind: str) -> tuple[Any, Any, Any]:
    world = await make_world(CONFIG, build_time=0.2)
    sim, builder = await world.builder("hostile")
    sim.faults.hostile_results = kind
    build = await world.queue("victim")
    await world.harness.master.scan_all()
    await wait_for(
        reactor, lambda: sim.state.state == "BuilderStatus.WAITING", 60, "the build to end"
    )
    await world.harness.master.scan_all()
    return world, sim, build


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("traversal", "results refused: unsafe result file name '../../../etc/passwd'"),
        ("bad_sha1", "results refused: result file 'evil_1.0_all.deb' refused"),
        ("many_files", "results refused: the builder listed 1500 result files (limit 1000)"),
        ("endless_file", "is larger than 1048576 bytes"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_hostile_results_are_refused_with_a_reason(
    reactor: Any, make_world: Any, store: Store, kind: str, reason: str
) -> None:
    world, sim, build = await finish_hostile(reactor, make_world, kind)
    build = await store.builds.get(build)
    assert build.status is BuildStatus.FAILEDTOUPLOAD
    assert build.failure_reason is not None and reason in build.failure_reason
    assert await store.builds.files(build) == []  # nothing of it is kept
    kept = await store.db.query(
        "SELECT count(*) FROM libraryfilealias WHERE filename LIKE 'victim%%'"
        " AND filename NOT LIKE '%%.dsc' AND expires IS NULL"
    )
    assert kept[0][0] == 0  # what was stored before the refusal expires: the collector takes it
    # nothing the builder named was stored, nor anything bigger than the limit
    names = {r[0] for r in await store.db.query("SELECT filename FROM libraryfilealias")}
    assert not any("passwd" in n or n.startswith("evil") or n.startswith("file0") for n in names)
    biggest = await store.db.query("SELECT max(filesize) FROM libraryfilecontent")
    assert biggest[0][0] <= MiB
    # the log is kept, the builder was cleaned, and the master goes on
    assert build.log_id is not None
    assert sim.state.state == "BuilderStatus.IDLE"
    sim.faults.hostile_results = None
    second = await world.queue("next")
    await world.harness.master.scan_all()
    assert sim.state.build_id == second.cookie
    # the build can be retried once the builder behaves
    await world.harness.master.retry(build)
    assert (await store.builds.get(build)).status is BuildStatus.NEEDSBUILD


@pytest_twisted.ensureDeferred
async def test_an_endless_log_is_cut_at_the_limit(
    reactor: Any, make_world: Any, store: Store
) -> None:
    world, sim, build = await finish_hostile(reactor, make_world, "huge_log")
    build = await store.builds.get(build)
    assert build.status is BuildStatus.FULLYBUILT  # the results themselves are fine
    assert build.failure_reason == "build log larger than 1048576 bytes: truncated"
    assert len(await store.builds.files(build)) == 2
    assert build.log_id is not None
    text = gzip.decompress(await world.harness.librarian.read_bytes(build.log_id))
    assert MiB - 64 * 1024 <= len(text) <= MiB + 1024
    assert text.endswith(b"[buildmaster: build log larger than 1048576 bytes: truncated]\n")


@pytest_twisted.ensureDeferred
async def test_endless_result_files_are_cut_at_the_builds_budget(
    reactor: Any, make_world: Any, store: Store
) -> None:
    """Two result files that never end, each allowed 64 MiB: together they may take 2 MiB,
    and the download stops there (before, each ran to its own limit)."""
    config = attrs.evolve(CONFIG, max_result_file_size=64 * MiB, max_result_bytes=2 * MiB)
    world = await make_world(config, build_time=0.2)
    sim, _ = await world.builder("hostile")
    sim.faults.hostile_results = "endless_file"  # the .deb and the .changes never end
    build = await world.queue("victim")
    await world.harness.master.scan_all()
    await wait_for(
        reactor, lambda: sim.state.state == "BuilderStatus.WAITING", 60, "the build to end"
    )
    await world.harness.master.scan_all()
    build = await store.builds.get(build)
    assert build.status is BuildStatus.FAILEDTOUPLOAD
    assert build.failure_reason == (
        "results refused: the result files are larger than 2097152 bytes together"
    )
    assert await store.builds.files(build) == []
    # nothing of them was stored for good, nor anything near a file's own limit
    kept = await store.db.query(
        "SELECT count(*) FROM libraryfilealias WHERE filename LIKE 'victim%%'"
        " AND filename NOT LIKE '%%.dsc' AND expires IS NULL"
    )
    assert kept[0][0] == 0
    biggest = await store.db.query("SELECT max(filesize) FROM libraryfilecontent")
    assert biggest[0][0] <= 2 * MiB
    assert build.log_id is not None and sim.state.state == "BuilderStatus.IDLE"
