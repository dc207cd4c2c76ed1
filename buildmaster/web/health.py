"""``/healthz`` (the process answers) and ``/readyz`` (the database answers and the scanner
runs; in a web-only process, which does not scan, the database answers): for load balancers
and orchestrators."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from buildmaster.store.database import Database
from buildmaster.web.api.context import FarmReader

__all__ = ["PlainResource", "Healthz", "Readyz"]


class PlainResource(resource.Resource):
    """A leaf answering ``GET`` (and ``HEAD``) with ``answer``; 405 for anything else."""

    isLeaf = True
    _log = Logger()

    def render(self, request: server.Request) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(http.NOT_ALLOWED)
            request.setHeader(b"allow", b"GET, HEAD")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"GET only\n"
        d = defer.Deferred.fromCoroutine(self.answer(request))
        d.addCallbacks(lambda _: None, self._failed, errbackArgs=(request,))
        return server.NOT_DONE_YET

    async def answer(self, request: server.Request) -> None:
        raise NotImplementedError

    def _failed(self, failure: Failure, request: server.Request) -> None:
        self._log.failure("{uri} failed", failure, uri=request.uri)
        if request.channel is not None and not request.finished:
            request.setResponseCode(http.INTERNAL_SERVER_ERROR)
            request.finish()


def _send_json(request: server.Request, status: int, body: Any) -> None:
    if request.channel is None:
        return
    data = json.dumps(body).encode()
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", b"%d" % len(data))
    request.write(data)
    request.finish()


class Healthz(PlainResource):
    async def answer(self, request: server.Request) -> None:
        _send_json(request, http.OK, {"alive": True})


async def answers_within(d: defer.Deferred[Any], clock: Any, seconds: float) -> str | None:
    """``None`` when ``d`` succeeds within ``seconds``; else what went wrong. ``d`` is left
    to finish (or fail) by itself: it is not cancelled."""
    done: defer.Deferred[str | None] = defer.Deferred()

    def late() -> None:
        if not done.called:
            done.callback(f"no answer within {seconds:g} s")

    timer = clock.callLater(seconds, late)

    def finished(result: object) -> None:
        if timer.active():
            timer.cancel()
        if not done.called:
            done.callback(str(result.value) if isinstance(result, Failure) else None)

    d.addBoth(finished)
    return await done


class Readyz(PlainResource):
    """Ready when ``SELECT 1`` answers within ``timeout`` seconds and the scan loop runs
    with a cycle within ``max_cycle_age`` seconds; in a process that does not scan (web
    only), when the database answers."""

    def __init__(
        self,
        clock: Any,
        db: Database,
        farm: FarmReader,
        max_cycle_age: float,
        timeout: float = 2.0,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.db = db
        self.farm = farm
        self.max_cycle_age = max_cycle_age
        self.timeout = timeout

    async def answer(self, request: server.Request) -> None:
        problem = await answers_within(self.db.query("SELECT 1"), self.clock, self.timeout)
        database = {"ok": problem is None, "detail": problem or "answers"}
        last = self.farm.last_scan_cycle
        age = self.clock.seconds() - last if last is not None else None
        if not self.farm.scans:
            scanner = {"ok": True, "detail": "this process does not scan: it serves the web only"}
        elif not self.farm.scanning:
            scanner = {"ok": False, "detail": "the scan loop is not running"}
        elif age is None or age > self.max_cycle_age:
            since = f"{age:.0f} s ago" if age is not None else "never"
            scanner = {"ok": False, "detail": f"the last scan cycle ran {since}"}
        else:
            scanner = {"ok": True, "detail": f"the last scan cycle ran {age:.1f} s ago"}
        ready = database["ok"] and scanner["ok"]
        _send_json(
            request,
            http.OK if ready else http.SERVICE_UNAVAILABLE,
            {"ready": ready, "checks": {"database": database, "scanner": scanner}},
        )
