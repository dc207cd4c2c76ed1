"""Migrations, and the constraints that make impossible states impossible."""

from __future__ import annotations

import re
from typing import Any

import pytest
import pytest_twisted

from buildmaster.enums import BuildQueueStatus, PackagePublishingPocket
from buildmaster.sampledata import SampleData, load_sample_data
from buildmaster.store import ConstraintViolation, Database, Store
from buildmaster.store.database import Transaction
from buildmaster.store.schema import LATEST, SchemaTooNew, current_version, load_migrations, migrate


@pytest_twisted.async_yield_fixture
async def empty_db(reactor: Any, empty_dsn: str) -> Any:
    database = Database(reactor, empty_dsn, size=2)
    await database.connect()
    yield database
    await database.close()


def test_migrations_are_numbered_without_gaps() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert LATEST == len(migrations) >= 1
    assert migrations[0].name == "initial"


async def _tables(db: Database) -> set[str]:
    rows = await db.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r[0] for r in rows}


@pytest_twisted.ensureDeferred
async def test_migrate_applies_everything_once_and_records_it(empty_db: Database) -> None:
    assert await current_version(empty_db) == 0
    assert await migrate(empty_db) == list(range(1, LATEST + 1))
    assert await current_version(empty_db) == LATEST
    tables = await _tables(empty_db)
    for table in (
        "processor", "distribution", "distroseries", "distroarchseries", "person", "archive",
        "libraryfilecontent", "libraryfilealias", "sourcepackagerelease",
        "sourcepackagereleasefile", "builder", "build", "buildqueue", "event", "schema_version",
    ):  # fmt: skip
        assert table in tables
    recorded = await empty_db.query("SELECT version, name FROM schema_version ORDER BY version")
    assert recorded == [(m.version, m.name) for m in load_migrations()]

    # applying again changes nothing
    assert await migrate(empty_db) == []
    assert await _tables(empty_db) == tables
    assert len(await empty_db.query("SELECT * FROM schema_version")) == LATEST


@pytest_twisted.ensureDeferred
async def test_a_database_newer_than_the_code_is_refused(empty_db: Database) -> None:
    await migrate(empty_db)
    await empty_db.execute(
        "INSERT INTO schema_version (version, name) VALUES (%s, 'from_the_future')", (LATEST + 1,)
    )
    with pytest.raises(SchemaTooNew, match=f"schema version {LATEST + 1}.*upgrade buildmaster"):
        await migrate(empty_db)


@pytest_twisted.ensureDeferred
async def test_two_masters_migrating_at_once_apply_each_migration_once(
    empty_db: Database, reactor: Any
) -> None:
    other = Database(reactor, empty_db.dsn, size=1)
    await other.connect()
    try:
        from twisted.internet import defer

        results = await defer.gatherResults(
            [
                defer.Deferred.fromCoroutine(migrate(empty_db)),
                defer.Deferred.fromCoroutine(migrate(other)),
            ]
        )
    finally:
        await other.close()
    assert sorted(results, key=len) == [[], list(range(1, LATEST + 1))]


# -- constraints -----------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def seeded(store: Store) -> Any:
    yield await load_sample_data(store)


async def refused(db: Database, sql: str, args: tuple[Any, ...] = ()) -> ConstraintViolation:
    with pytest.raises(ConstraintViolation) as info:
        await db.execute(sql, args)
    return info.value


@pytest_twisted.ensureDeferred
async def test_one_queue_entry_per_build(store: Store, seeded: SampleData) -> None:
    job = await store.queue.get(seeded.waiting_job_id)
    error = await refused(
        store.db,
        "INSERT INTO buildqueue (build, processor, virtualized) VALUES (%s, %s, false)",
        (job.build_id, job.processor_id),
    )
    assert error.constraint == "buildqueue_build_key"
    with pytest.raises(ConstraintViolation):
        await store.queue.createBuildQueueEntry(job.build_id)


