"""``/api/v1/builders``: list, show, add, change (enable/disable, manual mode, ...) and
remove builders."""

from __future__ import annotations

from typing import Any

from buildmaster.builderstate import BuilderState
from buildmaster.model import Processor
from buildmaster.store.builders import BuilderBusy
from buildmaster.store.database import NotFound
from buildmaster.store.views import BuilderOverview
from buildmaster.store.views.builders import CurrentBuild
from buildmaster.web.api.builds import _live_logtail
from buildmaster.web.api.endpoint import Call, Endpoint, Reply, created, no_content, ok
from buildmaster.web.api.problems import conflict, invalid_parameter, unprocessable
from buildmaster.web.api.representations import build_summary_json, event_json, iso

__all__ = ["Builders"]


def overview_json(ctx: Any, o: BuilderOverview) -> Any:
    b = o.builder
    return {
        "name": b.name,
        "url": f"/api/v1/builders/{b.name}",
        "builder_url": b.url,
        "title": b.title,
        "processors": list(o.processors),
        "virtualized": b.virtualized,
        "vm_host": b.vm_host,
        "state": o.state.value,
        "ok": b.builderok,
        "failnotes": b.failnotes,
        "failed_by_master": b.failed_by_master,
        "out_of_service_since": iso(o.out_of_service_since),
        "manual": b.manual,
        "active": b.active,
        "failure_count": b.failure_count,
        "clean_status": b.clean_status.name.lower(),
        "version": b.version,
        "busy": o.job is not None,
        "current_build": current_json(ctx, o.current) if o.current is not None else None,
    }


def current_json(ctx: Any, current: CurrentBuild) -> Any:
    started = current.started
    return {
        "id": current.id,
        "url": f"/api/v1/builds/{current.id}",
        "title": current.title,
        "state": current.status.name,
        "started": started,
        "duration": (ctx.now() - started).total_seconds() if started is not None else None,
    }


class Builders(Endpoint):
    methods = ("get", "post")

    def child(self, segment: str) -> Endpoint | None:
        return Builder(self.ctx, segment)

    async def get(self, call: Call) -> Reply:
        grant = await call.grant()
        states = call.enum_params("state", BuilderState, lambda s: s.value)
        processor = call.param("processor")
        virtualized = call.bool_param("virtualized")
        builder_ok = call.bool_param("ok")
        every = await self.ctx.store.views.builders.all(
            grant, include_inactive=BuilderState.INACTIVE in states
        )
        shown = [
            o
            for o in every
            if (not states or o.state in states)
            and (processor is None or processor in o.processors)
            and (virtualized is None or o.builder.virtualized == virtualized)
            and (builder_ok is None or o.builder.builderok == builder_ok)
        ]
        return ok({"builders": [overview_json(self.ctx, o) for o in shown]})

    async def post(self, call: Call) -> Reply:
        await call.require_admin("adding a builder")
        body = call.json("BuilderCreate")
        store = self.ctx.store
        name = body["name"]
        try:
            existing = await store.builders.getByName(name)
        except NotFound:
            existing = None
        if existing is not None:
            hint = (
                ""
                if existing.active
                else f'; it was removed but keeps its history: PATCH /api/v1/builders/{name} {{"active": true}} brings it back'
            )
            raise conflict(f"a builder called {name} exists already{hint}")
        processors = await _processors(self.ctx, body["processors"])
        virtualized = body.get("virtualized", False)
        builder = await store.builders.new(
            name,
            body["url"],
            processors,
            virtualized=virtualized,
            vm_host=body.get("vm_host"),
            title=body.get("title", ""),
            manual=body.get("manual", False),
        )
        # the masters take it now, not when its slice of the scan comes round
        await self.ctx.operations.builder_changed(builder)
        overview = await store.views.builders.overview(builder.name, await call.grant())
        return created(overview_json(self.ctx, overview), f"/api/v1/builders/{builder.name}")


async def _processors(ctx: Any, names: list[str]) -> list[Processor]:
    known = {p.name: p for p in await ctx.store.views.catalog.processors()}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise unprocessable(
            f"no processor {', '.join(unknown)}; the processors are {', '.join(sorted(known))}"
        )
    return [known[n] for n in dict.fromkeys(names)]


class Builder(Endpoint):
    methods = ("get", "patch", "delete")

    def __init__(self, ctx: Any, name: str) -> None:
        super().__init__(ctx)
        self.name = name

    async def get(self, call: Call) -> Reply:
        grant = await call.grant()
        detail = await self.ctx.store.views.builders.detail(self.name, grant)
        shown = overview_json(self.ctx, detail.overview)
        job = detail.overview.job
        shown.update(
            logtail=_live_logtail(self.ctx, job) if detail.overview.current is not None else None,
            recent_builds=[build_summary_json(b, self.ctx.now()) for b in detail.recent_builds],
            events=[event_json(e) for e in detail.events],
        )
        return ok(shown)

    async def patch(self, call: Call) -> Reply:
        grant = await call.require_admin(f"changing builder {self.name}")
        body = call.json("BuilderUpdate")
        store = self.ctx.store
        builder = await store.builders.getByName(self.name)
        changes = []
        if "active" in body and body["active"] != builder.active:
            builder = await store.builders.set_active(builder, body["active"])
            changes.append("brought back" if body["active"] else "made inactive")
        if "enabled" in body:
            reason = body.get("reason") or "no reason given"
            if body["enabled"] and not builder.builderok:
                builder = await store.builders.set_builderok(builder, True)
                await store.events.record(
                    "enabled", f"enabled by an operator: {reason}", builder=builder.id
                )
            elif not body["enabled"]:
                builder = await store.builders.set_builderok(
                    builder, False, failnotes=f"disabled by an operator: {reason}"
                )
                await store.events.record(
                    "disabled", f"disabled by an operator: {reason}", builder=builder.id
                )
        elif "reason" in body:
            raise invalid_parameter("reason", "goes with enabled")
        if "manual" in body:
            builder = await self.ctx.operations.set_manual(builder, body["manual"])
            changes.append(f"manual mode {'on' if body['manual'] else 'off'}")
        if "virtualized" in body:
            builder = await store.builders.set_virtualized(builder, body["virtualized"])
            changes.append("virtualized" if body["virtualized"] else "trusted")
        if "vm_host" in body:
            builder = await store.builders.set_vm_host(builder, body["vm_host"])
            changes.append(f"VM host {body['vm_host']}")
        if "url" in body:
            builder = await store.builders.set_url(builder, body["url"])
            changes.append(f"URL {body['url']}")
        if "processors" in body:
            processors = await _processors(self.ctx, body["processors"])
            builder = await store.builders.set_processors(builder, processors)
            changes.append(f"processors {', '.join(p.name for p in processors)}")
        if changes:
            await store.events.record("updated", "; ".join(changes), builder=builder.id)
        if set(body) - {"manual", "reason"}:  # (manual mode tells the master itself)
            await self.ctx.operations.builder_changed(builder)
        overview = await store.views.builders.overview(self.name, grant)
        return ok(overview_json(self.ctx, overview))

    async def delete(self, call: Call) -> Reply:
        await call.require_admin(f"removing builder {self.name}")
        store = self.ctx.store
        builder = await store.builders.getByName(self.name)
        try:
            await store.builders.remove(builder)
        except BuilderBusy as e:
            raise conflict(
                f"builder {self.name} is busy with build {e.build_id}: cancel it (POST"
                f" /api/v1/builds/{e.build_id}/cancel) or wait until it ends, then remove"
                f" {self.name}",
                build=e.build_id,
            ) from None
        return no_content()
