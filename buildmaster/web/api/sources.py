"""Source uploads: ``/api/v1/uploads`` (a session: open it, ``PUT`` each file, submit the
``.dsc``) and ``/api/v1/sources/<id>`` (a source package release with its files and builds).

A session streams each file into the librarian as it arrives, hashing it on the way
(``Content-Digest: sha-256=:...:`` is checked if sent); nothing is held in memory. The
submit reads the ``.dsc`` (python-debian), refuses a malformed signature block, and checks
that every file it lists was uploaded with the size and every checksum it gives; then it
creates the source and its builds for the architectures the ``.dsc`` asks for that the
series has, in one transaction.
"""

from __future__ import annotations

from typing import Any

from buildmaster.access import Grant, may_read, may_upload
from buildmaster.architectures import choose_architectures
from buildmaster.dsc import DscError, StoredFile, check_files, file_type, parse_dsc
from buildmaster.enums import PackagePublishingPocket, SourcePackageUrgency
from buildmaster.model import Archive
from buildmaster.store.database import NotFound
from buildmaster.store.uploads import (
    AlreadyUploaded,
    FilesExpired,
    SourceSubmission,
    UploadClosed,
    UploadSession,
)
from buildmaster.web.api.endpoint import (
    Call,
    Endpoint,
    Reply,
    created,
    no_content,
    numeric_id,
    ok,
)
from buildmaster.web.api.problems import Problem, conflict, forbidden, not_found, unprocessable
from buildmaster.web.api.representations import (
    archive_ref_json,
    build_summary_json,
    file_json,
    iso,
)

__all__ = ["Uploads", "Sources"]


def rejected(detail: str, errors: list[str]) -> Problem:
    return Problem(422, "upload-rejected", detail, errors=errors)


class Uploads(Endpoint):
    methods = ("post",)

    def child(self, segment: str) -> Endpoint | None:
        session_id = numeric_id(segment)
        return UploadEndpoint(self.ctx, session_id) if session_id is not None else None

    async def post(self, call: Call) -> Reply:
        grant = await call.require_token("uploading a source")
        body = call.json("UploadCreate")
        archive = await _archive(self.ctx, body["archive"], grant)
        if not may_upload(grant, archive):
            raise forbidden(f"this token may not upload to {archive.reference}")
        if not archive.enabled:
            raise conflict(f"{archive.reference} is disabled: it takes no uploads")
        assert grant.token_id is not None
        session = await self.ctx.store.uploads.create(
            archive, grant.token_id, self.ctx.limits.upload_lifetime
        )
        return created(session_json(self.ctx, session, archive), f"/api/v1/uploads/{session.id}")


async def _archive(ctx: Any, reference: str, grant: Grant) -> Archive:
    try:
        archive: Archive = await ctx.store.views.catalog.archive(reference, grant)
    except ValueError as e:
        raise unprocessable(str(e)) from None
    except NotFound:
        raise unprocessable(f"no archive {reference}; GET /api/v1/archives lists them") from None
    return archive


def session_json(ctx: Any, session: UploadSession, archive: Archive) -> Any:
    return {
        "id": session.id,
        "url": f"/api/v1/uploads/{session.id}",
        "archive": archive_ref_json(archive),
        "created": iso(session.datecreated),
        "expires": iso(session.expires),
        "submitted": iso(session.date_submitted),
        "source": f"/api/v1/sources/{session.sourcepackagerelease_id}"
        if session.sourcepackagerelease_id is not None
        else None,
        "files": [
            {
                "filename": f.filename,
                "file": file_json(ctx.librarian, f.file) if f.file is not None else None,
            }
            for f in session.files
        ],
    }


class UploadEndpoint(Endpoint):
    methods = ("get", "delete")

    def __init__(self, ctx: Any, session_id: int) -> None:
        super().__init__(ctx)
        self.session_id = session_id

    def child(self, segment: str) -> Endpoint | None:
        if segment == "files":
            return UploadFiles(self.ctx, self.session_id)
        if segment == "submit":
            return Submit(self.ctx, self.session_id)
        return None

    async def get(self, call: Call) -> Reply:
        session, archive = await own_session(call, self.session_id)
        return ok(session_json(self.ctx, session, archive))

    async def delete(self, call: Call) -> Reply:
        session, _ = await own_session(call, self.session_id)
        try:
            await self.ctx.store.uploads.abandon(session.id)
        except UploadClosed as e:
            raise conflict(str(e)) from None
        return no_content()


