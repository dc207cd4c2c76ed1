"""The seed's world: ubuntu/hoary, two trusted builders, a lost job and a waiting one.

Loaded by :func:`load_sample_data` (tests, the demo) or by the command
``python -m buildmaster.sampledata --dsn DSN`` into a freshly migrated database:

* processors ``386`` and ``amd64``; person ``ubuntu-team`` owning distribution ``ubuntu``
  with its primary archive; person ``cprov`` with a PPA;
* series ``hoary`` with architectures ``i386`` and ``amd64`` (no chroots yet);
* builders ``bob`` (http://localhost:8221/) and ``frog`` (http://localhost:9221/), trusted, 386;
* two source package releases with their ``.dsc`` (librarian metadata only: the bytes are
  not in any librarian, as in Launchpad's sample data);
* queue entry 1: a build of ``mozilla-firefox`` that bob was building (a lost job), and
  queue entry 2: a NEEDSBUILD build of ``alsa-utils`` for hoary/i386 that nobody has taken.
"""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

import attrs

from buildmaster.enums import (
    ArchivePurpose,
    BuildQueueStatus,
    BuildStatus,
    PackagePublishingPocket,
    SourcePackageFileType,
    SourcePackageUrgency,
)
from buildmaster.model import Archive, Builder, DistroArchSeries, DistroSeries, Person, Processor
from buildmaster.store import Store
from buildmaster.store.database import Transaction
from buildmaster.store.events import record_event

__all__ = ["SampleData", "load_sample_data", "add_metadata_only_file"]


@attrs.frozen
class SampleData:
    """What :func:`load_sample_data` created."""

    processor_386: Processor
    processor_amd64: Processor
    ubuntu_team: Person
    cprov: Person
    hoary: DistroSeries
    hoary_i386: DistroArchSeries
    hoary_amd64: DistroArchSeries
    primary: Archive
    cprov_ppa: Archive
    bob: Builder
    frog: Builder
    lost_job_id: int
    waiting_job_id: int


async def add_metadata_only_file(store: Store, filename: str, content: bytes, mimetype: str) -> int:
    """A librarian alias whose hashes describe ``content`` but whose bytes are stored nowhere.

    The seed's sample data has such files; a test replaces them with real librarian files.
    """

    async def create(tx: Transaction) -> int:
        sha256 = hashlib.sha256(content).hexdigest()
        row = await tx.query_one(
            "INSERT INTO libraryfilecontent (filesize, sha1, sha256, md5) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (sha256) DO UPDATE SET filesize = EXCLUDED.filesize RETURNING id",
            (
                len(content),
                hashlib.sha1(content).hexdigest(),
                sha256,
                hashlib.md5(content).hexdigest(),
            ),
        )
        assert row is not None
        alias = await tx.query_one(
            "INSERT INTO libraryfilealias (content, filename, mimetype) VALUES (%s, %s, %s) RETURNING id",
            (row[0], filename, mimetype),
        )
        assert alias is not None
        return int(alias[0])

    return int(await store.db.transaction(create))


def _dsc(name: str, version: str) -> bytes:
    return (
        f"Format: 1.0\nSource: {name}\nBinary: {name}\nArchitecture: any\nVersion: {version}\n"
        f"Maintainer: Sample Maintainer <sample@example.com>\nStandards-Version: 3.6.1\n"
    ).encode()


