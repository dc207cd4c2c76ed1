"""Readers of the operator API, at a fixed rate: the load of issue 21's second budget.

Started by ``benchmarks/throughput.py --api-readers RATE`` (or by hand) against a running
master. The ``n``-th request goes out at ``start + n/RATE`` (open loop: a slow answer does
not slow the readers down, and a reader that woke up late sends what it owes at once, so
RATE is what the master gets; at most ``--max-in-flight`` at once, the rest are counted as
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
requests sent, answered, failed and skipped, the latency of each kind, its own CPU, and
how late the latest send was.

The readers stand for clients on other machines, but on a one-machine benchmark their CPU
is taken from the farm's: so they are a plain loop on ``epoll`` and non-blocking sockets
(no reactor, no Deferreds), which costs a fraction of what an HTTP client made for the
master's other work does per request. They speak only what the API answers to them: HTTP/1.1
with a ``Content-Length``; anything else (a chunked or unbounded answer, a connection closed
mid-answer, more bytes than announced) counts as a failure of that request, and its
connection is closed. Only the refreshes' answers are decoded.

    python benchmarks/api_readers.py --url http://127.0.0.1:8000 --rate 200 --seconds 40 \\
        --out readers.json
"""

from __future__ import annotations

import argparse
import errno
import json
import random
import select
import socket
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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

#: the most an answer's head may take
MAX_HEAD = 64 * 1024
#: ... and its body
MAX_BODY = 64 * 1024 * 1024


class BadAnswer(Exception):
    """The answer is not one these readers take (its connection is closed)."""


class Exchange:
    """One request on one connection, and its answer as it arrives."""

    __slots__ = ("kind", "parse", "started", "head", "status", "length", "close", "body")

    def __init__(self, kind: str, parse: bool, started: float) -> None:
        self.kind = kind
        self.parse = parse
        self.started = started
        self.head = bytearray()  # the bytes before the body is known
        self.status = 0
        self.length = -1  # the body's length, once the head is in
        self.close = False
        self.body = bytearray()

    def feed(self, data: bytes) -> bool:
        """Take ``data``; ``True`` once the answer is whole.

        :raises BadAnswer: for anything but a bounded HTTP/1.1 answer to this one request.
        """
        if self.length < 0:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > MAX_HEAD:
                    raise BadAnswer("head too large")
                return False
            rest = bytes(self.head[end + 4 :])
            self._read_head(bytes(self.head[:end]))
            data = rest
        self.body += data
        if len(self.body) > self.length:
            raise BadAnswer("more bytes than its Content-Length")
        return len(self.body) == self.length

    def _read_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or parts[0] != b"HTTP/1.1" or not parts[1].isdigit():
            raise BadAnswer(f"status line {lines[0][:80]!r}")
        self.status = int(parts[1])
        length = None
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                raise BadAnswer(f"header line {line[:80]!r}")
            name = name.strip().lower()
            if name == b"content-length":
                value = value.strip()
                if not value.isdigit() or length is not None:
                    raise BadAnswer("Content-Length")
                length = int(value)
            elif name == b"transfer-encoding":
                raise BadAnswer("a Transfer-Encoding")
            elif name == b"connection" and value.strip().lower() == b"close":
                self.close = True
        if length is None:
            if self.status not in (204, 304):
                raise BadAnswer("no Content-Length")
            length = 0
        if length > MAX_BODY:
            raise BadAnswer("body too large")
        self.length = length


