"""The seam between the master and one builder: every protocol call, with its timeout.

Long: every call to a builder, and the translation of all that can go wrong with it, is kept in
one module on purpose: one seam to check for timeouts and untrusted answers.

:class:`BuilderClient` makes the XML-RPC calls of the builder protocol (docs/protocol.md)
over :mod:`buildmaster.httpclient` (kept-alive connections, bounded answers, a deadline on the
injected clock for every call) and fetches files from the builder's ``/filecache``. Whatever goes wrong is translated here,
once, into one of three exception types:

* :class:`BuilderUnreachable`: the connection was refused, timed out, or dropped, or the
  builder's host name does not resolve. A refused connection keeps the seed's wording,
  ``(111, 'Connection refused')``.
* :class:`BuilderFault`: the builder answered with an XML-RPC Fault (e.g. 8002 for a call in
  the wrong state).
* :class:`BuilderProtocolError` (from :mod:`buildmaster.protocol`): the answer is not valid
  HTTP, not valid XML-RPC, beyond its budget (:mod:`buildmaster.rpcanswer`: its size, its
  XML elements, how deep it nests), or not what the protocol says.

All three derive from :class:`BuilderError`; its ``str()`` is the failnote. A connection the
master cannot open for want of file descriptors is the master's failure, not the builder's:
:class:`~buildmaster.masterfaults.MasterFault`.
"""

from __future__ import annotations

import os
import xmlrpc.client
from collections.abc import Callable, Mapping
from typing import Any
from xml.parsers.expat import ExpatError

from twisted.internet import error

from buildmaster.enums import BuilderResult, BuilderStatus
from buildmaster.httpclient import (
    ConnectionClosed,
    HTTPClient,
    HTTPError,
    MalformedResponse,
    RequestTimeout,
    ResponseTooLarge,
    Sink,
    StaleConnection,
)
from buildmaster.masterfaults import shortage
from buildmaster.protocol import (
    BuilderError,
    BuilderInfo,
    BuilderProtocolError,
    BuildStartResult,
    EnsurePresentResult,
    FilemapLimits,
    StatusReport,
    parse_build,
    parse_ensurepresent,
    parse_info,
    parse_state_reply,
    parse_status,
)
from buildmaster.rpcanswer import SLICE, AnswerBudget, AnswerReader, AnswerRefused, answer_budgets

__all__ = [
    "BuilderClient",
    "BuilderError",
    "BuilderUnreachable",
    "BuilderFault",
    "BuilderProtocolError",
    "FileMissing",
    "FileTooLarge",
    "DEFAULT_TRUSTED_TIMEOUT",
    "DEFAULT_VIRTUALIZED_TIMEOUT",
    "DEFAULT_DOWNLOAD_IDLE_TIMEOUT",
    "DEFAULT_DOWNLOAD_MIN_RATE",
    "ENSUREPRESENT_FACTOR",
]

DEFAULT_TRUSTED_TIMEOUT = 40.0
DEFAULT_VIRTUALIZED_TIMEOUT = 30.0
#: The real daemon downloads synchronously inside ensurepresent: give it much longer.
ENSUREPRESENT_FACTOR = 20
#: A download from a builder that brings no byte for this many seconds has stalled.
DEFAULT_DOWNLOAD_IDLE_TIMEOUT = 60.0
#: The slowest pace, in bytes a second, a download from a builder may keep on average.
DEFAULT_DOWNLOAD_MIN_RATE = 64 * 1024.0


_STATUS_CALL = xmlrpc.client.dumps((), "status").encode("utf-8")
_XML_HEADERS = {b"Content-Type": b"text/xml"}
#: what a judge of a stale call (:meth:`BuilderClient._call_once`) says when the builder
#: shows the call never took effect, or that it cannot tell
RESEND = object()
UNKNOWN = object()


class BuilderUnreachable(BuilderError):
    """Refused, timed out or dropped: the builder could not be talked to.

    ``request_sent``: the connection was made, so the builder may have acted on the call
    even though its answer never arrived (false for a refused or failed connection).
    """

    def __init__(self, message: str, *, request_sent: bool = False) -> None:
        super().__init__(message)
        self.request_sent = request_sent