async def own_session(call: Call, session_id: int) -> tuple[UploadSession, Archive]:
    """The session, if it is the token's (or the token is an admin's).

    :raises Problem: 401 without a token, 404 for another token's session.
    """
    grant = await call.require_token("an upload")
    store = call.ctx.store
    try:
        session = await store.uploads.get(session_id)
    except NotFound:
        session = None
    if session is None or not (grant.admin or session.token_id == grant.token_id):
        raise not_found(f"no upload {session_id} (an upload is seen by the token that opened it)")
    return session, await store.archives.get(session.archive_id)


def _check_open(session: UploadSession) -> None:
    if session.submitted:
        raise conflict(f"upload {session.id} was submitted already; open a new one")


class UploadFiles(Endpoint):
    def __init__(self, ctx: Any, session_id: int) -> None:
        super().__init__(ctx)
        self.session_id = session_id

    def child(self, segment: str) -> Endpoint | None:
        return UploadFile(self.ctx, self.session_id, segment)


class UploadFile(Endpoint):
    """``PUT /uploads/<id>/files/<filename>``: the file's bytes as the body."""

    methods = ("put",)

    def __init__(self, ctx: Any, session_id: int, filename: str) -> None:
        super().__init__(ctx)
        self.session_id = session_id
        self.filename = filename

    async def put(self, call: Call) -> Reply:
        session, archive = await own_session(call, self.session_id)
        _check_open(session)
        if file_type(self.filename) is None:
            raise unprocessable(
                f"{self.filename} is not a file of a source package (.dsc, .tar.*,"
                " .diff.gz, .orig.tar.*.asc)"
            )
        alias = await call.store_body(
            self.filename,
            "text/plain" if self.filename.endswith(".dsc") else "application/octet-stream",
            restricted=archive.private,
            expires=session.expires,
        )
        try:
            await self.ctx.store.uploads.add_file(session.id, self.filename, alias)
        except UploadClosed as e:
            raise conflict(str(e)) from None
        file = await self.ctx.store.files.get(alias)
        return created(
            {"filename": self.filename, "file": file_json(self.ctx.librarian, file)},
            f"/api/v1/uploads/{session.id}",
        )


