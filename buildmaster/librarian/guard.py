"""Request bodies nobody is allowed to send are not kept.

twisted.web stores a request's body (in a temporary file past 100 kB) before any resource
sees the request, so without this an unauthenticated client could fill the master's disk
with uploads that would only be refused afterwards. :func:`guarded_request_factory` makes
the master's ``Site`` count and drop a body larger than ``max_anonymous_body`` unless the
request carries a valid librarian upload token (the basic-auth password), or when it is
larger than the librarian takes at all. The resource then refuses the request as usual
(401 or 413): nothing was stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.web import server

__all__ = ["guarded_request_factory", "DiscardedBody"]


class DiscardedBody:
    """Stands in for a request body that is counted, never stored."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)

    def read(self, size: int = -1) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def tell(self) -> int:
        return 0

    def close(self) -> None:
        pass


def guarded_request_factory(
    librarian: Callable[[], Any], max_anonymous_body: int = 64 * 1024
) -> type[server.Request]:
    """A ``Request`` class for the master's ``Site``.

    :param librarian: returns the :class:`~buildmaster.librarian.Librarian` (or ``None``
        while it does not exist yet: then no large body is kept).
    """

    class GuardedRequest(server.Request):
        def gotLength(self, length: int | None) -> None:
            lib = librarian()
            allowed = lib is not None and self._may_upload(lib)
            too_big = length is not None and lib is not None and length > lib.max_file_size
            if too_big or (not allowed and (length is None or length > max_anonymous_body)):
                self.content = DiscardedBody()
                return
            super().gotLength(length)

        def _may_upload(self, lib: Any) -> bool:
            return bool(lib.check_upload_token(self.getPassword()))

    return GuardedRequest
