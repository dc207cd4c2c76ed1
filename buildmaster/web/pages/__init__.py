"""The web pages: the farm, the queue and every build in a browser, served by the master
beside the operator API.

    /builders            every builder, the queue per processor (official and PPA) with
                         its drain time, builders out of service and why, the last hours
    /builders/NAME       one builder: state, current build and its live log, history
    /builds, /builds/ID  builds (filters, pages); one build in full, its live log,
                         cancel/retry/rescore for a signed-in operator
    /queue               the waiting builds in dispatch order
    /archives[/...]      archives; an archive's builds
    /signin, /signout    an API token kept in an HttpOnly, SameSite=Strict cookie
    /static/...          the pages' stylesheet, script and icon

Server-rendered with Jinja2 (autoescaped: everything that comes from builders and
uploaders is escaped), readable without JavaScript; a small script follows live logs
through the API's server-sent events and refreshes the overviews. Every read goes through
the store's views (:mod:`buildmaster.store.views`), every operation through the API's
:func:`~buildmaster.web.api.builds.operate_build`: the pages can show and do nothing the
API would not.
"""

from __future__ import annotations

from importlib import resources as package_files
from typing import cast

from twisted.web import resource, server

from buildmaster.web.api import ApiContext
from buildmaster.web.pages.builds import ArchivesPage, BuildsPage, SignIn, SignOut
from buildmaster.web.pages.farm import BuildersPage, QueuePage
from buildmaster.web.pages.page import environment

__all__ = ["mount_pages"]

_TYPES = {
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".svg": b"image/svg+xml",
}


class _StaticFile(resource.Resource):
    isLeaf = True

    def __init__(self, content: bytes, content_type: bytes) -> None:
        super().__init__()
        self.content = content
        self.content_type = content_type

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", b"public, max-age=3600")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return self.content


class _Static(resource.Resource):
    """``/static/NAME``: the few files of ``buildmaster/web/pages/static``, read at start."""

    def __init__(self) -> None:
        super().__init__()
        folder = package_files.files("buildmaster.web.pages").joinpath("static")
        for entry in folder.iterdir():
            suffix = "." + entry.name.rpartition(".")[2]
            if suffix in _TYPES:
                self.putChild(
                    entry.name.encode(),
                    cast(resource.IResource, _StaticFile(entry.read_bytes(), _TYPES[suffix])),
                )


def mount_pages(root: resource.Resource, ctx: ApiContext) -> None:
    """Mount the pages in ``root`` (the master's web root, beside ``/api/v1``)."""
    env = environment()
    children: list[tuple[bytes, object]] = [
        (b"builders", BuildersPage(ctx, env)),
        (b"builds", BuildsPage(ctx, env)),
        (b"queue", QueuePage(ctx, env)),
        (b"archives", ArchivesPage(ctx, env)),
        (b"signin", SignIn(ctx, env)),
        (b"signout", SignOut(ctx, env)),
        (b"static", _Static()),
    ]
    for name, child in children:
        root.putChild(name, cast(resource.IResource, child))
