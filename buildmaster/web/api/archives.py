"""``/api/v1/archives`` (list, show, create a PPA, disable and enable), ``/api/v1/series`` and
``/api/v1/processors``."""

from __future__ import annotations

from typing import Any, cast

from twisted.web import resource, server

from buildmaster.access import Grant
from buildmaster.enums import ArchivePurpose
from buildmaster.model import Archive
from buildmaster.store.database import NotFound
from buildmaster.store.views import SeriesView
from buildmaster.web.api.endpoint import Call, Endpoint, Reply, created, ok
from buildmaster.web.api.problems import conflict, not_found, unprocessable
from buildmaster.web.api.representations import archive_json

__all__ = ["Archives", "Series", "Processors"]


class Archives(Endpoint):
    methods = ("get", "post")

    def getChild(self, path: bytes, request: server.Request) -> resource.IResource:
        # a reference may have slashes (~cprov/ubuntu/ppa): the rest of the path is it
        if path == b"" and not request.postpath:
            return cast(resource.IResource, self)
        segments = [path, *(request.postpath or [])]
        request.postpath = []
        try:
            reference = b"/".join(segments).decode("utf-8")
        except UnicodeDecodeError:
            reference = ""
        return cast(resource.IResource, ArchiveByReference(self.ctx, reference))

    async def get(self, call: Call) -> Reply:
        grant = await call.grant()
        archives = await self.ctx.store.views.catalog.archives(grant, call.param("distribution"))
        return ok({"archives": [archive_json(a) for a in archives]})

    async def post(self, call: Call) -> Reply:
        grant = await call.require_admin("creating a PPA")
        body = call.json("ArchiveCreate")
        store = self.ctx.store
        try:
            distribution = await store.distributions.getByName(body["distribution"])
        except NotFound:
            raise unprocessable(
                f"no distribution {body['distribution']}; GET /api/v1/series lists them"
            ) from None
        try:
            owner = await store.persons.getByName(body["owner"])
        except NotFound:
            owner = await store.persons.new(body["owner"], body["owner"])
        name = body.get("name", "ppa")
        reference = f"~{owner.name}/{distribution.name}/{name}"
        try:
            await store.views.catalog.archive(reference, grant)
        except NotFound:
            pass
        else:
            raise conflict(f"{reference} exists already")
        archive = await store.archives.new(
            owner,
            distribution,
            ArchivePurpose.PPA,
            name=name,
            displayname=body.get("displayname") or f"PPA {name} of {owner.name}",
            private=body.get("private", False),
        )
        return created(archive_json(archive), f"/api/v1/archives/{archive.reference}")


class ArchiveByReference(Endpoint):
    methods = ("get", "patch")
    isLeaf = True

    def __init__(self, ctx: Any, reference: str) -> None:
        super().__init__(ctx)
        self.reference = reference

    async def _archive(self, grant: Grant) -> Archive:
        """The archive named, if the grant may see it (404 otherwise)."""
        try:
            return await self.ctx.store.views.catalog.archive(self.reference, grant)
        except ValueError as e:
            raise not_found(str(e)) from None

    async def get(self, call: Call) -> Reply:
        return ok(archive_json(await self._archive(await call.grant())))

    async def patch(self, call: Call) -> Reply:
        grant = await call.require_admin(f"changing archive {self.reference}")
        body = call.json("ArchiveUpdate")
        archive = await self._archive(grant)
        # disabled: its waiting builds are suspended; enabled: they go back in the queue
        # (whose NOTIFY wakes the idle builders)
        archive = await self.ctx.store.archives.set_enabled(archive, body["enabled"])
        return ok(archive_json(archive))


def series_json(series: SeriesView) -> Any:
    return {
        "distribution": series.distribution,
        "name": series.name,
        "version": series.version,
        "architectures": [
            {
                "tag": a.tag,
                "processor": a.processor,
                "enabled": a.enabled,
                "has_chroot": a.chroot is not None,
            }
            for a in series.architectures
        ],
    }


class Series(Endpoint):
    methods = ("get",)

    async def get(self, call: Call) -> Reply:
        every = await self.ctx.store.views.catalog.series(call.param("distribution"))
        return ok({"series": [series_json(s) for s in every]})


class Processors(Endpoint):
    methods = ("get",)

    async def get(self, call: Call) -> Reply:
        every = await self.ctx.store.views.catalog.processors()
        return ok({"processors": [{"name": p.name, "title": p.title} for p in every]})