async def load_sample_data(store: Store, now: datetime.datetime | None = None) -> SampleData:
    """Create the seed's world in an empty, migrated database.

    :raises ValueError: when the database already has a distribution called ``ubuntu``.
    """
    existing = await store.db.query("SELECT count(*) FROM distribution WHERE name = 'ubuntu'")
    if existing[0][0]:
        raise ValueError("the database already holds sample data (distribution 'ubuntu' exists)")
    now = now or datetime.datetime.now(datetime.UTC)

    p386 = await store.processors.new("386", "Intel 386 compatible")
    amd64 = await store.processors.new("amd64", "AMD 64-bit")
    team = await store.persons.new("ubuntu-team", "Ubuntu Team")
    cprov = await store.persons.new("cprov", "Celso Providelo")
    ubuntu = await store.distributions.new("ubuntu", "Ubuntu", team)
    hoary = await store.distributions.new_series(ubuntu, "hoary", "5.04")
    hoary_i386 = await store.distributions.new_arch_series(hoary, "i386", p386)
    hoary_amd64 = await store.distributions.new_arch_series(hoary, "amd64", amd64)
    primary = await store.archives.new(
        team, ubuntu, ArchivePurpose.PRIMARY, displayname="Primary Archive for Ubuntu"
    )
    ppa = await store.archives.new(
        cprov, ubuntu, ArchivePurpose.PPA, displayname="PPA for Celso Providelo"
    )

    bob = await store.builders.new("bob", "http://localhost:8221/", [p386], title="Bob The Builder")
    frog = await store.builders.new("frog", "http://localhost:9221/", [p386], title="Frog Master")

    releases = []
    for name, version, component, urgency in [
        ("mozilla-firefox", "0.9", "main", SourcePackageUrgency.LOW),
        ("alsa-utils", "1.0.9a-4ubuntu1", "main", SourcePackageUrgency.MEDIUM),
    ]:
        dsc = await add_metadata_only_file(
            store, f"{name}_{version}.dsc", _dsc(name, version), "text/x-debian-source-package"
        )
        releases.append(
            await store.sources.new(
                name,
                version,
                hoary,
                component=component,
                urgency=urgency,
                creator=team,
                files=[(dsc, SourcePackageFileType.DSC)],
            )
        )

    lost = await store.builds.createBuild(
        releases[0], hoary_i386, PackagePublishingPocket.RELEASE, primary
    )
    lost_job = await store.queue.createBuildQueueEntry(lost)
    waiting = await store.builds.createBuild(
        releases[1], hoary_i386, PackagePublishingPocket.RELEASE, primary
    )
    waiting_job = await store.queue.createBuildQueueEntry(waiting)

    # bob was building the firefox build when the master lost track of it
    async def assign_lost(tx: Transaction) -> None:
        started = now - datetime.timedelta(hours=1)
        await tx.execute(
            "UPDATE buildqueue SET builder = %s, status = %s, date_started = %s WHERE id = %s",
            (bob.id, int(BuildQueueStatus.RUNNING), started, lost_job.id),
        )
        await tx.execute(
            "UPDATE build SET buildstate = %s, builder = %s, date_started = %s, date_first_dispatched = %s"
            " WHERE id = %s",
            (int(BuildStatus.BUILDING), bob.id, started, started, lost.id),
        )
        await record_event(
            tx, "dispatched", "sample data: dispatched to bob", build=lost.id, builder=bob.id
        )

    await store.db.transaction(assign_lost)

    return SampleData(
        processor_386=p386,
        processor_amd64=amd64,
        ubuntu_team=team,
        cprov=cprov,
        hoary=hoary,
        hoary_i386=hoary_i386,
        hoary_amd64=hoary_amd64,
        primary=primary,
        cprov_ppa=ppa,
        bob=await store.builders.get(bob),
        frog=await store.builders.get(frog),
        lost_job_id=lost_job.id,
        waiting_job_id=waiting_job.id,
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m buildmaster.sampledata --dsn DSN``: migrate, then load the sample data."""
    import argparse

    from twisted.internet import defer, task

    from buildmaster.store.database import Database
    from buildmaster.store.schema import migrate

    parser = argparse.ArgumentParser(description="Load the seed's sample data into a database.")
    parser.add_argument("--dsn", required=True, help="libpq connection string of the database")
    options = parser.parse_args(argv)

    async def run(reactor: Any) -> None:
        db = Database(reactor, options.dsn, size=1)
        await db.connect()
        try:
            await migrate(db)
            data = await load_sample_data(Store(db))
        finally:
            await db.close()
        print(
            f"sample data loaded: builders bob and frog, queue entries {data.lost_job_id} (lost, on bob)"
            f" and {data.waiting_job_id} (waiting)"
        )

    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
