"""Sending a file's bytes as an HTTP response body, fast and without blocking the reactor.

:class:`FileSender` is a push producer registered with the request. It works in rounds; a
round runs in a thread and the reactor only starts rounds and writes their tails:

1. with ``sendfile``: when the connection is a plain TCP socket and the transport's own
   buffer is empty, the thread calls ``os.sendfile`` from the file to (a duplicate of) the
   socket until the socket's kernel buffer is full, so those bytes never enter Python;
2. the thread then reads the next *tail* (a little more than the transport's buffer size)
   with ``pread``, and the reactor writes it through the request as usual. That fills the
   transport's buffer, which pauses us; when the transport has sent it all (the socket was
   writable again), it resumes us and the next round starts.

So the transport's buffer is always empty when a thread writes to the socket directly, every
byte goes out in order, the reactor never touches the disk, and each connection holds at most
one tail in memory: memory stays flat however many clients download. Without ``sendfile``
(TLS, HTTP/2, a non-socket transport, or a kernel that refuses it for this file), rounds
are tails alone: plain chunked reads in a thread with the same flow control.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.internet import defer, interfaces, tcp
from twisted.logger import Logger
from twisted.web import http
from zope.interface import implementer

from buildmaster.librarian.upload import ThreadRunner

__all__ = ["FileSender", "can_sendfile"]

#: The most bytes one round sends with ``sendfile`` (bounds how long a thread is held).
ROUND_LIMIT = 64 * 1024 * 1024
#: The size of a round's tail without ``sendfile``.
CHUNK = 256 * 1024
_SENDFILE_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSOCK}
_CLIENT_GONE = {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.ECONNABORTED}


class _ClientGone(Exception):
    """The socket refused a write: the client went away (the reactor may not know yet)."""


def can_sendfile(request: http.Request) -> bool:
    """Whether the request's bytes can go straight from a file to its socket: HTTP/1.x over
    a plain TCP (or UNIX) socket, no TLS."""
    channel = request.channel
    if not isinstance(channel, http.HTTPChannel):
        return False
    transport = channel.transport
    if not isinstance(transport, tcp.Connection):
        return False
    if interfaces.ISSLTransport.providedBy(transport) or getattr(transport, "TLS", False):
        return False
    return hasattr(os, "sendfile")


class _Round:
    """One round's outcome, from the thread."""

    __slots__ = ("sent", "tail", "sendfile_refused")

    def __init__(self, sent: int, tail: bytes, sendfile_refused: bool) -> None:
        self.sent = sent
        self.tail = tail
        self.sendfile_refused = sendfile_refused


@implementer(interfaces.IPushProducer)
class FileSender:
    """Sends bytes ``[start, stop)`` of the open file ``fd`` as the body of ``request``.

    ``fd`` stays owned by the caller. :meth:`send` fires with ``True`` when every byte was
    handed to the transport, with ``False`` as soon as the client went away; it fails with an
    ``OSError`` when the file cannot be read. Unless it fired ``True``, the caller should drop
    the connection: the headers promised bytes that will not come.
    """

    _log = Logger()

    def __init__(
        self,
        request: http.Request,
        fd: int,
        start: int,
        stop: int,
        run: ThreadRunner,
        use_sendfile: bool = True,
    ) -> None:
        self._request = request
        self._fd = fd
        self._position = start
        self._stop = stop
        self._run = run
        self._sock: int | None = None
        self._tail_size = CHUNK
        if use_sendfile and can_sendfile(request):
            transport: Any = request.channel.transport
            self._sock = os.dup(transport.getHandle().fileno())
            # a tail must overflow the transport's buffer, so that it pauses us and resumes
            # us only once it is empty again
            self._tail_size = 2 * int(getattr(transport, "bufferSize", 65536)) + 1
        self._first = True
        self._paused = False
        self._in_round = False
        self._stopped = False
        self._done: defer.Deferred[bool] = defer.Deferred()

    @property
    def using_sendfile(self) -> bool:
        return self._sock is not None

    def send(self) -> defer.Deferred[bool]:
        """Start sending; see the class docstring for what the Deferred does."""
        self._request.registerProducer(self, True)
        self._next_round()
        return self._done

    # -- IPushProducer -----------------------------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._next_round()

    def stopProducing(self) -> None:
        self._stopped = True
        if not self._in_round:
            self._end(None, complete=False)

    # -- rounds ------------------------------------------------------------------------------

    def _next_round(self) -> None:
        if self._in_round or self._paused or self._stopped or self._done.called:
            return
        if self._position >= self._stop:
            self._end(None, complete=True)
            return
        # the first round writes through the transport only: the headers are still in its
        # buffer
        sock = None if self._first else self._sock
        self._first = False
        self._in_round = True
        d = self._run(self._round, sock, self._position)
        d.addCallbacks(self._round_done, self._round_failed)

    def _round(self, sock: int | None, position: int) -> _Round:
        """In a thread: sendfile as much as the socket takes, then read the tail."""
        sent = 0
        refused = False
        if sock is not None:
            limit = min(self._stop - position, ROUND_LIMIT)
            while sent < limit:
                try:
                    n = os.sendfile(sock, self._fd, position + sent, limit - sent)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno in _CLIENT_GONE:
                        raise _ClientGone(str(e)) from e
                    if sent == 0 and e.errno in _SENDFILE_UNSUPPORTED:
                        refused = True
                        break
                    raise
                if n == 0:
                    raise OSError(errno.EIO, f"the file ends at {position + sent}")
                sent += n
        tail = b""
        at = position + sent
        if at < self._stop:
            tail = os.pread(self._fd, min(self._stop - at, self._tail_size), at)
            if not tail:
                raise OSError(errno.EIO, f"the file ends at {at}")
        return _Round(sent, tail, refused)

    def _round_done(self, result: _Round) -> None:
        self._in_round = False
        if self._stopped:
            self._end(None, complete=False)
            return
        if result.sendfile_refused:
            self._close_socket()
            self._tail_size = CHUNK
        self._position += result.sent + len(result.tail)
        if result.tail:
            # pauses us (the tail overflows the transport's buffer) until it is all sent
            self._request.write(result.tail)
            if self._sock is not None and not self._paused and self._position < self._stop:
                # the transport did not pause us: it is not the kind we know, so sendfile
                # could interleave with its buffer. Stop using it.
                self._log.warn("Transport did not pause the sender; not using sendfile")
                self._close_socket()
        self._next_round()

    def _round_failed(self, failure: Any) -> None:
        self._in_round = False
        if self._stopped or failure.check(_ClientGone):
            self._end(None, complete=False)
            return
        self._end(failure, complete=False)

    def _end(self, failure: Any, complete: bool) -> None:
        self._close_socket()
        if self._done.called:
            return
        if self._request.producer is self and self._request.channel is not None:
            self._request.unregisterProducer()
        if failure is None:
            self._done.callback(complete)
        else:
            self._done.errback(failure)

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            os.close(sock)