@pytest_twisted.ensureDeferred
async def test_at_most_one_job_per_builder(store: Store, seeded: SampleData) -> None:
    # job 1 already runs on bob: job 2 cannot be given to bob as well
    error = await refused(
        store.db,
        "UPDATE buildqueue SET builder = %s, status = 1, date_started = now() WHERE id = %s",
        (seeded.bob.id, seeded.waiting_job_id),
    )
    assert error.constraint == "buildqueue_builder_key"


@pytest_twisted.ensureDeferred
async def test_a_running_job_has_a_builder_and_a_waiting_one_has_none(
    store: Store, seeded: SampleData
) -> None:
    error = await refused(
        store.db, "UPDATE buildqueue SET status = 1 WHERE id = %s", (seeded.waiting_job_id,)
    )
    assert error.constraint == "buildqueue_check"
    error = await refused(
        store.db,
        "UPDATE buildqueue SET status = %s WHERE id = %s",
        (int(BuildQueueStatus.WAITING), seeded.lost_job_id),
    )
    assert error.constraint == "buildqueue_check"


@pytest_twisted.ensureDeferred
async def test_enumerated_columns_only_take_known_values(store: Store, seeded: SampleData) -> None:
    job = await store.queue.get(seeded.waiting_job_id)
    assert (
        await refused(store.db, "UPDATE build SET buildstate = 12 WHERE id = %s", (job.build_id,))
    ).constraint == "build_buildstate_check"
    assert (
        await refused(store.db, "UPDATE build SET pocket = 5 WHERE id = %s", (job.build_id,))
    ).constraint == "build_pocket_check"
    assert (
        await refused(
            store.db, "UPDATE archive SET purpose = 3 WHERE id = %s", (seeded.primary.id,)
        )
    ).constraint == "archive_purpose_check"
    assert (
        await refused(
            store.db, "UPDATE builder SET clean_status = 7 WHERE id = %s", (seeded.bob.id,)
        )
    ).constraint == "builder_clean_status_check"
    assert (
        await refused(
            store.db, "UPDATE buildqueue SET status = 9 WHERE id = %s", (seeded.lost_job_id,)
        )
    ).constraint == "buildqueue_status_check"


@pytest_twisted.ensureDeferred
async def test_a_ppa_always_needs_virtualized_builders(store: Store, seeded: SampleData) -> None:
    error = await refused(
        store.db,
        "UPDATE archive SET require_virtualized = false WHERE id = %s",
        (seeded.cprov_ppa.id,),
    )
    assert error.constraint == "archive_check"


@pytest_twisted.ensureDeferred
async def test_foreign_keys_hold(store: Store, seeded: SampleData) -> None:
    error = await refused(
        store.db,
        "UPDATE buildqueue SET builder = 9999, status = 1 WHERE id = %s",
        (seeded.waiting_job_id,),
    )
    assert error.constraint == "buildqueue_builder_fkey"
    error = await refused(
        store.db, "DELETE FROM processor WHERE id = %s", (seeded.processor_386.id,)
    )
    assert error.constraint is not None and error.constraint.endswith("processor_fkey")


@pytest_twisted.ensureDeferred
async def test_librarian_filenames_cannot_escape(store: Store, seeded: SampleData) -> None:
    content = (await store.db.query("SELECT id FROM libraryfilecontent LIMIT 1"))[0][0]
    for name in ("../etc/passwd", "a/b", "..", "", "x\ny"):
        error = await refused(
            store.db,
            "INSERT INTO libraryfilealias (content, filename) VALUES (%s, %s)",
            (content, name),
        )
        assert error.constraint == "libraryfilealias_filename_check"


@pytest_twisted.ensureDeferred
async def test_the_same_build_cannot_be_live_twice(store: Store, seeded: SampleData) -> None:
    job = await store.queue.get(seeded.waiting_job_id)
    build = await store.builds.get(job.build_id)
    with pytest.raises(ConstraintViolation) as info:
        await store.builds.createBuild(
            build.sourcepackagerelease_id,
            seeded.hoary_i386,
            PackagePublishingPocket.RELEASE,
            seeded.primary,
        )
    assert info.value.constraint == "build_live_key"


