"""The master's operator web: the operator API (``/api/v1``, :mod:`buildmaster.web.api`), the
web pages (``/builders``, ``/builds``, ``/queue``, ..., :mod:`buildmaster.web.pages`),
Prometheus metrics (``/metrics``, :mod:`buildmaster.web.metrics`) and health checks
(``/healthz``, ``/readyz``, :mod:`buildmaster.web.health`), mounted in the master's web
server beside the librarian.

:func:`mount_operator_web` puts them into a site's root; :func:`bearer_verifier` is what
the site's request factory uses to stream large API uploads only for valid tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from twisted.internet import defer
from twisted.web import resource, server

from buildmaster.store import Store
from buildmaster.web.api import ApiContext, api_resource
from buildmaster.web.api.endpoint import Call, Endpoint, Reply, ok
from buildmaster.web.health import Healthz, Readyz
from buildmaster.web.metrics import MetricsResource
from buildmaster.web.pages import mount_pages

__all__ = ["mount_operator_web", "bearer_verifier"]


class _ApiNamespace(Endpoint):
    """``/api``: the versions of the API (one so far)."""

    methods = ("get",)

    def __init__(self, ctx: ApiContext) -> None:
        super().__init__(ctx)
        self._v1 = api_resource(ctx)

    def getChild(self, path: bytes, request: server.Request) -> resource.IResource:
        if path == b"v1":
            return self._v1
        return super().getChild(path, request)

    async def get(self, call: Call) -> Reply:
        return ok({"versions": ["/api/v1"]})


def mount_operator_web(root: resource.Resource, ctx: ApiContext, max_cycle_age: float) -> None:
    """Mount the API, ``/metrics``, ``/healthz``, ``/readyz`` and the web pages
    (:mod:`buildmaster.web.pages`) in ``root``.

    :param max_cycle_age: seconds after which a scan cycle is late (not ready).
    """
    readyz = Readyz(ctx.clock, ctx.store.db, ctx.farm, max_cycle_age=max_cycle_age)
    children: list[tuple[bytes, object]] = [
        (b"api", _ApiNamespace(ctx)),
        (b"metrics", MetricsResource(ctx.metrics)),
        (b"healthz", Healthz()),
        (b"readyz", readyz),
    ]
    for name, child in children:
        root.putChild(name, cast(resource.IResource, child))
    mount_pages(root, ctx)


def bearer_verifier(store: Callable[[], Store | None]) -> Callable[[str], defer.Deferred[bool]]:
    """Checks a bearer token against the database (``False`` while there is no store)."""

    async def valid(secret: str) -> bool:
        current = store()
        return current is not None and await current.tokens.authenticate(secret) is not None

    def verify(secret: str) -> defer.Deferred[bool]:
        return defer.Deferred.fromCoroutine(valid(secret))

    return verify
