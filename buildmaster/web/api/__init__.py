"""The operator API, ``/api/v1``: JSON in and out, described by the OpenAPI 3.1 document at
``/api/v1/openapi.json`` (:mod:`buildmaster.web.api.openapi`), errors as RFC 9457 problem
documents (:mod:`buildmaster.web.api.problems`).

One module per family of resources: builders, queue, builds, sources (uploads), chroots,
archives (with series and processors), tokens. The resources translate HTTP into calls
of the store's views and operations, and their answers back into JSON; they hold no state
of the farm.
"""

from __future__ import annotations

from typing import cast

from twisted.web import resource

from buildmaster.web.api.archives import Archives, Processors, Series
from buildmaster.web.api.builders import Builders
from buildmaster.web.api.builds import Builds
from buildmaster.web.api.chroots import Chroots
from buildmaster.web.api.context import ApiContext, ApiLimits, FarmReader, Operations
from buildmaster.web.api.endpoint import Call, Endpoint, Reply, ok
from buildmaster.web.api.openapi import document
from buildmaster.web.api.queue import Queue
from buildmaster.web.api.sources import Sources, Uploads
from buildmaster.web.api.tokens import Tokens

__all__ = ["api_resource", "ApiContext", "ApiLimits", "FarmReader", "Operations"]


class OpenAPIDocument(Endpoint):
    methods = ("get",)

    async def get(self, call: Call) -> Reply:
        return ok(document())


class ApiRoot(Endpoint):
    """``/api/v1``: what the API has."""

    methods = ("get",)
    families = {
        "builders": Builders,
        "queue": Queue,
        "builds": Builds,
        "uploads": Uploads,
        "sources": Sources,
        "chroots": Chroots,
        "archives": Archives,
        "series": Series,
        "processors": Processors,
        "tokens": Tokens,
        "openapi.json": OpenAPIDocument,
    }

    def child(self, segment: str) -> Endpoint | None:
        family = self.families.get(segment)
        return family(self.ctx) if family is not None else None

    async def get(self, call: Call) -> Reply:
        return ok(
            {
                "api": "buildmaster operator API",
                "version": "1",
                "openapi": "/api/v1/openapi.json",
                "links": {name: f"/api/v1/{name}" for name in self.families},
            }
        )


def api_resource(ctx: ApiContext) -> resource.IResource:
    """The resource to mount at ``/api/v1``."""
    return cast(resource.IResource, ApiRoot(ctx))
