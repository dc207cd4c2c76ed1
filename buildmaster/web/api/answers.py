"""Answers of the operator API shared by the anonymous readers of the same moment.

Many clients poll the same few things (the latest builds, the builders, the queue, the build
everyone follows): each reading costs the master's process its statements, value objects and
JSON. An anonymous ``GET`` answer is kept for ``seconds`` (one by default) and given, as the
same bytes, to every anonymous request for the same path and query in that time; requests
that arrive while it is being made wait for it rather than make their own. Only anonymous
answers are kept: they hold nothing of a private archive, and a request with a token (which
may see private archives) is always answered afresh, never from or into this store.

A change made through the API (any successful ``POST``, ``PUT``, ``PATCH`` or ``DELETE``)
empties it, so that what an operator changed is seen at once; a change the master makes
(a build dispatched, finished) is seen by anonymous readers at most ``seconds`` late.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import attrs
from twisted.internet import defer
from twisted.web.http import OK

__all__ = ["Answer", "SharedAnswers", "etag_of"]


@attrs.frozen
class Answer:
    """An answer as it goes on the wire: status, headers and the encoded body."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes
    #: the ``ETag`` of a ``200`` answer (a digest of its body), else ``None``
    etag: bytes | None = None


def etag_of(body: bytes) -> bytes:
    """A strong entity tag for ``body``: ``"`` + 24 hex digits of its BLAKE2b + ``"``."""
    return b'"%s"' % hashlib.blake2b(body, digest_size=12).hexdigest().encode("ascii")


class SharedAnswers:
    """Anonymous answers by request target, each kept ``seconds`` on ``clock``.

    :param clock: ``IReactorTime`` (the API's clock).
    :param seconds: how long an answer is given out again; ``0`` keeps none.
    :param size: at most this many answers are kept (the oldest go first) ...
    :param max_bytes: ... holding at most this many bytes of bodies; expired ones go as
        new ones come.
    """

    def __init__(
        self, clock: object, seconds: float, size: int = 256, max_bytes: int = 32 * 1024 * 1024
    ) -> None:
        self._clock = clock
        self.seconds = seconds
        self._size = size
        self._max_bytes = max_bytes
        self._bytes = 0
        self._kept: OrderedDict[bytes, tuple[float, Answer]] = OrderedDict()
        self._making: dict[bytes, list[defer.Deferred[Answer]]] = {}

    @property
    def enabled(self) -> bool:
        return self.seconds > 0

    def _now(self) -> float:
        seconds: float = self._clock.seconds()  # type: ignore[attr-defined]
        return seconds

    def fresh(self, target: bytes) -> Answer | None:
        """The kept answer for ``target`` if it is younger than ``seconds``, else ``None``
        (at once: most shared answers are given out this way)."""
        kept = self._kept.get(target)
        if kept is None:
            return None
        if self._now() - kept[0] < self.seconds:
            return kept[1]
        self._forget(target)
        return None

    async def get(self, target: bytes, make: Callable[[], Awaitable[Answer]]) -> Answer:
        """The answer for ``target``: a kept one younger than ``seconds``, the one being
        made now, or a new one from ``make`` (kept when it is a ``200``)."""
        kept = self.fresh(target)
        if kept is not None:
            return kept
        waiting = self._making.get(target)
        if waiting is not None:
            d: defer.Deferred[Answer] = defer.Deferred()
            waiting.append(d)
            return await d
        self._making[target] = waiting = []
        made_at = self._now()
        try:
            answer = await make()
        except BaseException:
            del self._making[target]
            for d in waiting:
                d.errback()
            raise
        del self._making[target]
        if answer.status == OK:
            self._keep(target, made_at, answer)
        for d in waiting:
            d.callback(answer)
        return answer

    def _keep(self, target: bytes, made_at: float, answer: Answer) -> None:
        if target in self._kept:
            self._forget(target)
        self._kept[target] = (made_at, answer)
        self._bytes += len(answer.body)
        now = self._now()
        while self._kept:
            oldest, (at, _) = next(iter(self._kept.items()))
            if (
                now - at < self.seconds
                and len(self._kept) <= self._size
                and self._bytes <= self._max_bytes
            ):
                break
            self._forget(oldest)

    def _forget(self, target: bytes) -> None:
        _, answer = self._kept.pop(target)
        self._bytes -= len(answer.body)

    @property
    def kept(self) -> int:
        """How many answers are kept now."""
        return len(self._kept)

    def clear(self) -> None:
        """Forget every kept answer (the farm was changed through the API)."""
        self._kept.clear()
        self._bytes = 0
