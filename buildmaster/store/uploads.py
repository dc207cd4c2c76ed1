"""Upload sessions: a source package's files, streamed one by one, then submitted together.

A session belongs to an archive and to the token that opened it. Each file is stored in the
librarian as it arrives, provisional (it expires with the session); the submit makes the
files permanent, creates the source package release and its builds, and queues them, in
one transaction. Abandoned sessions are deleted when they have expired (their files expire
with them, and the librarian's garbage collector takes them).
"""

from __future__ import annotations

import datetime

import attrs

from buildmaster.enums import PackagePublishingPocket, SourcePackageFileType, SourcePackageUrgency
from buildmaster.model import Build, BuildQueue, HasId, LibraryFile, SourcePackageRelease, id_of
from buildmaster.store.builds import insert_build, queue_build
from buildmaster.store.database import Database, NotFound, Transaction
from buildmaster.store.files import LIBRARYFILE_COLUMNS, LIBRARYFILE_JOIN, library_file_from_row
from buildmaster.store.sources import SPR_COLUMNS, SPR_FROM, add_file, spr_from_row

__all__ = [
    "UploadSession",
    "UploadedFile",
    "SourceSubmission",
    "Submitted",
    "UploadSessions",
    "UploadClosed",
    "FilesExpired",
    "AlreadyUploaded",
]


class UploadClosed(ValueError):
    """The session was submitted already, or has expired."""


class FilesExpired(ValueError):
    """Some of the session's files are gone (the session outlived them)."""


class AlreadyUploaded(ValueError):
    """The archive has this source name and version already."""


@attrs.frozen
class UploadedFile:
    filename: str
    #: ``None`` when the librarian no longer has it (expired and collected)
    file: LibraryFile | None


@attrs.frozen
class UploadSession:
    id: int
    archive_id: int
    token_id: int
    datecreated: datetime.datetime
    expires: datetime.datetime
    sourcepackagerelease_id: int | None
    date_submitted: datetime.datetime | None
    files: tuple[UploadedFile, ...]

    @property
    def submitted(self) -> bool:
        return self.date_submitted is not None


@attrs.frozen
class SourceSubmission:
    """What a submit creates: a source package release and its builds."""

    name: str
    version: str
    series_id: int
    pocket: PackagePublishingPocket
    component: str
    section: str
    urgency: SourcePackageUrgency
    #: the session's files that make the source, with their types
    files: tuple[tuple[str, SourcePackageFileType], ...]
    #: the architectures (distroarchseries ids) to build on
    distroarchseries_ids: tuple[int, ...]


@attrs.frozen
class Submitted:
    source: SourcePackageRelease
    builds: tuple[Build, ...]
    jobs: tuple[BuildQueue, ...]


_SESSION_COLUMNS = (
    "u.id, u.archive, u.token, u.datecreated, u.expires, u.sourcepackagerelease, u.date_submitted"
)


class UploadSessions:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self, archive: HasId | int, token: HasId | int, lifetime: datetime.timedelta
    ) -> UploadSession:
        """Open a session (and delete the expired sessions nobody submitted)."""

        async def create(tx: Transaction) -> int:
            await tx.execute("DELETE FROM upload WHERE date_submitted IS NULL AND expires < now()")
            row = await tx.query_one(
                "INSERT INTO upload (archive, token, expires) VALUES (%s, %s, now() + %s)"
                " RETURNING id",
                (id_of(archive), id_of(token), lifetime),
            )
            assert row is not None
            return int(row[0])

        return await self.get(await self._db.transaction(create))

    async def get(self, session: HasId | int) -> UploadSession:
        """The session with its files. :raises NotFound:"""
        rows = await self._db.query(
            f"SELECT {_SESSION_COLUMNS} FROM upload u WHERE u.id = %s", (id_of(session),)
        )
        if not rows:
            raise NotFound(f"no upload {id_of(session)}")
        files = await self._db.query(
            f"SELECT uf.filename, {LIBRARYFILE_COLUMNS} FROM upload_file uf"
            f" LEFT JOIN {LIBRARYFILE_JOIN} ON lfa.id = uf.libraryfile"
            " WHERE uf.upload = %s ORDER BY uf.filename",
            (id_of(session),),
        )
        row = rows[0]
        return UploadSession(
            id=row[0],
            archive_id=row[1],
            token_id=row[2],
            datecreated=row[3],
            expires=row[4],
            sourcepackagerelease_id=row[5],
            date_submitted=row[6],
            files=tuple(
                UploadedFile(r[0], library_file_from_row(r[1:]) if r[1] is not None else None)
                for r in files
            ),
        )

    async def add_file(self, session: HasId | int, filename: str, alias: HasId | int) -> None:
        """Add (or replace) a file of an open session.

        :raises UploadClosed: when the session was submitted or has expired.
        """

        async def add(tx: Transaction) -> None:
            row = await tx.query_one(
                "SELECT date_submitted IS NOT NULL, expires < now() FROM upload"
                " WHERE id = %s FOR UPDATE",
                (id_of(session),),
            )
            if row is None:
                raise NotFound(f"no upload {id_of(session)}")
            _check_open(id_of(session), submitted=row[0], expired=row[1])
            await tx.execute(
                "INSERT INTO upload_file (upload, filename, libraryfile) VALUES (%s, %s, %s)"
                " ON CONFLICT (upload, filename) DO UPDATE SET libraryfile = EXCLUDED.libraryfile",
                (id_of(session), filename, id_of(alias)),
            )

        await self._db.transaction(add)

    async def abandon(self, session: HasId | int) -> None:
        """Delete an unsubmitted session (its files expire). :raises UploadClosed:"""
        rows = await self._db.query(
            "DELETE FROM upload WHERE id = %s AND date_submitted IS NULL RETURNING id",
            (id_of(session),),
        )
        if not rows:
            await self.get(session)  # NotFound, or else:
            raise UploadClosed(f"upload {id_of(session)} was submitted: it cannot be abandoned")

    async def submit(self, session: HasId | int, source: SourceSubmission) -> Submitted:
        """Create the source package release from the session's files, and its builds, queued.

        :raises UploadClosed: when the session was submitted already or has expired.
        :raises FilesExpired: when some of its files are gone.
        :raises AlreadyUploaded: when the archive has this name and version already.
        :raises NotFound: for an unknown component.
        """
        return await self._db.transaction(_submit, id_of(session), source)


