"""The database: migrations, the txpostgres connection pool and the queries.

:class:`Store` gathers the query objects over one :class:`~buildmaster.store.database.Database`::

    store = Store(db)
    bob = await store.builders.getByName("bob")
    job = await store.queue.get(2)

Every method returns a Deferred-compatible awaitable of frozen value objects
(:mod:`buildmaster.model`) and fails with :class:`~buildmaster.store.database.DatabaseError`
subclasses (``NotFound``, ``ConstraintViolation``, ``DatabaseUnavailable``).
"""

from __future__ import annotations

from buildmaster.store.archives import ArchiveSet
from buildmaster.store.builders import BuilderSet
from buildmaster.store.builds import BuildQueueSet, BuildSet
from buildmaster.store.database import (
    ConstraintViolation,
    Database,
    DatabaseError,
    DatabaseUnavailable,
    NotFound,
)
from buildmaster.store.distributions import DistributionSet, PersonSet, ProcessorSet
from buildmaster.store.events import EventQueries
from buildmaster.store.files import FileQueries
from buildmaster.store.jobs import JobQueries
from buildmaster.store.sources import SourcePackageReleaseSet
from buildmaster.store.tokens import TokenSet
from buildmaster.store.uploads import UploadSessions
from buildmaster.store.views import Views

__all__ = [
    "Store",
    "Database",
    "DatabaseError",
    "ConstraintViolation",
    "DatabaseUnavailable",
    "NotFound",
]


class Store:
    """Every query object, over one database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.processors = ProcessorSet(db)
        self.persons = PersonSet(db)
        self.distributions = DistributionSet(db)
        self.archives = ArchiveSet(db)
        self.files = FileQueries(db)
        self.sources = SourcePackageReleaseSet(db)
        self.builders = BuilderSet(db)
        self.builds = BuildSet(db)
        self.queue = BuildQueueSet(db)
        self.events = EventQueries(db)
        self.jobs = JobQueries(db)
        self.tokens = TokenSet(db)
        self.uploads = UploadSessions(db)
        #: what operators see (the operator API's and the web pages' reads)
        self.views = Views(db)
