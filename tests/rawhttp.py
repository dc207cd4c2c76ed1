"""A raw HTTP server for wire-level tests: it reads requests and answers with exact bytes.

:class:`RawServer` listens on 127.0.0.1, port 0, on the real reactor. For every complete
request (head, and a body by ``Content-Length``) it calls ``respond(connection, request)``;
the respond function writes whatever bytes the test wants and ends the connection cleanly
(:meth:`RawConnection.close`: FIN), with a reset (:meth:`RawConnection.reset`: RST), or not
at all (the test drives the connection later). Nothing here parses or checks the answers.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol

__all__ = ["RawConnection", "RawServer", "http_response"]


class RawConnection(protocol.Protocol):
    """One connection to the raw server."""

    transport: Any
    factory: RawServer

    def __init__(self) -> None:
        self._inbox = b""
        self.requests: list[bytes] = []
        self.gone: defer.Deferred[None] = defer.Deferred()
        self.closed = False

    def connectionMade(self) -> None:
        self.factory.opened(self)

    def dataReceived(self, data: bytes) -> None:
        self._inbox += data
        while True:
            end = self._inbox.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self._inbox[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            stop = end + 4 + length
            if len(self._inbox) < stop:
                return
            request, self._inbox = self._inbox[:stop], self._inbox[stop:]
            self.requests.append(request)
            self.factory.respond(self, request)

    def send(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        """End the connection cleanly once what was sent is out (FIN)."""
        if not self.closed:
            self.closed = True
            self.transport.loseConnection()

    def reset(self) -> None:
        """End the connection with a reset (RST), dropping whatever was not sent yet."""
        if not self.closed:
            self.closed = True
            handle = self.transport.getHandle()
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        self.factory.closed(self)
        self.gone.callback(None)


Respond = Callable[[RawConnection, bytes], object]


class RawServer(protocol.Factory[RawConnection]):
    """Listens on 127.0.0.1 port 0; ``respond`` answers each request (see the module)."""

    noisy = False

    def __init__(self, reactor: Any, respond: Respond | None = None) -> None:
        self._reactor = reactor
        self.respond: Respond = respond or (lambda connection, request: None)
        self.connections: list[RawConnection] = []
        self.open = 0
        self.most_open = 0
        self._port: Any = None
        self._waiting: list[tuple[int, defer.Deferred[None]]] = []

    def buildProtocol(self, addr: Any) -> RawConnection:
        connection = RawConnection()
        connection.factory = self
        return connection

    def start(self) -> RawServer:
        self._port = self._reactor.listenTCP(0, self, interface="127.0.0.1")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port.getHost().port}/"

    def opened(self, connection: RawConnection) -> None:
        self.connections.append(connection)
        self.open += 1
        self.most_open = max(self.most_open, self.open)

    def closed(self, connection: RawConnection) -> None:
        self.open -= 1

    def requests(self) -> list[bytes]:
        return [r for c in self.connections for r in c.requests]

    async def stop(self) -> None:
        gone = [c.gone for c in self.connections if not c.gone.called]
        for connection in self.connections:
            if not connection.closed:
                connection.closed = True
                connection.transport.abortConnection()
        await defer.DeferredList(gone)
        await self._port.stopListening()


def http_response(body: bytes, status: bytes = b"200 OK", headers: tuple[bytes, ...] = ()) -> bytes:
    """A well-framed ``HTTP/1.1`` answer with a ``Content-Length``."""
    head = [b"HTTP/1.1 " + status, b"Content-Length: %d" % len(body), *headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body
