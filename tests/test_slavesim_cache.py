"""The file cache: ensurepresent's answers, downloads, size cap, timeouts, basic auth.

The first half runs the cache with a fake fetcher and a Clock (no reactor); the second half
downloads over real sockets from a small HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.interfaces import (
    IHostnameResolver,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import Site
from zope.interface import implementer

from slavesim.cache import AgentFetcher, FileCache, download_agent
from slavesim.testing import FileServer, FileServerResource, MemoryFetcher, wait_for_no_tcp

DATA = b"the contents of a chroot tarball"
SHA1 = hashlib.sha1(DATA).hexdigest()


class FileCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.fetcher = MemoryFetcher(files={"http://l/chroot": DATA})
        directory = tempfile.mkdtemp(prefix="slavesim-test-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        self.cache = FileCache(Path(directory), self.fetcher, max_size=1000)

    def ensure(self, sha1: str, url: str | None) -> object:
        return self.successResultOf(self.cache.ensure_present(sha1, url, None, None))

    def test_store_names_files_by_sha1(self) -> None:
        self.assertEqual(self.cache.store(DATA), SHA1)
        self.assertTrue(self.cache.has(SHA1))
        self.assertEqual(self.cache.path(SHA1).read_bytes(), DATA)
        self.assertEqual(self.cache.files(), {SHA1})
        self.cache.remove(SHA1)
        self.assertFalse(self.cache.has(SHA1))

    def test_paths_only_for_sha1s(self) -> None:
        for bad in ("../x", "buildlog", SHA1.upper(), SHA1 + "0"):
            self.assertRaises(ValueError, self.cache.path, bad)

    def test_no_url(self) -> None:
        self.assertEqual(self.ensure(SHA1, None), [False, "No URL"])
        self.cache.store(DATA)
        self.assertEqual(self.ensure(SHA1, None), [True, "No URL"])
        self.assertEqual(self.fetcher.requests, [])

    def test_download_then_cache(self) -> None:
        self.assertEqual(self.ensure(SHA1, "http://l/chroot"), [True, "Download"])
        self.assertEqual(self.ensure(SHA1, "http://l/chroot"), [True, "Cache"])
        self.assertEqual(len(self.fetcher.requests), 1)
        self.assertEqual(self.cache.path(SHA1).read_bytes(), DATA)

    def test_digest_mismatch_keeps_nothing(self) -> None:
        self.assertEqual(
            self.ensure("0" * 40, "http://l/chroot"),
            [False, "Digests did not match, removing again!"],
        )
        self.assertEqual(list(self.cache.directory.iterdir()), [])

    def test_fetch_error(self) -> None:
        self.assertEqual(
            self.ensure(SHA1, "http://l/missing"),
            [False, "Error accessing Librarian: HTTP Error 404: Not Found"],
        )
        self.assertEqual(list(self.cache.directory.iterdir()), [])

    def test_size_cap(self) -> None:
        big = b"x" * 1001
        self.fetcher.files["http://l/big"] = big
        reply = self.ensure(hashlib.sha1(big).hexdigest(), "http://l/big")
        self.assertEqual(
            reply, [False, "Error accessing Librarian: <urlopen error file larger than 1000 bytes>"]
        )
        self.assertEqual(list(self.cache.directory.iterdir()), [])

    def test_concurrent_requests_for_one_file_download_once(self) -> None:
        self.fetcher.paused = True
        first = self.cache.ensure_present(SHA1, "http://l/chroot", None, None)
        second = self.cache.ensure_present(SHA1, "http://l/chroot", None, None)
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.fetcher.release()
        self.assertEqual(self.successResultOf(first), [True, "Download"])
        self.assertEqual(self.successResultOf(second), [True, "Cache"])
        self.assertEqual(len(self.fetcher.requests), 1)

    def test_cancelled_downloads_answer_and_leave_nothing(self) -> None:
        self.fetcher.paused = True
        d = self.cache.ensure_present(SHA1, "http://l/chroot", None, None)
        self.cache.cancel_downloads()
        present, message = self.successResultOf(d)
        self.assertFalse(present)
        self.assertTrue(str(message).startswith("Error accessing Librarian: "))
        self.assertEqual(list(self.cache.directory.iterdir()), [])


# -- real downloads over sockets ---------------------------------------------------------


class Downloads:
    """A FileServer on 127.0.0.1 and a FileCache downloading from it with an Agent."""

    def __init__(self, reactor: Any, tmp_path: Path) -> None:
        self.reactor = reactor
        self.server = FileServer()
        self.port = reactor.listenTCP(
            0, Site(FileServerResource(self.server)), interface="127.0.0.1"
        )
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.clock = Clock()
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        fetcher = AgentFetcher(download_agent(reactor, self.pool), self.clock, timeout=30)
        self.cache = FileCache(tmp_path / "cache", fetcher, max_size=1000)

    def add(self, path: str, data: bytes) -> tuple[str, str]:
        self.server.files[path] = data
        return hashlib.sha1(data).hexdigest(), self.base + path

    async def ensure(
        self, sha1: str, url: str | None, user: str | None = None, password: str | None = None
    ) -> list[object]:
        result: list[object] = await self.cache.ensure_present(sha1, url, user, password)
        return result

    async def close(self) -> None:
        self.cache.cancel_downloads()
        await self.port.stopListening()
        await self.pool.closeCachedConnections()
        await wait_for_no_tcp(self.reactor)


@pytest_twisted.async_yield_fixture
async def downloads(reactor: Any, tmp_path: Path) -> AsyncIterator[Downloads]:
    fixture = Downloads(reactor, tmp_path)
    yield fixture
    await fixture.close()


@pytest_twisted.ensureDeferred
async def test_download_over_http(downloads: Downloads) -> None:
    sha1, url = downloads.add("/chroot.tar.gz", DATA)
    assert await downloads.ensure(sha1, url) == [True, "Download"]
    assert await downloads.ensure(sha1, url) == [True, "Cache"]
    assert downloads.cache.path(sha1).read_bytes() == DATA
    assert [path for path, _ in downloads.server.requests] == ["/chroot.tar.gz"]


@pytest_twisted.ensureDeferred
async def test_body_without_length_is_streamed(downloads: Downloads) -> None:
    sha1, url = downloads.add("/stream", DATA)
    downloads.server.no_length.add("/stream")
    assert await downloads.ensure(sha1, url) == [True, "Download"]


@pytest_twisted.ensureDeferred
async def test_digest_mismatch_over_http(downloads: Downloads) -> None:
    _, url = downloads.add("/chroot.tar.gz", DATA)
    assert await downloads.ensure("1" * 40, url) == [
        False,
        "Digests did not match, removing again!",
    ]
    assert list(downloads.cache.directory.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_http_errors_are_worded_like_urllib(downloads: Downloads) -> None:
    assert await downloads.ensure(SHA1, downloads.base + "/nope") == [
        False,
        "Error accessing Librarian: HTTP Error 404: Not Found",
    ]
    assert await downloads.ensure(SHA1, "") == [
        False,
        "Error accessing Librarian: unknown url type: ''",
    ]
    assert await downloads.ensure(SHA1, "ftp://example/x") == [
        False,
        "Error accessing Librarian: <urlopen error unknown url type: ftp>",
    ]


@pytest_twisted.ensureDeferred
async def test_connection_refused(reactor: Any, downloads: Downloads) -> None:
    closed = reactor.listenTCP(0, Site(FileServerResource(FileServer())), interface="127.0.0.1")
    url = f"http://127.0.0.1:{closed.getHost().port}/x"
    await closed.stopListening()
    assert await downloads.ensure(SHA1, url) == [
        False,
        "Error accessing Librarian: <urlopen error [Errno 111] Connection refused>",
    ]


@pytest_twisted.ensureDeferred
async def test_basic_auth_answers_the_challenge(downloads: Downloads) -> None:
    sha1, url = downloads.add("/private", DATA)
    downloads.server.credentials["/private"] = ("buildd", "s3cret")
    assert await downloads.ensure(sha1, url, "buildd", "s3cret") == [True, "Download"]
    assert downloads.server.requests == [
        ("/private", None),
        ("/private", b"Basic YnVpbGRkOnMzY3JldA=="),
    ]


@pytest_twisted.ensureDeferred
async def test_basic_auth_wrong_or_missing_credentials(downloads: Downloads) -> None:
    sha1, url = downloads.add("/private", DATA)
    downloads.server.credentials["/private"] = ("buildd", "s3cret")
    refused = [False, "Error accessing Librarian: HTTP Error 401: Unauthorized"]
    assert await downloads.ensure(sha1, url, "buildd", "wrong") == refused
    assert await downloads.ensure(sha1, url) == refused
    # Like urllib in the real daemon: a password without a user name is not sent.
    assert await downloads.ensure(sha1, url, "", "s3cret") == refused
    assert not downloads.cache.has(sha1)


@pytest_twisted.ensureDeferred
async def test_size_cap_by_content_length_and_while_streaming(downloads: Downloads) -> None:
    big = b"y" * 5000
    sha1, url = downloads.add("/big", big)
    too_big = [False, "Error accessing Librarian: <urlopen error file larger than 1000 bytes>"]
    assert await downloads.ensure(sha1, url) == too_big
    downloads.server.no_length.add("/big")
    assert await downloads.ensure(sha1, url) == too_big
    assert list(downloads.cache.directory.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_timeout_on_the_injected_clock(reactor: Any, downloads: Downloads) -> None:
    from slavesim.testing import wait_for

    sha1, url = downloads.add("/slow", DATA)
    downloads.server.hanging.add("/slow")
    d = downloads.cache.ensure_present(sha1, url, None, None)
    await wait_for(reactor, lambda: downloads.server.requests)
    assert not d.called
    downloads.clock.advance(30)
    assert await d == [False, "Error accessing Librarian: <urlopen error timed out>"]
    assert list(downloads.cache.directory.iterdir()) == []


@pytest.mark.parametrize("url", ["http://", "http://[::1/x", "http://h\u00e9/x"])
@pytest_twisted.ensureDeferred
async def test_malformed_urls_are_librarian_errors(downloads: Downloads, url: str) -> None:
    present, message = await downloads.ensure(SHA1, url)
    assert present is False
    assert str(message).startswith("Error accessing Librarian: ")


@implementer(IHostnameResolver)
class RecordingResolver:
    """The reactor's resolver, noting every name it is asked for."""

    def __init__(self, resolver: Any) -> None:
        self._resolver = resolver
        self.names: list[str] = []

    def resolveHostName(self, receiver: Any, hostName: str, *args: Any, **kw: Any) -> Any:
        self.names.append(hostName)
        return self._resolver.resolveHostName(receiver, hostName, *args, **kw)


@implementer(IReactorTCP, IReactorTime, IReactorPluggableNameResolver)
class ResolverSpy:
    """The running reactor with a :class:`RecordingResolver`."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.nameResolver = RecordingResolver(reactor.nameResolver)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


@pytest_twisted.ensureDeferred
async def test_ip_addresses_are_not_resolved_names_are(
    reactor: Any, downloads: Downloads, tmp_path: Path
) -> None:
    spy = ResolverSpy(reactor)
    pool = HTTPConnectionPool(reactor, persistent=False)
    fetcher = AgentFetcher(download_agent(spy, pool), Clock(), timeout=30)
    cache = FileCache(tmp_path / "spied", fetcher, max_size=1000)
    sha1, url = downloads.add("/by-address", DATA)
    assert await cache.ensure_present(sha1, url, None, None) == [True, "Download"]
    assert spy.nameResolver.names == []
    other = b"another file"
    sha1, url = downloads.add("/by-name", other)
    by_name = url.replace("127.0.0.1", "localhost")
    assert await cache.ensure_present(sha1, by_name, None, None) == [True, "Download"]
    assert spy.nameResolver.names == ["localhost"]
    assert cache.path(sha1).read_bytes() == other
    await pool.closeCachedConnections()
