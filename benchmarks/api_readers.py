"""Readers of the operator API, at a fixed rate: the load of issue 21's second budget.

Started by ``benchmarks/throughput.py --api-readers RATE`` (or by hand) against a running
master. Every ``1/RATE`` seconds it sends one request (open loop: a slow answer does not
slow the readers down; at most ``--max-in-flight`` at once, the rest are counted as
skipped), over kept-alive connections, drawn from a mix of what people and scripts read:

* 40 % ``/api/v1/builds/<id>/log``: followers of a build's log (``build log --follow``);
* 25 % ``/api/v1/builds/<id>``: one build in full;
* 15 % ``/api/v1/builds?limit=20``: the latest builds;
* 10 % ``/api/v1/builders/<name>``;
* 5 % ``/api/v1/queue``;
* 3 % ``/api/v1/builds?state=fullybuilt&limit=20&before=<id>``: paging back;
* 2 % ``/api/v1/builders`` (every builder, with what it builds: 500 of them here).

The builds and builders asked for are the latest ones (the list is read again every two
seconds, which counts as a read). At the end it writes what it did to ``--out`` (JSON):
requests sent, answered, failed and skipped, and the latency of each kind.

    python benchmarks/api_readers.py --url http://127.0.0.1:8000 --rate 200 --seconds 40 \\
        --out readers.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

MIX = [
    ("build log", 40),
    ("build", 25),
    ("latest builds", 15),
    ("builder", 10),
    ("queue", 5),
    ("paging back", 3),
    ("builders", 2),
]


class Readers:
    def __init__(self, reactor: Any, url: str, rate: float, max_in_flight: int) -> None:
        from buildmaster.httpclient import HTTPClient

        self.reactor = reactor
        self.url = url.rstrip("/")
        self.rate = rate
        self.max_in_flight = max_in_flight
        self.http = HTTPClient(reactor, max_idle_per_host=max_in_flight)
        self.rng = random.Random(21)
        self.builds: list[int] = []
        self.builders: list[str] = []
        self.in_flight = 0
        self.sent = 0
        self.skipped = 0
        self.failed: dict[str, int] = defaultdict(int)
        self.latency: dict[str, list[float]] = defaultdict(list)
        kinds, weights = zip(*MIX, strict=True)
        self._kinds, self._weights = list(kinds), list(weights)

    async def get(self, kind: str, path: str, parse: bool = False) -> Any:
        """Ask for ``path``; the answer's JSON when ``parse``, else ``True`` (a reader of
        the mix reads the answer through; decoding it would only spend this process's CPU,
        which the farm's processes share on a one-machine benchmark)."""
        self.in_flight += 1
        self.sent += 1
        t0 = time.perf_counter()
        try:
            response = await self.http.request(
                b"GET", self.url + path, timeout=30, max_body=64 * 1024 * 1024
            )
        except Exception as e:
            self.failed[f"{kind}: {type(e).__name__}"] += 1
            return None
        finally:
            self.in_flight -= 1
        if response.status != 200:
            self.failed[f"{kind}: {response.status}"] += 1
            return None
        self.latency[kind].append(time.perf_counter() - t0)
        return json.loads(response.body or b"null") if parse else True

    async def refresh(self) -> None:
        page = await self.get("refresh", "/api/v1/builds?limit=100", parse=True)
        if page is not None and page["builds"]:
            self.builds = [b["id"] for b in page["builds"]]
        if not self.builders:
            every = await self.get("refresh", "/api/v1/builders", parse=True)
            if every is not None:
                self.builders = [b["name"] for b in every["builders"]]

    def path(self, kind: str) -> str:
        build = self.rng.choice(self.builds) if self.builds else 1
        if kind == "build log":
            return f"/api/v1/builds/{build}/log"
        if kind == "build":
            return f"/api/v1/builds/{build}"
        if kind == "latest builds":
            return "/api/v1/builds?limit=20"
        if kind == "queue":
            return "/api/v1/queue"
        if kind == "builder":
            name = self.rng.choice(self.builders) if self.builders else "none"
            return f"/api/v1/builders/{name}"
        if kind == "builders":
            return "/api/v1/builders"
        return f"/api/v1/builds?state=fullybuilt&limit=20&before={build}"

    def tick(self) -> None:
        from twisted.internet import defer

        if self.in_flight >= self.max_in_flight:
            self.skipped += 1
            return
        kind = self.rng.choices(self._kinds, self._weights)[0]
        defer.Deferred.fromCoroutine(self.get(kind, self.path(kind)))

    async def run(self, seconds: float) -> dict[str, Any]:
        from twisted.internet import defer, task

        await self.refresh()
        ticks = task.LoopingCall(self.tick)
        ticks.clock = self.reactor
        refresher = task.LoopingCall(lambda: defer.Deferred.fromCoroutine(self.refresh()))
        refresher.clock = self.reactor
        started = time.time()
        cpu0 = common.self_cpu()
        ticks.start(1 / self.rate, now=True)
        refresher.start(2.0, now=False)
        await common.sleep(self.reactor, seconds)
        ticks.stop()
        refresher.stop()
        while self.in_flight:
            await common.sleep(self.reactor, 0.05)
        self.http.close_idle()
        elapsed = time.time() - started
        answered = sum(len(v) for v in self.latency.values())
        return {
            "seconds": elapsed,
            "sent": self.sent,
            "answered": answered,
            "rate": answered / elapsed,
            "skipped": self.skipped,
            "failed": dict(self.failed),
            "cpu": common.self_cpu() - cpu0,
            "latency": {
                kind: {
                    "n": len(values),
                    "p50": common.percentile(values, 50),
                    "p99": common.percentile(values, 99),
                }
                for kind, values in sorted(self.latency.items())
            },
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the master's web server")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--max-in-flight", type=int, default=50)
    parser.add_argument("--out", required=True, help="where to write the results (JSON)")
    parser.add_argument("--cpu", default="", help="CPU(s) for this process ('' = any)")
    args = parser.parse_args()
    common.pin_self(args.cpu)

    async def go(reactor: Any) -> dict[str, Any]:
        readers = Readers(reactor, args.url, args.rate, args.max_in_flight)
        return await readers.run(args.seconds)

    with common.sigterm_as_exit():
        results = common.run_async(go)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
