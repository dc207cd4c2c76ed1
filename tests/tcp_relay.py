"""A TCP relay between a client and a server, to cut their connection silently.

Real sockets on 127.0.0.1, served by a thread of its own (so that it works the same for a
test in the reactor and for processes of their own). :meth:`Relay.blackhole` stops it
forwarding anything, on the connections it carries and on any new one, while keeping every
socket open: the client sees what a dropped network looks like (no answer, no reset), and so
does the server. :meth:`Relay.drop_servers` then closes the server's side, as the server
itself does once its TCP keepalives give up on a silent client (PostgreSQL then ends the
session and frees its locks).
"""

from __future__ import annotations

import selectors
import socket
import threading
import time

__all__ = ["Relay", "relayed_dsn"]


def relayed_dsn(dsn: str) -> tuple[str, str]:
    """For a libpq ``dsn`` on a Unix socket: the socket's path, and a DSN for the same
    database through a relay (the ``host`` and ``port`` to fill in: ``{port}``)."""
    from psycopg2.extensions import make_dsn, parse_dsn

    params = parse_dsn(dsn)
    path = f"{params.pop('host')}/.s.PGSQL.{params.pop('port', 5432)}"
    relayed = make_dsn(**params, host="127.0.0.1", sslmode="disable", gssencmode="disable")
    return path, relayed + " port={port}"


class Relay:
    """Accepts on 127.0.0.1 (any free port) and relays each connection to ``target``: a
    ``(host, port)`` or the path of a Unix socket (PostgreSQL's ``.s.PGSQL.<port>``)."""

    def __init__(self, target: tuple[str, int] | str) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._servers: set[socket.socket] = set()
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._blackholed = False
        #: when :meth:`blackhole` was called (``time.time()``)
        self.blackholed_at: float | None = None
        #: when the relay's thread really stopped forwarding (a little after ``blackholed_at``)
        self.held_at: float | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="tcp-relay", daemon=True)
        self._thread.start()

    def blackhole(self) -> None:
        """Forward nothing more, in either direction, on any connection; keep them open."""
        with self._lock:
            self._blackholed = True
            self.blackholed_at = time.time()
        self._wake_w.send(b"b")

    def drop_servers(self) -> None:
        """Close the server's side of every connection (the client's stays open, silent)."""
        with self._lock:
            servers = list(self._servers)
            self._servers.clear()
        for server in servers:
            server.close()

    def close(self) -> None:
        with self._lock:
            self._stopped = True
        self._wake_w.send(b"s")
        self._thread.join(10)
        for s in [*self._peers, *self._held, self._listener, self._wake_r, self._wake_w]:
            s.close()

    def _run(self) -> None:
        while True:
            for key, _ in self._selector.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._wake_r:
                    self._wake_r.recv(64)
                    with self._lock:
                        if self._stopped:
                            return
                        if self._blackholed:
                            self._hold_everything()
                elif sock is self._listener:
                    self._accept()
                elif sock in self._peers:
                    self._forward(sock)

    def _hold_everything(self) -> None:
        if self.held_at is None:
            self.held_at = time.time()
        for sock in list(self._peers):
            self._selector.unregister(sock)
            self._held.append(sock)
        self._peers.clear()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        with self._lock:
            if self._blackholed:
                self._held.append(client)  # accepted by the kernel; never answered
                return
        try:
            if isinstance(self._target, str):
                server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                server.settimeout(5)
                server.connect(self._target)
            else:
                server = socket.create_connection(self._target, timeout=5)
        except OSError:
            client.close()
            return
        with self._lock:
            self._servers.add(server)
        for a, b in ((client, server), (server, client)):
            a.setblocking(False)
            self._peers[a] = b
            self._selector.register(a, selectors.EVENT_READ)

    def _forward(self, sock: socket.socket) -> None:
        other = self._peers[sock]
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if data:
            try:
                other.setblocking(True)
                other.sendall(data)
                other.setblocking(False)
                return
            except OSError:
                pass
        for s in (sock, other):
            if s in self._peers:
                self._selector.unregister(s)
                del self._peers[s]
            with self._lock:
                self._servers.discard(s)
            s.close()
