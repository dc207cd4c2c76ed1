"""Frozen value objects read from the database.

They are snapshots: a change goes through the store, which returns a fresh object (or the
caller reads it again). Names follow Launchpad where it has one (``builderok``,
``failnotes``, ``lastscore``).
"""

from __future__ import annotations

import datetime
from typing import Protocol

import attrs

from buildmaster.enums import (
    ArchivePurpose,
    BuilderCleanStatus,
    BuildQueueStatus,
    BuildStatus,
    PackagePublishingPocket,
    SourcePackageFileType,
    SourcePackageUrgency,
)

__all__ = [
    "HasId",
    "Processor",
    "Person",
    "Distribution",
    "DistroSeries",
    "DistroArchSeries",
    "Archive",
    "LibraryFile",
    "SourcePackageRelease",
    "SourcePackageReleaseFile",
    "Builder",
    "Build",
    "BuildFile",
    "BuildQueue",
    "Event",
    "BuilderSnapshot",
    "id_of",
]


class HasId(Protocol):
    @property
    def id(self) -> int: ...


def id_of(thing: HasId | int) -> int:
    """The database id of a value object, or the id itself."""
    return thing if isinstance(thing, int) else thing.id


@attrs.frozen
class Processor:
    id: int
    name: str
    title: str = ""


@attrs.frozen
class Person:
    id: int
    name: str
    displayname: str


@attrs.frozen
class Distribution:
    id: int
    name: str
    displayname: str
    owner_id: int


@attrs.frozen
class DistroSeries:
    id: int
    distribution_id: int
    distribution_name: str
    name: str
    version: str


@attrs.frozen
class DistroArchSeries:
    id: int
    distroseries_id: int
    distribution_id: int
    distribution_name: str
    series_name: str
    architecturetag: str
    processor_id: int
    processor_name: str
    chroot_id: int | None
    enabled: bool = True

    @property
    def displayname(self) -> str:
        return f"{self.distribution_name} {self.series_name} {self.architecturetag}"


@attrs.frozen
class Archive:
    id: int
    owner_id: int
    owner_name: str
    distribution_id: int
    distribution_name: str
    name: str
    displayname: str
    purpose: ArchivePurpose
    private: bool
    require_virtualized: bool
    relative_build_score: int
    enabled: bool
    #: a private archive's password for builders (never shown in a repr or a log)
    buildd_secret: str | None = attrs.field(default=None, repr=False)

    @property
    def is_ppa(self) -> bool:
        return self.purpose is ArchivePurpose.PPA

    @property
    def reference(self) -> str:
        """``ubuntu`` for a primary archive, ``~cprov/ubuntu/ppa`` for a PPA."""
        if self.purpose is ArchivePurpose.PPA:
            return f"~{self.owner_name}/{self.distribution_name}/{self.name}"
        if self.purpose is ArchivePurpose.PRIMARY:
            return self.distribution_name
        return f"{self.distribution_name}/{self.name}"


@attrs.frozen
class LibraryFile:
    """A librarian file alias with its content's hashes."""

    id: int
    content_id: int
    filename: str
    mimetype: str
    restricted: bool
    expires: datetime.datetime | None
    filesize: int
    sha1: str
    sha256: str
    md5: str
    datecreated: datetime.datetime | None = None


@attrs.frozen
class SourcePackageRelease:
    id: int
    name: str
    version: str
    component: str
    section: str
    urgency: SourcePackageUrgency
    upload_distroseries_id: int
    creator_id: int | None = None

    @property
    def title(self) -> str:
        return f"{self.name} - {self.version}"


@attrs.frozen
class SourcePackageReleaseFile:
    id: int
    sourcepackagerelease_id: int
    filetype: SourcePackageFileType
    file: LibraryFile


@attrs.frozen
class Builder:
    id: int
    name: str
    title: str
    url: str
    virtualized: bool
    vm_host: str | None
    builderok: bool
    failnotes: str | None
    failed_by_master: bool
    manual: bool
    active: bool
    failure_count: int
    clean_status: BuilderCleanStatus
    version: str | None
    processor_ids: tuple[int, ...]

    @property
    def trusted(self) -> bool:
        """Trusted builders are the non-virtualized ones: they build primary archives."""
        return not self.virtualized


@attrs.frozen
class Build:
    id: int
    sourcepackagerelease_id: int
    distroarchseries_id: int
    archive_id: int
    pocket: PackagePublishingPocket
    processor_id: int
    virtualized: bool
    status: BuildStatus
    datecreated: datetime.datetime
    date_started: datetime.datetime | None
    date_first_dispatched: datetime.datetime | None
    date_finished: datetime.datetime | None
    builder_id: int | None
    log_id: int | None
    dependencies: str | None
    failure_count: int
    failure_reason: str | None

    @property
    def cookie(self) -> str:
        """The build id given to the builder; every status read is checked against it."""
        return f"PACKAGEBUILD-{self.id}"

    @property
    def is_virtualized(self) -> bool:
        return self.virtualized

    @property
    def duration(self) -> datetime.timedelta | None:
        if self.date_started is None or self.date_finished is None:
            return None
        return self.date_finished - self.date_started


@attrs.frozen
class BuildFile:
    build_id: int
    filename: str
    file: LibraryFile


@attrs.frozen
class BuildQueue:
    """A job: one build waiting for, or running on, a builder."""

    id: int
    build_id: int
    builder_id: int | None
    status: BuildQueueStatus
    lastscore: int
    manual: bool
    processor_id: int
    virtualized: bool
    date_started: datetime.datetime | None
    logtail: str | None

    @property
    def buildstart(self) -> datetime.datetime | None:
        """The seed's name for the dispatch time."""
        return self.date_started


@attrs.frozen
class Event:
    id: int
    date: datetime.datetime
    build_id: int | None
    builder_id: int | None
    kind: str
    message: str


@attrs.frozen
class BuilderSnapshot:
    """A builder with the job it runs (if any) and that job's build, read together."""

    builder: Builder
    job: BuildQueue | None
    build: Build | None