class Readers:
    def __init__(
        self, url: str, rate: float, max_in_flight: int, only: str = "", timeout: float = 30
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise SystemExit(f"--url: give http://HOST:PORT, not {url!r}")
        self.address = (parts.hostname, parts.port or 80)
        self.prefix = parts.path.rstrip("/")
        self.host = parts.netloc.encode("ascii")
        self.rate = rate
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.rng = random.Random(21)
        self.builds: list[int] = []
        self.builders: list[str] = []
        self.poller = select.epoll()
        self.busy: dict[int, tuple[socket.socket, Exchange]] = {}
        self.idle: list[socket.socket] = []
        self.sent = 0
        self.skipped = 0
        self.latest_send = 0.0  # the most a send was behind its time (s)
        self.failed: dict[str, int] = defaultdict(int)
        self.latency: dict[str, list[float]] = defaultdict(list)
        mix = [(k, w) for k, w in MIX if k == only] if only else MIX
        if not mix:
            raise SystemExit(
                f"--only: no kind {only!r} (the kinds: {', '.join(k for k, _ in MIX)})"
            )
        kinds, weights = zip(*mix, strict=True)
        self._kinds, self._weights = list(kinds), list(weights)

    # -- requests ----------------------------------------------------------------------------

    def send(self, kind: str, path: str, parse: bool = False) -> None:
        self.sent += 1
        now = time.perf_counter()
        try:
            sock = self.idle.pop() if self.idle else self._connect()
            request = b"GET %s HTTP/1.1\r\nHost: %s\r\nAccept: application/json\r\n\r\n" % (
                (self.prefix + path).encode("ascii"),
                self.host,
            )
            sock.sendall(request)  # a few hundred bytes: the socket's buffer takes them
        except OSError as e:
            self.failed[f"{kind}: {errno.errorcode.get(e.errno or 0, type(e).__name__)}"] += 1
            return
        self.busy[sock.fileno()] = (sock, Exchange(kind, parse, now))

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self.poller.register(sock.fileno(), select.EPOLLIN)  # while it is open
        return sock

    def _drop_idle(self, fd: int) -> None:
        """An idle connection became readable: the server closed it (or misbehaved)."""
        for sock in self.idle:
            if sock.fileno() == fd:
                self.idle.remove(sock)
                self.poller.unregister(fd)
                sock.close()
                return

    def _received(self, fd: int) -> None:
        sock, exchange = self.busy[fd]
        try:
            data = sock.recv(1 << 18)
        except BlockingIOError:
            return
        except OSError as e:
            self._fail(fd, errno.errorcode.get(e.errno or 0, type(e).__name__))
            return
        if not data:
            self._fail(fd, "closed")
            return
        try:
            whole = exchange.feed(data)
        except BadAnswer as e:
            self._fail(fd, str(e))
            return
        if not whole:
            return
        del self.busy[fd]
        if exchange.close:
            self.poller.unregister(fd)
            sock.close()
        else:
            self.idle.append(sock)
        self._answered(exchange)

    def _fail(self, fd: int, why: str) -> None:
        sock, exchange = self.busy.pop(fd)
        self.poller.unregister(fd)
        sock.close()
        self.failed[f"{exchange.kind}: {why}"] += 1

    def _answered(self, exchange: Exchange) -> None:
        if exchange.status != 200:
            self.failed[f"{exchange.kind}: {exchange.status}"] += 1
            return
        self.latency[exchange.kind].append(time.perf_counter() - exchange.started)
        if not exchange.parse:
            return
        page = json.loads(bytes(exchange.body))
        if page.get("builds"):
            self.builds = [b["id"] for b in page["builds"]]
        if "builders" in page:
            self.builders = [b["name"] for b in page["builders"]]

    def _expire(self, now: float) -> None:
        for fd, (_, exchange) in list(self.busy.items()):
            if now - exchange.started > self.timeout:
                self._fail(fd, "timed out")

    def wait(self, until: float) -> None:
        """Take answers until ``until`` (``perf_counter``), or until one has come."""
        timeout = max(0.0, until - time.perf_counter())
        for fd, _ in self.poller.poll(timeout):
            if fd in self.busy:
                self._received(fd)
            else:
                self._drop_idle(fd)

    # -- the mix -----------------------------------------------------------------------------

    def refresh(self) -> None:
        self.send("refresh", "/api/v1/builds?limit=100", parse=True)
        if not self.builders:
            self.send("refresh", "/api/v1/builders", parse=True)

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
        if len(self.busy) >= self.max_in_flight:
            self.skipped += 1
            return
        kind = self.rng.choices(self._kinds, self._weights)[0]
        self.send(kind, self.path(kind))

    def run(self, seconds: float, ready: Path | None = None) -> dict[str, Any]:
        """Send for ``seconds`` (after a first refresh; then ``ready`` is written)."""
        self.refresh()
        deadline = time.perf_counter() + self.timeout
        while self.busy and time.perf_counter() < deadline:
            self.wait(deadline)
        if ready is not None:
            ready.write_text("sending\n")
        cpu0 = common.self_cpu()
        started = time.perf_counter()
        end = started + seconds
        interval = 1 / self.rate
        due = started  # the next request's time
        next_refresh = started + 2.0
        next_expiry = started + 1.0
        while True:
            now = time.perf_counter()
            while due <= now and due < end:
                self.latest_send = max(self.latest_send, now - due)
                self.tick()
                due += interval
            if now >= next_refresh and now < end:
                self.refresh()
                next_refresh += 2.0
            if now >= next_expiry:
                self._expire(now)
                next_expiry = now + 1.0
            if due >= end and not self.busy:
                break
            self.wait(min(due, next_refresh, next_expiry) if due < end else next_expiry)
        elapsed = time.perf_counter() - started
        for sock in self.idle:
            sock.close()
        answered = sum(len(v) for v in self.latency.values())
        return {
            "seconds": elapsed,
            "sent": self.sent,
            "answered": answered,
            "rate": answered / elapsed,
            "skipped": self.skipped,
            "failed": dict(self.failed),
            "cpu": common.self_cpu() - cpu0,
            "latest_send": self.latest_send,
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
    parser.add_argument("--only", default="", help="send only this kind of the mix")
    parser.add_argument("--ready", help="write this file once the first refresh is in")
    args = parser.parse_args()
    common.pin_self(args.cpu)
    readers = Readers(args.url, args.rate, args.max_in_flight, args.only)
    with common.sigterm_as_exit():
        results = readers.run(args.seconds, Path(args.ready) if args.ready else None)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