def _check_open(session_id: int, submitted: bool, expired: bool) -> None:
    if submitted:
        raise UploadClosed(f"upload {session_id} was submitted already; open a new one")
    if expired:
        raise UploadClosed(f"upload {session_id} has expired; open a new one")


async def _submit(tx: Transaction, session_id: int, source: SourceSubmission) -> Submitted:
    row = await tx.query_one(
        "SELECT archive, date_submitted IS NOT NULL, expires < now() FROM upload"
        " WHERE id = %s FOR UPDATE",
        (session_id,),
    )
    if row is None:
        raise NotFound(f"no upload {session_id}")
    archive_id = int(row[0])
    _check_open(session_id, submitted=row[1], expired=row[2])
    duplicate = await tx.query_one(
        "SELECT s.id FROM build b JOIN sourcepackagerelease s ON s.id = b.sourcepackagerelease"
        " WHERE b.archive = %s AND s.name = %s AND s.version = %s LIMIT 1",
        (archive_id, source.name, source.version),
    )
    if duplicate is not None:
        raise AlreadyUploaded(
            f"{source.name} {source.version} is in this archive already (source"
            f" {duplicate[0]}); upload a new version"
        )
    names = [name for name, _ in source.files]
    aliases: dict[str, int] = dict(
        await tx.query(
            "SELECT filename, libraryfile FROM upload_file WHERE upload = %s"
            " AND filename = ANY(%s)",
            (session_id, names),
        )
    )
    kept = {
        r[0]
        for r in await tx.query(
            "UPDATE libraryfilealias SET expires = NULL WHERE id = ANY(%s::bigint[])"
            " AND (expires IS NULL OR expires > now()) RETURNING id",
            (list(aliases.values()),),
        )
    }
    gone = [name for name in names if aliases.get(name) not in kept]
    if gone:
        raise FilesExpired(
            f"the librarian no longer has {', '.join(gone)}: upload {'them' if len(gone) > 1 else 'it'} again"
        )
    component = await tx.query_one("SELECT id FROM component WHERE name = %s", (source.component,))
    if component is None:
        raise NotFound(f"no component {source.component!r}")
    spr_row = await tx.query_one(
        "INSERT INTO sourcepackagerelease (name, version, component, section, urgency,"
        " upload_distroseries) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (
            source.name,
            source.version,
            component[0],
            source.section,
            int(source.urgency),
            source.series_id,
        ),
    )
    assert spr_row is not None
    spr_id = int(spr_row[0])
    for name, filetype in source.files:
        await add_file(tx, spr_id, aliases[name], filetype)
    builds = []
    jobs = []
    for das_id in source.distroarchseries_ids:
        build = await insert_build(tx, spr_id, das_id, source.pocket, archive_id)
        builds.append(build)
        jobs.append(await queue_build(tx, build))
    await tx.execute(
        "UPDATE upload SET sourcepackagerelease = %s, date_submitted = now() WHERE id = %s",
        (spr_id, session_id),
    )
    await tx.execute("DELETE FROM upload_file WHERE upload = %s", (session_id,))
    spr = await tx.query_one(f"SELECT {SPR_COLUMNS} FROM {SPR_FROM} WHERE spr.id = %s", (spr_id,))
    assert spr is not None
    return Submitted(spr_from_row(spr), tuple(builds), tuple(jobs))
