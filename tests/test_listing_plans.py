"""Build listings (and a builder's events) read the rows they show, not the whole table.

The listings' statements are prepared and run with generic plans (planned once, without
the values: the master's sessions set ``plan_cache_mode = force_generic_plan``). A plan
that walks every build from the newest, filtering, is cheap for a builder with many builds
and ruinous for one with none: at a million builds a builder's page took 200 ms. Each case
here runs the listing's own statement under its generic plan with ``EXPLAIN ANALYZE`` over
20,000 builds and counts the build rows PostgreSQL read.
"""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted

from buildmaster.access import ANONYMOUS
from buildmaster.enums import BuildStatus
from buildmaster.sampledata import load_sample_data
from buildmaster.store import Store
from buildmaster.store.database import Transaction, prepared_statement
from buildmaster.store.views.builders import BUILDER_EVENTS_SQL
from buildmaster.store.views.builds import BuildFilter, page_statement, visibility_args

BUILDS = 20_000
LIMIT = 50


def _build_rows_read(plan: dict[str, Any], table: str = "build") -> int:
    """The rows of ``table`` the plan's nodes read (kept or filtered out), every loop."""
    read = 0
    if plan.get("Relation Name") == table:
        kept = plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)
        read += int(kept * plan.get("Actual Loops", 1))
    for child in plan.get("Plans", ()):
        read += _build_rows_read(child, table)
    return read


async def _rows_read(store: Store, where: BuildFilter, before: int | None = None) -> int:
    sql, args = page_statement(ANONYMOUS, where, before, LIMIT)
    return await _generic_rows_read(store, sql, args, "build")


async def _generic_rows_read(store: Store, sql: str, args: dict[str, Any], table: str) -> int:
    """The rows of ``table`` that ``sql`` reads under its generic plan."""
    statement = prepared_statement(sql)
    name = "listing_under_test"
    prepare = statement.prepare.replace(f"PREPARE {statement.name} ", f"PREPARE {name} ", 1)
    execute = statement.execute.replace(f"EXECUTE {statement.name}", f"EXECUTE {name}", 1)

    async def explain(tx: Transaction) -> Any:
        await tx.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await tx.execute(prepare)
        rows = await tx.query(
            f"EXPLAIN (ANALYZE, FORMAT JSON) {execute}", statement.arguments(args)
        )
        await tx.execute(f"DEALLOCATE {name}")
        return rows[0][0]

    result = await store.db.transaction(explain)
    document = json.loads(result) if isinstance(result, str) else result
    return _build_rows_read(document[0]["Plan"], table)


async def _finished_builds(store: Store, data: Any, builder_id: int | None) -> None:
    """``BUILDS`` finished builds of the primary archive (on ``builder_id``), ANALYZEd."""
    template = await store.db.query(
        "SELECT id FROM build WHERE archive = %s ORDER BY id LIMIT 1", (data.primary.id,)
    )
    await store.db.execute(
        "INSERT INTO build (sourcepackagerelease, distroarchseries, archive, pocket,"
        " processor, virtualized, buildstate, builder, date_started, date_finished)"
        " SELECT b.sourcepackagerelease, b.distroarchseries, b.archive, b.pocket,"
        " b.processor, b.virtualized, %s, %s, now(), now()"
        " FROM build b, generate_series(1, %s) WHERE b.id = %s",
        (int(BuildStatus.FULLYBUILT), builder_id, BUILDS, template[0][0]),
    )
    await store.db.execute("ANALYZE build")


@pytest_twisted.ensureDeferred
async def test_a_listing_reads_only_the_builds_it_shows(store: Store) -> None:
    data = await load_sample_data(store)
    busy = data.bob
    idle = await store.builders.new("idle", "http://127.0.0.1:9/", [data.processor_386])
    # finished builds of the primary archive, all on one builder
    await _finished_builds(store, data, busy.id)
    newest = (await store.db.query("SELECT max(id) FROM build"))[0][0]

    # what a page shows is read twice (its ids, then its rows): about 2 x 50
    bound = 3 * LIMIT
    cases = {
        "a builder that built nothing": BuildFilter(builder_id=idle.id),
        "a builder that built 20,000": BuildFilter(builder_id=busy.id),
        "a state no build is in": BuildFilter(states=(BuildStatus.SUPERSEDED,)),
        "a state most builds are in": BuildFilter(states=(BuildStatus.FULLYBUILT,)),
        "a PPA with a few builds": BuildFilter(archive_id=data.cprov_ppa.id),
        "a builder's failures": BuildFilter(
            builder_id=idle.id, states=(BuildStatus.FAILEDTOBUILD,)
        ),
        "every build": BuildFilter(),
    }
    read = {what: await _rows_read(store, where) for what, where in cases.items()}
    assert all(n <= bound for n in read.values()), read
    # and deep in the list
    deep = await _rows_read(store, BuildFilter(builder_id=busy.id), before=newest - BUILDS // 2)
    assert deep <= bound, deep


@pytest_twisted.ensureDeferred
async def test_a_builders_events_read_only_their_own_builds(store: Store) -> None:
    """A builder's page lists its 50 latest events, each with whether the reader may see
    its build. As a subquery, PostgreSQL ran that check hashed once its estimates grew:
    every build read (and joined to its archive) for each page, 65 ms at 80,000 builds in
    throughput.py. Each event's build is looked up instead, whatever the estimates."""
    data = await load_sample_data(store)
    farm = [await store.builders.new(f"b{i}", "http://127.0.0.1:9/", []) for i in range(100)]
    ids = [b.id for b in farm]
    await _finished_builds(store, data, None)
    newest = (await store.db.query("SELECT max(id) FROM build"))[0][0]
    # the farm's events, the builders' turns interleaved, each about one of the builds
    await store.db.execute(
        "INSERT INTO event (kind, message, builder, build) SELECT 'dispatched', 'a build',"
        " (%s::integer[])[1 + n %% %s], %s - n %% %s FROM generate_series(1, %s) n",
        (ids, len(ids), newest, BUILDS, 5 * BUILDS),
    )
    await store.db.execute("ANALYZE event")
    args = {"builder": ids[0], "limit": LIMIT, **visibility_args(ANONYMOUS)}
    read = {
        table: await _generic_rows_read(store, BUILDER_EVENTS_SQL, args, table)
        for table in ("event", "build")
    }
    assert all(n <= 2 * LIMIT for n in read.values()), read
