"""``/api/v1/queue``: per kind of build its size, oldest job and estimated drain time;
``/api/v1/queue/jobs``: the waiting jobs in dispatch order (the order builders will take
them in, as forecast from the fair-share rules); ``/api/v1/queue/history``: the farm minute
by minute (builds finished, queue depth) over the last hours."""

from __future__ import annotations

import datetime
from typing import Any
from urllib.parse import urlencode

from buildmaster.store.views import QueueKind, WaitingJob
from buildmaster.web.api.endpoint import Call, Endpoint, Reply, ok
from buildmaster.web.api.problems import invalid_parameter
from buildmaster.web.api.representations import build_summary_json, iso, later

__all__ = ["Queue", "parse_after"]


def kind_json(kind: QueueKind) -> Any:
    drain = kind.drain_seconds
    oldest = kind.oldest_waiting
    return {
        "kind": kind.name,
        "processor": kind.processor,
        "virtualized": kind.virtualized,
        "waiting": kind.waiting,
        "suspended": kind.suspended,
        "running": kind.running,
        "oldest_waiting": iso(oldest),
        "oldest_wait_seconds": (kind.as_of - oldest).total_seconds() if oldest else None,
        "builders": kind.builders,
        "usable_builders": kind.usable_builders,
        "estimated_drain_seconds": drain,
        "estimated_drain": later(kind.as_of, drain),
    }


def parse_after(cursor: str) -> tuple[int, int] | None:
    """``COUNT:JOB`` (jobs listed so far, the last one's id) as numbers, ``None`` if it is
    not that."""
    count, _, job = cursor.partition(":")
    if not (count.isascii() and count.isdigit() and job.isascii() and job.isdigit()):
        return None
    after = (int(count), int(job))
    return after if after[0] < 2**31 and after[1] < 2**31 else None


class Queue(Endpoint):
    methods = ("get",)

    def child(self, segment: str) -> Endpoint | None:
        if segment == "history":
            return QueueHistory(self.ctx)
        return QueueJobs(self.ctx) if segment == "jobs" else None

    async def get(self, call: Call) -> Reply:
        kinds = await self.ctx.store.views.queue.kinds(max_age=self.ctx.limits.queue_max_age)
        as_of = kinds[0].as_of if kinds else self.ctx.now()
        return ok({"as_of": iso(as_of), "kinds": [kind_json(k) for k in kinds]})


class QueueJobs(Endpoint):
    methods = ("get",)

    async def get(self, call: Call) -> Reply:
        grant = await call.grant()
        processor_id = None
        processor = call.param("processor")
        if processor is not None:
            known = {p.name: p.id for p in await self.ctx.store.views.catalog.processors()}
            if processor not in known:
                raise invalid_parameter(
                    "processor",
                    f"no processor {processor!r} (there are {', '.join(sorted(known))})",
                )
            processor_id = known[processor]
        virtualized = call.bool_param("virtualized")
        after = None
        cursor = call.param("after")
        if cursor is not None:
            after = parse_after(cursor)
            if after is None:
                raise invalid_parameter("after", f"{cursor!r} is not COUNT:JOB") from None
        page = await self.ctx.store.views.queue.waiting(
            grant,
            processor_id,
            virtualized,
            after,
            call.page_size(),
            max_age=self.ctx.limits.order_max_age,
        )
        next_url = None
        if page.next_after is not None:
            args = {k.decode(): v[-1].decode() for k, v in (call.request.args or {}).items()}
            args["after"] = f"{page.next_after[0]}:{page.next_after[1]}"
            next_url = f"/api/v1/queue/jobs?{urlencode(sorted(args.items()))}"
        now = self.ctx.now()
        return ok(
            {
                "as_of": iso(page.as_of),
                "jobs": [self.job_json(j, now) for j in page.jobs],
                "next": next_url,
            }
        )

    def job_json(self, job: WaitingJob, now: datetime.datetime) -> Any:
        return {
            "position": job.position,
            "aged": job.aged,
            "score": job.score,
            "manual_score": job.manual,
            "processor": job.processor,
            "virtualized": job.virtualized,
            "queued": iso(job.queued),
            "estimated_duration": job.estimated_seconds,
            "hidden": job.build is None,
            "build": build_summary_json(job.build, now) if job.build is not None else None,
        }


class QueueHistory(Endpoint):
    """``/queue/history``: the farm's per-minute samples (what the pages' picture shows)."""

    methods = ("get",)

    async def get(self, call: Call) -> Reply:
        hours = call.int_param("hours", 6, 1, 48)
        assert hours is not None
        history = await self.ctx.store.views.samples.history(float(hours))
        return ok(
            {
                "since": iso(history.since),
                "until": iso(history.until),
                "samples": [
                    {
                        "minute": iso(s.minute),
                        "finished": s.finished,
                        "waiting": s.waiting,
                        "running": s.running,
                    }
                    for s in history.samples
                ],
            }
        )
