"""Builds as operators see them: listed with filters (keyset pagination), or one in full.

Long: a listing and a build in full share their filters, columns and row shaping, and each
is one statement; read together, the SQL and what is made of its rows stay in step.
"""

from __future__ import annotations

import datetime
from typing import Any

import attrs

from buildmaster.access import Grant
from buildmaster.enums import BuildStatus, SourcePackageUrgency
from buildmaster.eventtext import describe_event
from buildmaster.model import Archive, Build, BuildFile, BuildQueue, LibraryFile
from buildmaster.scoring import ScoreInputs, ScorePart, score_parts
from buildmaster.store.archives import archive_columns, archive_from_row
from buildmaster.store.builds import (
    BUILD_WIDTH,
    QUEUE_WIDTH,
    build_columns,
    build_from_row,
    queue_columns,
    queue_from_row,
)
from buildmaster.store.database import Database, NotFound
from buildmaster.store.files import (
    LIBRARYFILE_COLUMNS,
    LIBRARYFILE_WIDTH,
    library_file_from_row,
)

__all__ = [
    "BuildSummary",
    "BuildFilter",
    "BuildPage",
    "EventView",
    "EVENT_COLUMNS",
    "EVENT_FROM",
    "event_from_row",
    "BuildDetail",
    "BuildViews",
    "SUMMARY_COLUMNS",
    "SUMMARY_FROM",
    "summary_from_row",
    "visible_sql",
    "visibility_args",
]

_ARCHIVE_WIDTH = 13

#: Everything a build's summary shows, from :data:`SUMMARY_FROM`.
SUMMARY_COLUMNS = (
    f"{build_columns('b')}, s.name, s.version, d.name, ds.name, das.architecturetag, p.name,"
    f" {archive_columns('a', 'o', 'ad')}, br.name, {queue_columns('q')},"
    " extract(epoch FROM q.estimated_duration)"
)
#: ``build b`` with what its summary needs; the queue entry (``q``) is a LEFT JOIN
SUMMARY_FROM = (
    "build b JOIN sourcepackagerelease s ON s.id = b.sourcepackagerelease"
    " JOIN distroarchseries das ON das.id = b.distroarchseries"
    " JOIN distroseries ds ON ds.id = das.distroseries"
    " JOIN distribution d ON d.id = ds.distribution"
    " JOIN processor p ON p.id = b.processor"
    " JOIN archive a ON a.id = b.archive JOIN person o ON o.id = a.owner"
    " JOIN distribution ad ON ad.id = a.distribution"
    " LEFT JOIN builder br ON br.id = b.builder"
    " LEFT JOIN buildqueue q ON q.build = b.id"
)


def visible_sql(alias: str = "a") -> str:
    """A condition on the archive ``alias``: shown to the grant of :func:`visibility_args`."""
    return f"(NOT {alias}.private OR %(see_all)s OR {alias}.id = ANY(%(see_archives)s::integer[]))"


def visibility_args(grant: Grant) -> dict[str, Any]:
    return {"see_all": grant.sees_every_archive, "see_archives": sorted(grant.archive_ids)}


@attrs.frozen
class BuildSummary:
    """A build with the names a person reads: source, architecture, archive, builder."""

    build: Build
    source_name: str
    source_version: str
    distribution: str
    series: str
    arch_tag: str
    processor: str
    archive: Archive
    builder_name: str | None
    #: its queue entry while it waits or runs
    job: BuildQueue | None
    #: the queue entry's estimated duration, in seconds
    estimated_seconds: float | None

    @property
    def id(self) -> int:
        return self.build.id

    @property
    def status(self) -> BuildStatus:
        return self.build.status

    @property
    def title(self) -> str:
        return f"{self.source_name} {self.source_version} on {self.arch_tag}"

    @property
    def architecture(self) -> str:
        """``ubuntu/hoary/i386``."""
        return f"{self.distribution}/{self.series}/{self.arch_tag}"