class Submit(Endpoint):
    """``POST /uploads/<id>/submit``: check the files against the ``.dsc``; create the
    source and its builds."""

    methods = ("post",)

    def __init__(self, ctx: Any, session_id: int) -> None:
        super().__init__(ctx)
        self.session_id = session_id

    async def post(self, call: Call) -> Reply:
        session, archive = await own_session(call, self.session_id)
        _check_open(session)
        body = call.json("UploadSubmit")
        ctx = self.ctx
        catalog = ctx.store.views.catalog
        try:
            series = (
                await catalog.one_series(archive.distribution_name, body["series"])
                if "series" in body
                else await catalog.newest_series(archive.distribution_name)
            )
        except NotFound as e:
            raise unprocessable(f"{e}; GET /api/v1/series lists them") from None
        pocket = PackagePublishingPocket[body.get("pocket", "release").upper()]
        files = {f.filename: f.file for f in session.files}
        dsc_name = body["dsc"]
        if dsc_name not in files:
            have = ", ".join(files) or "none"
            raise unprocessable(
                f"the upload has no file {dsc_name}; PUT it to"
                f" /api/v1/uploads/{session.id}/files/{dsc_name} first (files so far: {have})"
            )
        dsc_file = files[dsc_name]
        if dsc_file is None:
            raise unprocessable(f"{dsc_name} expired before the submit: upload it again")
        if dsc_file.filesize > ctx.limits.max_dsc_size:
            raise rejected(
                f"{dsc_name} has {dsc_file.filesize} bytes: a .dsc may have"
                f" {ctx.limits.max_dsc_size} at most",
                [],
            )
        data = await ctx.librarian.read_bytes(dsc_file.id, ctx.limits.max_dsc_size)
        try:
            dsc = parse_dsc(data)
        except DscError as e:
            raise rejected(f"{dsc_name} is refused: {e}", e.problems) from None
        problems = []
        if dsc.dsc_name != dsc_name:
            problems.append(
                f"{dsc_name} describes {dsc.source} {dsc.version}: it should be called"
                f" {dsc.dsc_name}"
            )
        stored = {
            name: StoredFile(f.filesize, f.md5, f.sha1, f.sha256) if f is not None else None
            for name, f in files.items()
        }
        problems += check_files(dsc, stored)
        for listed in dsc.files:
            if file_type(listed.name) is None:
                problems.append(f"{listed.name} is not a file of a source package")
        if problems:
            raise rejected(
                f"{dsc_name} and the uploaded files do not agree: {problems[0]}", problems
            )
        enabled = [a for a in series.architectures if a.enabled]
        choice = choose_architectures(
            dsc.architecture, [a.tag for a in enabled], body.get("architectures")
        )
        if choice.problem is not None:
            raise rejected(f"{dsc_name}: {choice.problem}", [choice.problem])
        by_tag = {a.tag: a for a in enabled}
        names = [dsc_name, *(f.name for f in dsc.files)]
        submission = SourceSubmission(
            name=dsc.source,
            version=dsc.version,
            series_id=series.id,
            pocket=pocket,
            component=body.get("component", "main"),
            section=body.get("section", "misc"),
            urgency=SourcePackageUrgency[body.get("urgency", "low").upper()],
            files=tuple((name, file_type(name)) for name in names),  # type: ignore[misc]
            distroarchseries_ids=tuple(by_tag[t].id for t in choice.tags),
        )
        try:
            submitted = await ctx.store.uploads.submit(session.id, submission)
        except (UploadClosed, AlreadyUploaded, FilesExpired) as e:
            raise conflict(str(e)) from None
        except NotFound as e:
            raise unprocessable(str(e)) from None
        grant = await call.grant()
        source = submitted.source
        summaries = await ctx.store.views.builds.summaries([b.id for b in submitted.builds], grant)
        now = ctx.now()
        return created(
            {
                "source": await source_json(ctx, source.id, grant),
                "builds": [build_summary_json(summaries[b.id], now) for b in submitted.builds],
                "signed": dsc.signed,
            },
            f"/api/v1/sources/{source.id}",
        )


async def source_json(ctx: Any, source_id: int, grant: Grant) -> Any:
    """A source package release with its files and its builds (those the grant may see).

    :raises NotFound: when it has no build the grant may see.
    """
    store = ctx.store
    spr = await store.sources.get(source_id)
    rows = await store.db.query(
        "SELECT id FROM build WHERE sourcepackagerelease = %s ORDER BY id", (source_id,)
    )
    summaries = await store.views.builds.summaries([r[0] for r in rows], grant)
    if rows and not summaries:
        raise NotFound(f"no source {source_id}")
    archives = {s.archive.id: s.archive for s in summaries.values()}
    private = any(a.private for a in archives.values())
    tokens = private and all(may_read(grant, a) for a in archives.values())
    series = await store.distributions.get_series_by_id(spr.upload_distroseries_id)
    now = ctx.now()
    return {
        "id": spr.id,
        "url": f"/api/v1/sources/{spr.id}",
        "name": spr.name,
        "version": spr.version,
        "component": spr.component,
        "section": spr.section,
        "urgency": spr.urgency.name.lower(),
        "series": f"{series.distribution_name}/{series.name}",
        "files": [file_json(ctx.librarian, f.file, tokens) for f in await store.sources.files(spr)],
        "builds": [build_summary_json(s, now) for s in summaries.values()],
    }


class Sources(Endpoint):
    def child(self, segment: str) -> Endpoint | None:
        source_id = numeric_id(segment)
        return Source(self.ctx, source_id) if source_id is not None else None


class Source(Endpoint):
    methods = ("get",)

    def __init__(self, ctx: Any, source_id: int) -> None:
        super().__init__(ctx)
        self.source_id = source_id

    async def get(self, call: Call) -> Reply:
        grant = await call.grant()
        return ok(await source_json(self.ctx, self.source_id, grant))