class BuilderFault(BuilderError):
    """The builder answered with an XML-RPC Fault."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"{method}() answered <Fault {code}: {message[:200]!r}>")
        self.method = method
        self.code = code
        self.message = message


class FileMissing(BuilderProtocolError):
    """The builder has no such file in its cache (HTTP 404)."""


class FileTooLarge(BuilderProtocolError):
    """The file is larger than we accept from a builder."""


def connect_failure_reason(exc: error.ConnectError | error.DNSLookupError) -> str:
    """``(111, 'Connection refused')`` for ECONNREFUSED, as the seed's failnotes read; the
    resolver's words for a host name that does not resolve."""
    if isinstance(exc, error.DNSLookupError):
        return str(exc).strip().rstrip(".") or "DNS lookup failed"
    errno = getattr(exc, "osError", None)
    if isinstance(errno, int):
        return str((errno, os.strerror(errno)))
    return str(exc).strip() or type(exc).__name__


class BuilderClient:
    """Talk to the builder at ``url`` (e.g. ``http://bob:8221/``).

    :param http: the shared :class:`~buildmaster.httpclient.HTTPClient`.
    :param timeout: seconds for each call (status, echo, info, build, abort, clean);
        ``ensurepresent`` gets ``timeout * ENSUREPRESENT_FACTOR``.
    :param gate: called before every request; it raises to stop the request (e.g. the
        master no longer works the builder: nothing may reach it).
    :param max_result_files: the most result files a build may hand back (a status
        answer's budget allows for a filemap of twice that, :func:`answer_budgets`).
    """

    def __init__(
        self,
        http: HTTPClient,
        url: str,
        timeout: float = DEFAULT_TRUSTED_TIMEOUT,
        gate: Callable[[], None] | None = None,
        max_result_files: int = FilemapLimits().max_files,
    ) -> None:
        self.url = url if url.endswith("/") else url + "/"
        self._rpc_url = self.url + "rpc"
        self._http = http
        self.timeout = timeout
        self._gate = gate
        self._status_budget, self._call_budget = answer_budgets(max_result_files)
        self._last_status: tuple[bytes, StatusReport] = (b"", StatusReport(BuilderStatus.IDLE))

    def __repr__(self) -> str:
        return f"<BuilderClient {self.url}>"

    async def _call(
        self,
        method: str,
        *args: Any,
        timeout: float | None = None,
        reuse: bool = True,
        retry: bool = True,
    ) -> Any:
        payload = xmlrpc.client.dumps(args, method, allow_none=True).encode("utf-8")
        budget = self._call_budget
        body = await self._post(method, payload, budget, timeout, reuse, retry)
        return await self._decode(method, body, budget)

    async def _call_once(
        self, method: str, *args: Any, judge: Callable[[StatusReport], Any]
    ) -> Any:
        """A call that must not run twice (``build``, ``abort``, ``clean``).

        It goes over a kept-alive connection like any other, but is never resent blindly.
        When that connection turns out to have been closed by the builder before any
        answer came (it went stale while idle: the builder restarted or dropped it just as
        the call went out), ``judge`` reads the builder's status: it returns the answer the
        call would have given when the status shows the call took effect, :data:`RESEND`
        when it shows it did not (the call then goes once more, over a new connection), or
        :data:`UNKNOWN` (the builder is reported unreachable with the request sent, and
        the scanner decides, as for a lost answer).
        """
        try:
            return await self._call(method, *args, retry=False)
        except StaleConnection:
            pass
        status = await self.status()
        verdict = judge(status)
        if verdict is RESEND:
            return await self._call(method, *args, reuse=False)
        if verdict is UNKNOWN:
            raise BuilderUnreachable(
                f"{method}(): the connection was closed before an answer, and the builder"
                f" is now {status.builder_status.name}",
                request_sent=True,
            )
        return verdict

    async def _post(
        self,
        method: str,
        payload: bytes,
        budget: AnswerBudget,
        timeout: float | None,
        reuse: bool = True,
        retry: bool = True,
    ) -> bytes:
        """POST an XML-RPC call; the answer's body, of at most ``budget.max_bytes`` (our
        errors for everything else)."""
        seconds = self.timeout if timeout is None else timeout
        if self._gate is not None:
            self._gate()
        try:
            response = await self._http.request(
                b"POST",
                self._rpc_url,
                payload,
                _XML_HEADERS,
                timeout=seconds,
                max_body=budget.max_bytes,
                reuse=reuse,
                retry=retry,
            )
        except StaleConnection:
            raise  # only with retry=False: for _call_once to judge
        except (error.ConnectError, error.DNSLookupError) as e:
            raise shortage(e, f"connecting to {self.url}") or BuilderUnreachable(
                connect_failure_reason(e)
            ) from None
        except RequestTimeout as e:
            raise BuilderUnreachable(f"{method}() got no answer: {e}", request_sent=True) from None
        except ConnectionClosed as e:
            raise BuilderUnreachable(f"{method}(): {e}", request_sent=True) from None
        except ResponseTooLarge as e:
            raise BuilderProtocolError(f"{method}(): {e}") from None
        except (MalformedResponse, HTTPError) as e:
            raise BuilderProtocolError(f"{method}(): malformed HTTP answer: {e}") from None
        if response.status != 200:
            raise BuilderProtocolError(f"{method}(): HTTP {response.status} {response.reason[:80]}")
        assert response.body is not None
        return response.body

    async def _decode(self, method: str, body: bytes, budget: AnswerBudget) -> Any:
        """The one value of an answer, read within ``budget`` (a slice per turn of the
        reactor when it is big, :mod:`buildmaster.rpcanswer`)."""
        reader = AnswerReader(budget)
        try:
            if len(body) <= SLICE:
                reader.feed(body)
                values = reader.close()
            else:
                values = await reader.read(body, self._http.clock)
        except AnswerRefused as e:
            raise BuilderProtocolError(f"{method}(): answer refused: {e}") from None
        except xmlrpc.client.Fault as fault:
            raise BuilderFault(method, int(fault.faultCode), str(fault.faultString)) from None
        except (
            ExpatError,
            ValueError,
            TypeError,
            IndexError,
            OverflowError,
            xmlrpc.client.ResponseError,
        ) as e:
            raise BuilderProtocolError(
                f"{method}(): malformed XML-RPC answer: {str(e)[:200]}"
            ) from None
        if len(values) != 1:
            raise BuilderProtocolError(f"{method}(): expected one value, got {len(values)}")
        return values[0]

    async def echo(self, *args: Any) -> list[Any]:
        """The liveness ping: the builder returns the arguments."""
        result = await self._call("echo", *args)
        if not isinstance(result, list) or result != list(args):
            raise BuilderProtocolError(f"echo{args!r} returned {str(result)[:80]}")
        return result

    async def info(self) -> BuilderInfo:
        return parse_info(await self._call("info"))

    async def status(self) -> StatusReport:
        """The builder's state. An answer identical to the previous one (an idle or waiting
        builder says the same thing every time) is not parsed again."""
        budget = self._status_budget
        body = await self._post("status", _STATUS_CALL, budget, None)
        if body == self._last_status[0]:
            return self._last_status[1]
        report = parse_status(await self._decode("status", body, budget))
        self._last_status = (body, report)
        return report

    async def ensurepresent(
        self, sha1: str, url: str | None, username: str | None = None, password: str | None = None
    ) -> EnsurePresentResult:
        """Ask the builder to have the file ``sha1`` in its cache (downloading ``url``)."""
        result = await self._call(
            "ensurepresent",
            sha1,
            url,
            username,
            password,
            timeout=self.timeout * ENSUREPRESENT_FACTOR,
        )
        return parse_ensurepresent(result)

    async def build(
        self,
        build_id: str,
        builder_type: str,
        chroot_sha1: str,
        filemap: Mapping[str, str],
        args: Mapping[str, Any],
    ) -> BuildStartResult:
        """Start a build (never sent twice, see :meth:`_call_once`)."""

        def judge(status: StatusReport) -> Any:
            if status.builder_status is BuilderStatus.BUILDING and status.build_id == build_id:
                return [BuilderStatus.BUILDING.value, build_id]
            return RESEND if status.builder_status is BuilderStatus.IDLE else UNKNOWN

        result = await self._call_once(
            "build", build_id, builder_type, chroot_sha1, dict(filemap), dict(args), judge=judge
        )
        return parse_build(result)

    async def abort(self) -> Any:
        def judge(status: StatusReport) -> Any:
            if status.builder_status is BuilderStatus.ABORTING or (
                status.builder_status is BuilderStatus.WAITING
                and status.build_status is BuilderResult.ABORTED
            ):
                return BuilderStatus.ABORTING.value
            return RESEND if status.builder_status is BuilderStatus.BUILDING else UNKNOWN

        return parse_state_reply(await self._call_once("abort", judge=judge), "abort")

    async def clean(self) -> Any:
        def judge(status: StatusReport) -> Any:
            if status.builder_status is BuilderStatus.IDLE:
                return BuilderStatus.IDLE.value
            return RESEND if status.builder_status is BuilderStatus.WAITING else UNKNOWN

        return parse_state_reply(await self._call_once("clean", judge=judge), "clean")

    def close_idle(self) -> None:
        """Close the connections kept alive to this builder (e.g. after its VM was reset)."""
        self._http.close_idle(self.url)

    def file_url(self, name: str) -> str:
        """The URL of a file in the builder's cache (a SHA-1, or ``buildlog``)."""
        return f"{self.url}filecache/{name}"

    async def fetch_file(
        self,
        name: str,
        sink: Sink,
        max_size: int,
        idle_timeout: float = DEFAULT_DOWNLOAD_IDLE_TIMEOUT,
        min_rate: float = DEFAULT_DOWNLOAD_MIN_RATE,
    ) -> int:
        """Stream ``/filecache/<name>`` into ``sink``; returns the number of bytes.

        The builder has the call timeout to start answering; then the download fails when
        no byte comes for ``idle_timeout`` seconds, or when it falls behind ``min_rate``
        bytes a second (each byte moves its deadline ``1 / min_rate`` seconds later, so a
        file of any size may take as long as it needs at that pace). Waiting for ``sink``
        (a disk) counts against neither.

        The answer must say where the file ends (``Content-Length``, or chunked): a file sent
        until the connection closes could be cut short without anybody noticing (the build
        log has no checksum to tell), so it is refused once it arrived (the caller drops
        what it stored).

        :raises BuilderUnreachable: connection problems (a file cut short among them), or
            the download stalled or crawled.
        :raises FileMissing: not in the cache (HTTP 404).
        :raises FileTooLarge: larger than ``max_size``.
        :raises BuilderProtocolError: any other bad answer, one without its length included.
        """
        if self._gate is not None:
            self._gate()
        try:
            response = await self._http.request(
                b"GET",
                self.file_url(name),
                timeout=self.timeout,
                max_body=max_size,
                sink=sink,
                idle_timeout=idle_timeout,
                min_rate=min_rate,
            )
        except (error.ConnectError, error.DNSLookupError) as e:
            raise shortage(e, f"connecting to {self.url}") or BuilderUnreachable(
                connect_failure_reason(e)
            ) from None
        except RequestTimeout as e:
            raise BuilderUnreachable(f"fetching {name}: {e}", request_sent=True) from None
        except ConnectionClosed as e:
            raise BuilderUnreachable(f"fetching {name}: {e}", request_sent=True) from None
        except ResponseTooLarge as e:
            raise FileTooLarge(f"fetching {name}: {e}") from None
        except HTTPError as e:
            raise BuilderProtocolError(f"fetching {name}: malformed HTTP answer: {e}") from None
        if response.status == 404:
            raise FileMissing(f"fetching {name}: not in the builder's cache (HTTP 404)")
        if response.status != 200:
            raise BuilderProtocolError(
                f"fetching {name}: HTTP {response.status} {response.reason[:80]}"
            )
        if (
            b"content-length" not in response.headers
            and b"transfer-encoding" not in response.headers
        ):
            raise BuilderProtocolError(
                f"fetching {name}: the answer did not say how long the file is"
                " (no Content-Length): it could have been cut short"
            )
        return response.length