def summary_from_row(
    row: tuple[Any, ...], archives: dict[tuple[Any, ...], Archive] | None = None
) -> BuildSummary:
    """A summary from the columns of :data:`SUMMARY_COLUMNS`; ``archives`` caches the
    archives of a page of them (most builds of a page share a few)."""
    build = build_from_row(row[:BUILD_WIDTH])
    rest = row[BUILD_WIDTH:]
    archive_row = rest[6 : 6 + _ARCHIVE_WIDTH]
    if archives is None:
        archive = archive_from_row(archive_row)
    else:
        archive = archives.get(archive_row) or archives.setdefault(
            archive_row, archive_from_row(archive_row)
        )
    after = rest[6 + _ARCHIVE_WIDTH :]
    queue_row = after[1 : 1 + QUEUE_WIDTH]
    job = queue_from_row(queue_row) if queue_row[0] is not None else None
    estimate = after[1 + QUEUE_WIDTH]
    return BuildSummary(
        build=build,
        source_name=rest[0],
        source_version=rest[1],
        distribution=rest[2],
        series=rest[3],
        arch_tag=rest[4],
        processor=rest[5],
        archive=archive,
        builder_name=after[0],
        job=job,
        estimated_seconds=float(estimate) if estimate is not None else None,
    )


@attrs.frozen
class BuildFilter:
    """Which builds a listing shows (every condition given must hold)."""

    states: tuple[BuildStatus, ...] = ()
    archive_id: int | None = None
    source_name: str | None = None
    builder_id: int | None = None
    arch_tag: str | None = None
    created_after: datetime.datetime | None = None
    created_before: datetime.datetime | None = None
    finished_after: datetime.datetime | None = None
    finished_before: datetime.datetime | None = None


@attrs.frozen
class BuildPage:
    builds: tuple[BuildSummary, ...]
    #: the ``before`` of the next page (older builds), ``None`` on the last page
    next_before: int | None


@attrs.frozen
class EventView:
    """An event of a build's or a builder's history, with a sentence for people."""

    id: int
    date: datetime.datetime
    kind: str
    message: str
    build_id: int | None
    builder_id: int | None
    builder_name: str | None

    @property
    def text(self) -> str:
        return describe_event(self.kind, self.message, self.builder_name)


EVENT_COLUMNS = "e.id, e.date, e.kind, e.message, e.build, e.builder, ebr.name"
EVENT_FROM = "event e LEFT JOIN builder ebr ON ebr.id = e.builder"


def event_from_row(row: tuple[Any, ...]) -> EventView:
    return EventView(*row)


@attrs.frozen
class BuildDetail:
    """One build in full (what ``GET /api/v1/builds/<id>`` shows)."""

    summary: BuildSummary
    events: tuple[EventView, ...]
    files: tuple[BuildFile, ...]
    log: LibraryFile | None
    #: how its score is made (the queue entry's score may be a manual one instead)
    score_parts: tuple[ScorePart, ...]


#: a build's summary and its log file (LEFT JOINed: NULLs when it has none)
_WITH_LOG_SQL = (
    f"SELECT {SUMMARY_COLUMNS}, {LIBRARYFILE_COLUMNS} FROM {SUMMARY_FROM}"
    " LEFT JOIN libraryfilealias lfa ON lfa.id = b.log"
    " LEFT JOIN libraryfilecontent lfc ON lfc.id = lfa.content"
    f" WHERE b.id = %(id)s AND {visible_sql()}"
)


def _arrays(columns: str, order: str) -> str:
    """``array_agg`` of each of ``columns`` (comma-separated), in ``order``."""
    return ", ".join(f"array_agg({c.strip()} ORDER BY {order})" for c in columns.split(","))


_FILE_COLUMNS = LIBRARYFILE_COLUMNS.replace("lfa.", "fa.").replace("lfc.", "fc.")

#: one build in full, in one statement: its summary, its log file, its whole history and
#: its files (each column of them as an array, in order), and what its score is made of
_DETAIL_SQL = (
    f"SELECT {SUMMARY_COLUMNS}, {LIBRARYFILE_COLUMNS}, c.name, s.urgency, s.section,"
    " ev.*, bfs.*"
    f" FROM {SUMMARY_FROM}"
    " JOIN component c ON c.id = s.component"
    " LEFT JOIN libraryfilealias lfa ON lfa.id = b.log"
    " LEFT JOIN libraryfilecontent lfc ON lfc.id = lfa.content"
    f" LEFT JOIN LATERAL (SELECT {_arrays(EVENT_COLUMNS, 'e.id')}"
    f"  FROM {EVENT_FROM} WHERE e.build = b.id) ev ON true"
    f" LEFT JOIN LATERAL (SELECT {_arrays('bf.filename, ' + _FILE_COLUMNS, 'bf.filename')}"
    "  FROM buildfile bf JOIN libraryfilealias fa ON fa.id = bf.libraryfile"
    "  JOIN libraryfilecontent fc ON fc.id = fa.content WHERE bf.build = b.id) bfs ON true"
    f" WHERE b.id = %(id)s AND {visible_sql()}"
)
_EVENT_WIDTH = len(EVENT_COLUMNS.split(","))


