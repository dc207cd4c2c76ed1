"""``/api/v1/chroots``: every architecture's chroot (size, checksums, URL), and
``PUT /api/v1/chroots/<distribution>/<series>/<architecture>`` to upload or replace one
(streamed into the librarian; admin)."""

from __future__ import annotations

import datetime
from typing import Any

from twisted.web import http

from buildmaster.store.views import ArchitectureView, SeriesView
from buildmaster.web.api.endpoint import Call, Endpoint, Reply, ok
from buildmaster.web.api.problems import not_found
from buildmaster.web.api.representations import file_json

__all__ = ["Chroots"]

#: a replaced chroot stays this long for builders that are fetching it
REPLACED_CHROOT_LIFETIME = datetime.timedelta(days=1)


def chroot_json(ctx: Any, series: SeriesView, arch: ArchitectureView) -> Any:
    return {
        "distribution": series.distribution,
        "series": series.name,
        "architecture": arch.tag,
        "processor": arch.processor,
        "enabled": arch.enabled,
        "chroot": file_json(ctx.librarian, arch.chroot) if arch.chroot is not None else None,
    }


class Chroots(Endpoint):
    methods = ("get",)

    def child(self, segment: str) -> Endpoint | None:
        return _Segment(self.ctx, (segment,))

    async def get(self, call: Call) -> Reply:
        every = await self.ctx.store.views.catalog.series(call.param("distribution"))
        return ok(
            {"chroots": [chroot_json(self.ctx, s, a) for s in every for a in s.architectures]}
        )


class _Segment(Endpoint):
    """``/chroots/<distribution>`` and ``/chroots/<distribution>/<series>``: on the way."""

    def child(self, segment: str) -> Endpoint | None:
        path = (*self.path, segment)
        return Chroot(self.ctx, *path) if len(path) == 3 else _Segment(self.ctx, path)

    def __init__(self, ctx: Any, path: tuple[str, ...]) -> None:
        super().__init__(ctx)
        self.path = path


class Chroot(Endpoint):
    methods = ("get", "put")

    def __init__(self, ctx: Any, distribution: str, series: str, arch: str) -> None:
        super().__init__(ctx)
        self.distribution, self.series, self.arch = distribution, series, arch

    @property
    def name(self) -> str:
        return f"{self.distribution}/{self.series}/{self.arch}"

    async def _find(self) -> tuple[SeriesView, ArchitectureView]:
        for series in await self.ctx.store.views.catalog.series(self.distribution):
            if series.name != self.series:
                continue
            for arch in series.architectures:
                if arch.tag == self.arch:
                    return series, arch
        raise not_found(f"no architecture {self.name}; GET /api/v1/series lists them")

    async def get(self, call: Call) -> Reply:
        series, arch = await self._find()
        return ok(chroot_json(self.ctx, series, arch))

    async def put(self, call: Call) -> Reply:
        await call.require_admin(f"uploading the chroot of {self.name}")
        series, arch = await self._find()
        filename = (
            call.param("filename") or f"chroot-{self.distribution}-{self.series}-{self.arch}.tar.gz"
        )
        content_type = (call.request.getHeader(b"content-type") or b"application/x-gzip").decode(
            "latin-1"
        )
        alias = await call.store_body(filename, content_type, restricted=False, expires=None)
        old = arch.chroot
        await self.ctx.operations.addOrUpdateChroot(arch.id, alias)
        if old is not None and old.id != alias:
            await self.ctx.store.files.expire(old.id, self.ctx.now() + REPLACED_CHROOT_LIFETIME)
        series, arch = await self._find()
        status = http.OK if old is not None else http.CREATED
        return Reply(status, chroot_json(self.ctx, series, arch))
