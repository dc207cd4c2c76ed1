"""Archives, distributions with their series and architectures (and chroots), processors."""

from __future__ import annotations

import re
from typing import Any

import attrs

from buildmaster.access import Grant
from buildmaster.enums import ArchivePurpose
from buildmaster.model import Archive, LibraryFile, Processor
from buildmaster.store.archives import ARCHIVE_COLUMNS, ARCHIVE_FROM, archive_from_row
from buildmaster.store.database import Database, NotFound
from buildmaster.store.files import LIBRARYFILE_COLUMNS, library_file_from_row
from buildmaster.store.views.builds import visibility_args, visible_sql

__all__ = [
    "ArchiveReference",
    "parse_archive_reference",
    "ArchitectureView",
    "SeriesView",
    "CatalogViews",
]

_NAME = r"[a-z0-9][a-z0-9+.-]*"
_FORMS = [
    (re.compile(rf"~({_NAME})/({_NAME})/({_NAME})"), ("owner", "distribution", "name")),
    (re.compile(rf"ppa:({_NAME})/({_NAME})"), ("owner", "name")),
    (re.compile(rf"ppa:({_NAME})"), ("owner",)),
    (re.compile(rf"({_NAME})/(partner)"), ("distribution", "purpose")),
    (re.compile(rf"({_NAME})"), ("distribution",)),
]


@attrs.frozen
class ArchiveReference:
    """What an archive reference names: a distribution's primary or partner archive, or a
    PPA by owner and name (in one distribution, or in whichever has it)."""

    purpose: ArchivePurpose
    distribution: str | None = None
    owner: str | None = None
    name: str | None = None


def parse_archive_reference(text: str) -> ArchiveReference:
    """``ubuntu``, ``ubuntu/partner``, ``~cprov/ubuntu/ppa``, ``ppa:cprov/ppa``, ``ppa:cprov``.

    :raises ValueError: for anything else, saying what is understood.
    """
    for pattern, names in _FORMS:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        parts = dict(zip(names, match.groups(), strict=True))
        if "purpose" in parts:
            return ArchiveReference(ArchivePurpose.PARTNER, distribution=parts["distribution"])
        if "owner" in parts:
            return ArchiveReference(
                ArchivePurpose.PPA,
                distribution=parts.get("distribution"),
                owner=parts["owner"],
                name=parts.get("name", "ppa"),
            )
        return ArchiveReference(ArchivePurpose.PRIMARY, distribution=parts["distribution"])
    raise ValueError(
        f"{text!r} is not an archive reference: use DISTRIBUTION (its primary archive),"
        " DISTRIBUTION/partner, ~OWNER/DISTRIBUTION/NAME or ppa:OWNER/NAME"
    )


@attrs.frozen
class ArchitectureView:
    id: int
    tag: str
    processor: str
    enabled: bool
    chroot: LibraryFile | None


@attrs.frozen
class SeriesView:
    id: int
    distribution: str
    name: str
    version: str
    architectures: tuple[ArchitectureView, ...]


class CatalogViews:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def archives(self, grant: Grant, distribution: str | None = None) -> list[Archive]:
        """The archives the grant may see, primary first, then by reference."""
        where = visible_sql()
        args: dict[str, Any] = visibility_args(grant)
        if distribution is not None:
            where += " AND d.name = %(distribution)s"
            args["distribution"] = distribution
        rows = await self._db.query(
            f"SELECT {ARCHIVE_COLUMNS} FROM {ARCHIVE_FROM} WHERE {where}"
            " ORDER BY d.name, a.purpose, p.name, a.name",
            args,
            prepared=True,
        )
        return [archive_from_row(r) for r in rows]

    async def archive(self, reference: str, grant: Grant) -> Archive:
        """The archive a reference names, if the grant may see it.

        :raises ValueError: for a malformed reference (or an ambiguous ``ppa:``).
        :raises NotFound: when there is no such archive (or it is hidden from the grant).
        """
        ref = parse_archive_reference(reference)
        conditions = [visible_sql(), "a.purpose = %(purpose)s"]
        args: dict[str, Any] = {"purpose": int(ref.purpose), **visibility_args(grant)}
        for column, value in (("d.name", ref.distribution), ("p.name", ref.owner)):
            if value is not None:
                key = column.replace(".", "_")
                conditions.append(f"{column} = %({key})s")
                args[key] = value
        if ref.purpose is ArchivePurpose.PPA:
            conditions.append("a.name = %(name)s")
            args["name"] = ref.name
        rows = await self._db.query(
            f"SELECT {ARCHIVE_COLUMNS} FROM {ARCHIVE_FROM} WHERE {' AND '.join(conditions)}"
            " ORDER BY a.id LIMIT 2",
            args,
            prepared=True,
        )
        if not rows:
            raise NotFound(f"no archive {reference}")
        if len(rows) > 1:
            found = [archive_from_row(r).reference for r in rows]
            raise ValueError(f"{reference} is ambiguous: say {' or '.join(found)}")
        return archive_from_row(rows[0])

    async def series(self, distribution: str | None = None) -> list[SeriesView]:
        """Every series (of one distribution) with its architectures and their chroots."""
        where = "true" if distribution is None else "d.name = %(distribution)s"
        rows = await self._db.query(
            "SELECT s.id, d.name, s.name, s.version, das.id, das.architecturetag, p.name,"
            f" das.enabled, {LIBRARYFILE_COLUMNS}"
            " FROM distroseries s JOIN distribution d ON d.id = s.distribution"
            " LEFT JOIN distroarchseries das ON das.distroseries = s.id"
            " LEFT JOIN processor p ON p.id = das.processor"
            " LEFT JOIN libraryfilealias lfa ON lfa.id = das.chroot"
            " LEFT JOIN libraryfilecontent lfc ON lfc.id = lfa.content"
            f" WHERE {where} ORDER BY d.name, s.version, s.id, das.architecturetag",
            {"distribution": distribution},
        )
        found: dict[int, SeriesView] = {}
        for r in rows:
            series = found.setdefault(r[0], SeriesView(r[0], r[1], r[2], r[3], ()))
            if r[4] is None:
                continue
            chroot = library_file_from_row(r[8:]) if r[8] is not None else None
            arch = ArchitectureView(r[4], r[5], r[6], r[7], chroot)
            found[r[0]] = attrs.evolve(series, architectures=(*series.architectures, arch))
        return list(found.values())

    async def one_series(self, distribution: str, name: str) -> SeriesView:
        """:raises NotFound:"""
        for series in await self.series(distribution):
            if series.name == name:
                return series
        raise NotFound(f"no series {distribution}/{name}")

    async def newest_series(self, distribution: str) -> SeriesView:
        """The distribution's series with the highest version (uploads default to it).

        :raises NotFound: when the distribution has none.
        """
        every = await self.series(distribution)
        if not every:
            raise NotFound(f"distribution {distribution} has no series")
        return max(every, key=lambda s: (_version_key(s.version), s.id))

    async def processors(self) -> list[Processor]:
        rows = await self._db.query("SELECT id, name, title FROM processor ORDER BY name")
        return [Processor(*r) for r in rows]


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version))