@pytest_twisted.ensureDeferred
async def test_the_candidate_query_is_an_index_scan(store: Store, seeded: SampleData) -> None:
    from buildmaster.store.builds import _CANDIDATE_ID

    # a big queue of waiting jobs for both processors, trusted and virtualized
    await store.db.execute(
        "INSERT INTO sourcepackagerelease (name, version, component, upload_distroseries)"
        " SELECT 'pkg' || i, '1.0', 1, %s FROM generate_series(1, 20000) i",
        (seeded.hoary.id,),
    )
    await store.db.execute(
        "INSERT INTO build (sourcepackagerelease, distroarchseries, archive, pocket, processor, virtualized)"
        " SELECT spr.id, das.id, %s, 0, das.processor, false FROM sourcepackagerelease spr"
        " CROSS JOIN distroarchseries das WHERE spr.name LIKE 'pkg%%'",
        (seeded.primary.id,),
    )
    await store.db.execute(
        "INSERT INTO buildqueue (build, lastscore, processor, virtualized, shareowner)"
        " SELECT id, (id * 7919) %% 5000, processor, (id %% 3 = 0),"
        "  CASE WHEN id %% 4 = 0 THEN (SELECT owner FROM archive WHERE id = %s) END"
        " FROM build WHERE id > 2",
        (seeded.cprov_ppa.id,),  # a quarter of them another owner's
    )
    await store.db.execute("ANALYZE buildqueue")
    await store.db.execute("ANALYZE shareusage_stripe")
    # the claims run two queries of the queue (migration 0017): the aged jobs, and an
    # owner's best jobs (for each owner in turn), as stored in the database, planned once
    # for any arguments as PL/pgSQL does in the master's sessions (plan_cache_mode)
    queries = []
    for function in ("buildqueue_aged", "buildqueue_best_of"):
        [(source,)] = await store.db.query(
            "SELECT prosrc FROM pg_proc WHERE proname = %s", (function,)
        )
        found = re.findall(r"(SELECT coalesce\(array_agg.*?);", source, re.S)
        assert len(found) == 1, source
        queries.append(found[0])

    def generic(query: str) -> str:
        query = query.replace(" INTO jobs", "")
        for n, name in enumerate(("processors", "virt", "avoid", "owner", "n"), start=1):
            query = re.sub(rf"\b{name}\b", f"${n}", query)
        return query

    async def explain_generic(tx: Transaction, query: str) -> list[tuple[Any, ...]]:
        await tx.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await tx.execute(
            "PREPARE candidate_generic (integer[], boolean, integer[], integer, integer) AS "
            + generic(query)
        )
        try:
            return await tx.query(
                "EXPLAIN EXECUTE candidate_generic (%s, %s, %s, %s, %s)",
                ([seeded.processor_386.id], False, [7, 8], 9, 1),
            )
        finally:
            await tx.execute("DEALLOCATE candidate_generic")

    indexes = ("buildqueue_age_idx", "buildqueue_share_idx")
    for query, index in zip(queries, indexes, strict=True):
        text = "\n".join(r[0] for r in await store.db.transaction(explain_generic, query))
        assert f"Index Scan using {index}" in text, text
        assert "Seq Scan on buildqueue" not in text and "Sort Key: q." not in text, text
    # and the claim calls it once (an InitPlan), not once per row
    plan = await store.db.query(
        f"EXPLAIN UPDATE buildqueue q SET status = 1 WHERE q.id = ({_CANDIDATE_ID})",
        {"processors": [seeded.processor_386.id], "virtualized": False, "avoid": [7, 8]},
    )
    text = "\n".join(r[0] for r in plan)
    assert "InitPlan" in text and "Index Scan using buildqueue_pkey" in text, text
