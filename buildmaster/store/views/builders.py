"""Builders as operators see them: state, current build, failnotes, history."""

from __future__ import annotations

import datetime
from typing import Any

import attrs

from buildmaster.access import Grant
from buildmaster.builderstate import BuilderState, builder_state
from buildmaster.enums import BuildStatus
from buildmaster.model import Builder, BuildQueue
from buildmaster.store.builders import BUILDER_WIDTH, builder_columns, builder_from_row
from buildmaster.store.builds import QUEUE_WIDTH, queue_columns, queue_from_row
from buildmaster.store.database import Database, NotFound
from buildmaster.store.views.builds import (
    EVENT_COLUMNS,
    EVENT_FROM,
    BuildFilter,
    BuildSummary,
    BuildViews,
    EventView,
    event_from_row,
    visibility_args,
    visible_sql,
)

__all__ = ["BuilderOverview", "BuilderDetail", "BuilderViews", "CurrentBuild"]


@attrs.frozen
class CurrentBuild:
    """What a builder is building, as a list of builders shows it."""

    id: int
    status: BuildStatus
    source_name: str
    source_version: str
    arch_tag: str
    started: datetime.datetime | None

    @property
    def title(self) -> str:
        return f"{self.source_name} {self.source_version} on {self.arch_tag}"


@attrs.frozen
class BuilderOverview:
    builder: Builder
    processors: tuple[str, ...]
    state: BuilderState
    job: BuildQueue | None
    #: the build it runs (``None`` when idle, or when it is a private build the reader may
    #: not see: ``job`` still says it is busy)
    current: CurrentBuild | None
    #: when it was last taken out of service, while it is out of service
    out_of_service_since: datetime.datetime | None


@attrs.frozen
class BuilderDetail:
    overview: BuilderOverview
    recent_builds: tuple[BuildSummary, ...]
    #: its latest events, newest first
    events: tuple[EventView, ...]


_OVERVIEW_SQL = (
    f"SELECT {builder_columns('br')}, {queue_columns('q')},"
    " coalesce((SELECT array_agg(p.name ORDER BY p.name) FROM builderprocessor bp"
    "  JOIN processor p ON p.id = bp.processor WHERE bp.builder = br.id), '{}'),"
    " CASE WHEN NOT br.builderok THEN (SELECT e.date FROM event e WHERE e.builder = br.id"
    "  AND e.kind IN ('failed', 'disabled') ORDER BY e.id DESC LIMIT 1) END,"
    " b.id, b.buildstate, s.name, s.version, das.architecturetag, b.date_started,"
    f" b.id IS NOT NULL AND {visible_sql()}"
    " FROM builder br LEFT JOIN buildqueue q ON q.builder = br.id"
    " LEFT JOIN build b ON b.id = q.build"
    " LEFT JOIN sourcepackagerelease s ON s.id = b.sourcepackagerelease"
    " LEFT JOIN distroarchseries das ON das.id = b.distroarchseries"
    " LEFT JOIN archive a ON a.id = b.archive"
)
_STATES = {int(s): s for s in BuildStatus}


class BuilderViews:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._builds = BuildViews(db)

    async def _overviews(
        self, where: str, args: dict[str, Any], grant: Grant
    ) -> list[BuilderOverview]:
        rows = await self._db.query(
            f"{_OVERVIEW_SQL} WHERE {where} ORDER BY br.name",
            {**args, **visibility_args(grant)},
            prepared=True,
        )
        found = []
        for row in rows:
            builder = builder_from_row(row[:BUILDER_WIDTH])
            queue_row = row[BUILDER_WIDTH : BUILDER_WIDTH + QUEUE_WIDTH]
            job = queue_from_row(queue_row) if queue_row[0] is not None else None
            names, since, build_id, state, name, version, tag, started, visible = row[
                BUILDER_WIDTH + QUEUE_WIDTH :
            ]
            current = (
                CurrentBuild(build_id, _STATES[state], name, version, tag, started)
                if visible
                else None
            )
            found.append(
                BuilderOverview(
                    builder=builder,
                    processors=tuple(names),
                    state=builder_state(builder, job),
                    job=job,
                    current=current,
                    out_of_service_since=since,
                )
            )
        return found

    async def all(self, grant: Grant, include_inactive: bool = False) -> list[BuilderOverview]:
        """Every (active) builder by name, with its state and current build."""
        where = "true" if include_inactive else "br.active"
        return await self._overviews(where, {}, grant)

    async def overview(self, name: str, grant: Grant) -> BuilderOverview:
        """The builder called ``name`` (active or not). :raises NotFound:"""
        found = await self._overviews("br.name = %(name)s", {"name": name}, grant)
        if not found:
            raise NotFound(f"no builder called {name!r}")
        return found[0]

    async def detail(
        self, name: str, grant: Grant, recent: int = 10, events: int = 50
    ) -> BuilderDetail:
        """The builder with its latest builds (those the grant may see) and events."""
        overview = await self.overview(name, grant)
        builder_id = overview.builder.id
        builds = await self._builds.page(grant, BuildFilter(builder_id=builder_id), limit=recent)
        event_rows = await self._db.query(
            BUILDER_EVENTS_SQL,
            {"builder": builder_id, "limit": events, **visibility_args(grant)},
            prepared=True,
        )
        return BuilderDetail(
            overview,
            builds.builds,
            tuple(_event_for(r[:-1], visible=r[-1]) for r in event_rows),
        )


#: a builder's latest events, and whether the reader may see each one's build: looked up
#: for each event (LATERAL), as an EXISTS subquery PostgreSQL may hash, reading every build
BUILDER_EVENTS_SQL = (
    f"SELECT {EVENT_COLUMNS}, e.build IS NULL OR v.visible IS NOT NULL"
    f" FROM {EVENT_FROM} LEFT JOIN LATERAL (SELECT true AS visible FROM build b"
    f"  JOIN archive a ON a.id = b.archive WHERE b.id = e.build AND {visible_sql()}) v"
    f" ON true"
    f" WHERE e.builder = %(builder)s ORDER BY e.id DESC LIMIT %(limit)s"
)


def _event_for(row: tuple[Any, ...], visible: bool) -> EventView:
    """The event, or what may be said of it when it concerns a private build the reader may
    not see: that something happened to a private build."""
    event = event_from_row(row)
    if visible:
        return event
    return attrs.evolve(event, build_id=None, message="(a private build)")