def _columns(arrays: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """Rows from arrays of their columns (``NULL`` arrays: no rows)."""
    if arrays[0] is None:
        return []
    return list(zip(*arrays, strict=True))


def page_statement(
    grant: Grant, where: BuildFilter, before: int | None, limit: int
) -> tuple[str, dict[str, Any]]:
    """The statement of :meth:`BuildViews.page` and its arguments (named placeholders)."""
    conditions = [visible_sql()]
    args: dict[str, Any] = {"limit": limit, **visibility_args(grant)}
    if before is not None:
        conditions.append("b.id < %(before)s")
        args["before"] = before
    # The statement is prepared, and its plan generic: planned once, without the
    # values. Given "builder = $1 ORDER BY id DESC LIMIT $2", that plan walks every build
    # from the newest looking for the builder's, expecting one build in ten to match;
    # for a builder with none (or a state or an archive with few builds) it read all of
    # them: 200 ms at a million builds. So one column drives the walk: the page is
    # ordered by it and then by id, which only its (column, id) index gives without a
    # sort, and it is compared as a range of one value, which the plan cannot fold
    # into a constant (as it does an equality, and then orders by id alone).
    driver = None
    if where.source_name is None and where.finished_after is None:
        if where.builder_id is not None:
            driver = "builder"
        elif where.archive_id is not None:
            driver = "archive"
        elif len(where.states) == 1:
            driver = "buildstate"
    for column, key, value in (
        ("buildstate", "state", int(where.states[0]) if len(where.states) == 1 else None),
        ("archive", "archive", where.archive_id),
        ("builder", "builder", where.builder_id),
    ):
        if value is None:
            continue
        args[key] = value
        if column == driver:
            conditions.append(f"b.{column} >= %({key})s AND b.{column} <= %({key})s")
        else:
            conditions.append(f"b.{column} = %({key})s")
    if len(where.states) > 1:
        conditions.append("b.buildstate = ANY(%(states)s::integer[])")
        args["states"] = [int(s) for s in where.states]
    if where.source_name is not None:
        # the releases first (an array), then their builds by index: never a walk
        # through every build looking for them
        conditions.append(
            "b.sourcepackagerelease = ANY(ARRAY(SELECT id FROM sourcepackagerelease"
            " WHERE name = %(name)s))"
        )
        args["name"] = where.source_name
    if where.arch_tag is not None:
        conditions.append("das.architecturetag = %(arch)s")
        args["arch"] = where.arch_tag
    for name, column, op in (
        ("created_after", "b.datecreated", ">="),
        ("created_before", "b.datecreated", "<"),
        ("finished_after", "b.date_finished", ">="),
        ("finished_before", "b.date_finished", "<"),
    ):
        value = getattr(where, name)
        if value is not None:
            conditions.append(f"{column} {op} %({name})s")
            args[name] = value
    if where.finished_after is not None:
        # the builds finished in the window, found through their index first: walking
        # the builds from the newest would pass every build finished after the window
        window = "date_finished >= %(finished_after)s" + (
            " AND date_finished < %(finished_before)s" if where.finished_before is not None else ""
        )
        conditions.append(f"b.id = ANY(ARRAY(SELECT id FROM build WHERE {window}))")
    # The page's ids first, from the build table alone (an index in id order), then
    # what the page shows of those ids: the plan of the ids does not depend on the
    # joins, nor the joins' on how many builds match. Prepared: planning the joins costs
    # PostgreSQL more than running them, and the texts are few (one per combination of
    # the filters a client uses).
    joined = " JOIN distroarchseries das ON das.id = b.distroarchseries" if where.arch_tag else ""
    sql = (
        f"SELECT {SUMMARY_COLUMNS} FROM {SUMMARY_FROM}"
        " WHERE b.id = ANY(ARRAY("
        f"  SELECT b.id FROM build b JOIN archive a ON a.id = b.archive{joined}"
        f"  WHERE {' AND '.join(conditions)}"
        f"  ORDER BY {f'b.{driver} DESC, ' if driver else ''}b.id DESC LIMIT %(limit)s))"
        " ORDER BY b.id DESC"
    )
    return sql, args


class BuildViews:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def summary(self, build_id: int, grant: Grant) -> BuildSummary:
        """The build, if the grant may see it. :raises NotFound: otherwise too."""
        return (await self.with_log(build_id, grant))[0]

    async def with_log(
        self, build_id: int, grant: Grant
    ) -> tuple[BuildSummary, LibraryFile | None]:
        """The build (if the grant may see it) and its collected log, in one statement.

        :raises NotFound: for an unknown build, or one the grant may not see.
        """
        rows = await self._db.query(
            _WITH_LOG_SQL, {"id": build_id, **visibility_args(grant)}, prepared=True
        )
        if not rows:
            raise NotFound(f"no build {build_id}")
        row = rows[0]
        log = library_file_from_row(row[-LIBRARYFILE_WIDTH:]) if row[-LIBRARYFILE_WIDTH] else None
        return summary_from_row(row[:-LIBRARYFILE_WIDTH]), log

    async def summaries(self, build_ids: list[int], grant: Grant) -> dict[int, BuildSummary]:
        """The builds of ``build_ids`` the grant may see, by id."""
        if not build_ids:
            return {}
        rows = await self._db.query(
            f"SELECT {SUMMARY_COLUMNS} FROM {SUMMARY_FROM}"
            f" WHERE b.id = ANY(%(ids)s::integer[]) AND {visible_sql()}",
            {"ids": build_ids, **visibility_args(grant)},
            prepared=True,
        )
        found = (summary_from_row(r) for r in rows)
        return {s.id: s for s in found}

    async def page(
        self, grant: Grant, where: BuildFilter, before: int | None = None, limit: int = 50
    ) -> BuildPage:
        """Builds newest first, ``limit`` of them with ids below ``before``; private ones
        only if the grant may see them."""
        sql, args = page_statement(grant, where, before, limit)
        rows = await self._db.query(sql, args, prepared=True)
        archives: dict[tuple[Any, ...], Archive] = {}
        builds = tuple(summary_from_row(r, archives) for r in rows)
        more = len(builds) == limit and limit > 0
        return BuildPage(builds, builds[-1].id if more else None)

    async def events(self, build_id: int) -> list[EventView]:
        """The build's whole history, oldest first."""
        rows = await self._db.query(
            f"SELECT {EVENT_COLUMNS} FROM {EVENT_FROM} WHERE e.build = %s ORDER BY e.id",
            (build_id,),
            prepared=True,
        )
        return [event_from_row(r) for r in rows]

    async def detail(self, build_id: int, grant: Grant) -> BuildDetail:
        """The build with its history, files, log and the parts of its score (one
        statement).

        :raises NotFound: for an unknown build, or one the grant may not see.
        """
        rows = await self._db.query(
            _DETAIL_SQL, {"id": build_id, **visibility_args(grant)}, prepared=True
        )
        if not rows:
            raise NotFound(f"no build {build_id}")
        row = rows[0]
        width = len(row) - _EVENT_WIDTH - 1 - LIBRARYFILE_WIDTH
        summary = summary_from_row(row[: width - 3 - LIBRARYFILE_WIDTH])
        log_row = row[width - 3 - LIBRARYFILE_WIDTH : width - 3]
        log = library_file_from_row(log_row) if log_row[0] is not None else None
        component, urgency, section = row[width - 3 : width]
        events = tuple(event_from_row(r) for r in _columns(row[width : width + _EVENT_WIDTH]))
        files = tuple(
            BuildFile(build_id, r[0], library_file_from_row(r[1:]))
            for r in _columns(row[width + _EVENT_WIDTH :])
        )
        archive, build = summary.archive, summary.build
        inputs = ScoreInputs(
            archive_purpose=archive.purpose,
            archive_private=archive.private,
            relative_build_score=archive.relative_build_score,
            urgency=SourcePackageUrgency(urgency),
            pocket=build.pocket,
            component=component,
            section=section,
        )
        return BuildDetail(summary, events, files, log, score_parts(inputs))
