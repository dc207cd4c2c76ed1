"""Every enumeration of the domain, in one place, with Launchpad's names and database values."""

from __future__ import annotations

import enum

__all__ = [
    "ArchivePurpose",
    "BuildStatus",
    "BuildQueueStatus",
    "BuilderCleanStatus",
    "BuilderStatus",
    "BuilderResult",
    "PackagePublishingPocket",
    "SourcePackageFileType",
    "SourcePackageUrgency",
]


class BuildStatus(enum.IntEnum):
    """The state of a build (Launchpad's BuildStatus, same values)."""

    NEEDSBUILD = 0
    FULLYBUILT = 1
    FAILEDTOBUILD = 2
    MANUALDEPWAIT = 3
    CHROOTWAIT = 4
    SUPERSEDED = 5
    BUILDING = 6
    FAILEDTOUPLOAD = 7
    UPLOADING = 8
    CANCELLING = 9
    CANCELLED = 10
    GATHERING = 11


class BuildQueueStatus(enum.IntEnum):
    """The state of a build queue entry (a job)."""

    WAITING = 0
    RUNNING = 1
    SUSPENDED = 2
    CANCELLING = 3


class BuilderCleanStatus(enum.IntEnum):
    """Whether a builder is known to be clean enough for the next build."""

    CLEAN = 0
    DIRTY = 1
    CLEANING = 2


class ArchivePurpose(enum.IntEnum):
    """What an archive is for (Launchpad's values)."""

    PRIMARY = 1
    PPA = 2
    PARTNER = 4
    COPY = 6


class PackagePublishingPocket(enum.IntEnum):
    """The pocket of a series a build is published into."""

    RELEASE = 0
    SECURITY = 10
    UPDATES = 20
    PROPOSED = 30
    BACKPORTS = 40

    @property
    def suffix(self) -> str:
        """The suite suffix: ``""`` for RELEASE, ``"-updates"`` for UPDATES, ..."""
        return "" if self is PackagePublishingPocket.RELEASE else "-" + self.name.lower()


class SourcePackageUrgency(enum.IntEnum):
    """The upload urgency of a source package release."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    EMERGENCY = 4


class SourcePackageFileType(enum.IntEnum):
    """The kind of a file of a source package release."""

    DSC = 1
    DIFF = 2
    ORIG_TARBALL = 3
    NATIVE_TARBALL = 4
    DEBIAN_TARBALL = 5
    COMPONENT_ORIG_TARBALL = 6
    ORIG_TARBALL_SIGNATURE = 7


class BuilderStatus(enum.Enum):
    """What a builder says it is doing (``builder_status`` in the protocol)."""

    IDLE = "BuilderStatus.IDLE"
    BUILDING = "BuilderStatus.BUILDING"
    ABORTING = "BuilderStatus.ABORTING"
    WAITING = "BuilderStatus.WAITING"


class BuilderResult(enum.Enum):
    """How a build ended on the builder (``build_status`` in the protocol)."""

    OK = "BuildStatus.OK"
    PACKAGEFAIL = "BuildStatus.PACKAGEFAIL"
    DEPFAIL = "BuildStatus.DEPFAIL"
    CHROOTFAIL = "BuildStatus.CHROOTFAIL"
    BUILDERFAIL = "BuildStatus.BUILDERFAIL"
    GIVENBACK = "BuildStatus.GIVENBACK"
    ABORTED = "BuildStatus.ABORTED"
