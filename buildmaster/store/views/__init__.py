"""What operators see of the farm: the read side of the operator API and the web pages.

Each query returns frozen value objects and hides what belongs to a private archive from a
grant (:class:`buildmaster.access.Grant`) that may not read it, so that a page built on
these can never show what the API would not::

    views = Views(db)
    page = await views.builds.page(grant, BuildFilter(states=(BuildStatus.FAILEDTOBUILD,)))
    kinds = await views.queue.kinds()
"""

from __future__ import annotations

from buildmaster.store.database import Database
from buildmaster.store.views.builders import BuilderDetail, BuilderOverview, BuilderViews
from buildmaster.store.views.builds import (
    BuildDetail,
    BuildFilter,
    BuildPage,
    BuildSummary,
    BuildViews,
    EventView,
)
from buildmaster.store.views.catalog import (
    ArchitectureView,
    ArchiveReference,
    CatalogViews,
    SeriesView,
    parse_archive_reference,
)
from buildmaster.store.views.queue import QueueKind, QueueViews, Standing, WaitingJob, WaitingPage
from buildmaster.store.views.samples import FarmHistory, FarmSample, SampleViews
from buildmaster.store.views.shares import ShareStanding, ShareViews

__all__ = [
    "Views",
    "BuilderOverview",
    "BuilderDetail",
    "BuildSummary",
    "BuildFilter",
    "BuildPage",
    "BuildDetail",
    "EventView",
    "QueueKind",
    "WaitingJob",
    "WaitingPage",
    "Standing",
    "ShareStanding",
    "ArchiveReference",
    "parse_archive_reference",
    "ArchitectureView",
    "SeriesView",
    "FarmHistory",
    "FarmSample",
]


class Views:
    """Every view of the farm, over one database."""

    def __init__(self, db: Database) -> None:
        self.builders = BuilderViews(db)
        self.builds = BuildViews(db)
        self.queue = QueueViews(db)
        self.catalog = CatalogViews(db)
        self.samples = SampleViews(db)
        self.shares = ShareViews(db)
