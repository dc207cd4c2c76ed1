"""``/builders``, ``/builders/NAME`` and ``/queue``: the farm at a glance, one builder, the
queue in dispatch order (the order builders will take the jobs in, forecast from the
fair-share rules). Read through the store's views, as the API reads."""

from __future__ import annotations

import collections
import datetime
from typing import Any
from urllib.parse import quote

import attrs
from twisted.web import resource, server

from buildmaster.builderstate import BuilderState
from buildmaster.store.views import BuilderOverview, QueueKind
from buildmaster.web.api.builds import _live_logtail
from buildmaster.web.api.queue import parse_after
from buildmaster.web.pages import text
from buildmaster.web.pages.chart import chart_of
from buildmaster.web.pages.page import Html, Page, Redirect, Viewer, arg

__all__ = ["BuildersPage", "BuilderPage", "QueuePage"]

#: the order of states in the counts, and in the table sorted by state
STATE_ORDER = (
    BuilderState.FAILED,
    BuilderState.DISABLED,
    BuilderState.BUILDING,
    BuilderState.CLEANING,
    BuilderState.IDLE,
    BuilderState.MANUAL,
    BuilderState.INACTIVE,
)
_STATE_RANK = {s: i for i, s in enumerate(STATE_ORDER)}

#: the builders table's sort keys (``?sort=state``, ``?sort=-name``)
SORTS: dict[str, Any] = {
    "name": lambda o: o.builder.name,
    "processors": lambda o: (o.processors, o.builder.name),
    "kind": lambda o: (o.builder.virtualized, o.builder.name),
    "mode": lambda o: (o.builder.manual, o.builder.name),
    "state": lambda o: (_STATE_RANK[o.state], o.builder.name),
    "since": lambda o: (o.current.started.timestamp() if o.current and o.current.started else 0,),
}

#: the events of a builder's history that are failures or the master's judgements
JUDGEMENTS = frozenset(
    {"failure", "failed", "restored", "disabled", "enabled", "lost", "given-back", "released"}
)

#: hours of the farm's picture
HISTORY_HOURS = 6.0


def kind_label(kind: QueueKind) -> str:
    return "PPA" if kind.virtualized else "official"


@attrs.frozen
class BuilderRow:
    """A row of the builders table, as the words it shows (a thousand rows render in a
    plain loop: no macro, no filter per row)."""

    name: str
    href: str
    processors: str
    kind: str
    mode: str
    state: str
    state_class: str
    #: what it builds and for how long, or why it is out of service
    doing: str
    doing_href: str | None
    failnotes: bool


def builder_row(o: BuilderOverview, now: datetime.datetime) -> BuilderRow:
    b = o.builder
    state = o.state.value
    doing, href, failnotes = "", None, False
    if o.state is BuilderState.BUILDING:
        if o.current is None:
            doing = "a private build"
        else:
            href = f"/builds/{o.current.id}"
            doing = o.current.title
            if o.current.started is not None:
                doing += f" for {text.duration((now - o.current.started).total_seconds())}"
    elif o.state in (BuilderState.FAILED, BuilderState.DISABLED):
        doing, failnotes = b.failnotes or "no reason given", True
    return BuilderRow(
        name=b.name,
        href=f"/builders/{quote(b.name)}",
        processors=", ".join(o.processors),
        kind="virtualized" if b.virtualized else "trusted",
        mode="manual" if b.manual else "auto",
        state=state,
        state_class=text.state_class(state),
        doing=doing,
        doing_href=href,
        failnotes=failnotes,
    )


class BuildersPage(Page):
    """``/builders``: is the farm healthy, how long is the queue per processor for official
    and PPA builds, which builders are down and why; every builder, sortable."""

    def child(self, segment: str, request: server.Request) -> resource.Resource | None:
        return BuilderPage(self.ctx, self.env, segment)

    async def get(self, request: server.Request, viewer: Viewer) -> Html | Redirect:
        views = self.ctx.store.views
        builders = await views.builders.all(viewer.grant)
        kinds = await views.queue.kinds(max_age=self.ctx.limits.queue_max_age)
        history = await views.samples.history(HISTORY_HOURS)
        sort = arg(request, "sort") or "name"
        key = SORTS.get(sort.lstrip("-"))
        if key is None:
            sort, key = "name", SORTS["name"]
        now = self.now()
        shown = [
            builder_row(o, now) for o in sorted(builders, key=key, reverse=sort.startswith("-"))
        ]
        counts = collections.Counter(o.state for o in builders)
        down = [o for o in builders if o.state in (BuilderState.FAILED, BuilderState.DISABLED)]
        return self.render_template(
            viewer,
            "builders.html",
            title="Builders",
            builders=shown,
            sort=sort,
            counts=[(s.value, counts[s]) for s in STATE_ORDER if counts[s]],
            total=len(builders),
            down=down,
            kinds=kinds,
            kind_label=kind_label,
            chart=chart_of(history),
        )


class BuilderPage(Page):
    """``/builders/NAME``: its state, its current build with the live log tail, its recent
    builds, its failures and the judgements made, its history."""

    def __init__(self, ctx: Any, env: Any, name: str) -> None:
        super().__init__(ctx, env)
        self.name = name

    async def get(self, request: server.Request, viewer: Viewer) -> Html | Redirect:
        detail = await self.ctx.store.views.builders.detail(self.name, viewer.grant)
        overview: BuilderOverview = detail.overview
        logtail = _live_logtail(self.ctx, overview.job) if overview.current is not None else None
        return self.render_template(
            viewer,
            "builder.html",
            title=f"Builder {overview.builder.name}",
            o=overview,
            b=overview.builder,
            logtail=logtail,
            recent=detail.recent_builds,
            judgements=[e for e in detail.events if e.kind in JUDGEMENTS],
            events=detail.events,
        )


class QueuePage(Page):
    """``/queue``: per kind its size and drain time; the waiting builds in dispatch order
    (of one kind with ``?processor=&virtualized=``, with their positions), paged."""

    async def get(self, request: server.Request, viewer: Viewer) -> Html | Redirect:
        views = self.ctx.store.views
        kinds = await views.queue.kinds(max_age=self.ctx.limits.queue_max_age)
        processor = arg(request, "processor")
        virtualized_text = arg(request, "virtualized")
        virtualized = None if virtualized_text is None else virtualized_text == "true"
        processor_id = None
        if processor is not None:
            known = {p.name: p.id for p in await views.catalog.processors()}
            processor_id = known.get(processor)
            if processor_id is None:
                return self.error_page(viewer, 404, f"There is no processor {processor}.")
        after = None
        cursor = arg(request, "after")
        if cursor is not None:
            after = parse_after(cursor)
            if after is None:
                return self.error_page(viewer, 400, f"{cursor} is not COUNT:JOB.")
        page = await views.queue.waiting(
            viewer.grant,
            processor_id,
            virtualized,
            after,
            50,
            max_age=self.ctx.limits.order_max_age,
        )
        history = await views.samples.history(HISTORY_HOURS)
        return self.render_template(
            viewer,
            "queue.html",
            title="Queue",
            kinds=kinds,
            kind_label=kind_label,
            jobs=page.jobs,
            next_after=page.next_after,
            processor=processor,
            virtualized=virtualized_text,
            first_page=after is None,
            chart=chart_of(history),
        )
