"""The librarian over real HTTP on 127.0.0.1: downloads, ranges, tokens, uploads, bad input."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from test_librarian_support import (
    Served,
    assert_nothing_stored,
    basic_auth,
    make_librarian,
    row_counts,
    serve,
    stored_files,
)
from twisted.internet import defer

from buildmaster.librarian import CorruptFile, Librarian
from buildmaster.librarian import librarian as librarian_module
from buildmaster.store.database import Database, DatabaseError
from buildmaster.testing import wait_for

PAST = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)


@pytest_twisted.async_yield_fixture
async def served(reactor: Any, db: Database, tmp_path: Path) -> AsyncIterator[Served]:
    """A librarian served over HTTP on 127.0.0.1 (see :func:`serve`)."""
    async with serve(reactor, make_librarian(reactor, db, tmp_path / "librarian")) as each:
        yield each


async def add(lib: Librarian, data: bytes, name: str = "file.bin", **kw: Any) -> tuple[int, str]:
    alias_id = await lib.addFile(name, len(data), io.BytesIO(data), "application/x-tar", **kw)
    return alias_id, await lib.getURL(alias_id)


def head_and_body(raw: bytes) -> tuple[list[bytes], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


# -- downloads -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_get_serves_the_file_with_its_headers(served: Served) -> None:
    data = os.urandom(5 * 1024 * 1024 + 3)
    alias_id, url = await add(served.librarian, data, "hoary-i386-chroot.tar.bz2")
    assert url == f"{served.client.base}{alias_id}/hoary-i386-chroot.tar.bz2"
    for each in served.both(url):
        response = await served.client.request("GET", each)
        assert response.code == 200
        assert response.body == data
        assert response.length == len(data)
        assert response.header("content-type") == "application/x-tar"
        assert response.header("etag") == f'"{hashlib.sha1(data).hexdigest()}"'
        assert response.header("accept-ranges") == "bytes"
        assert response.header("last-modified") is not None


@pytest_twisted.ensureDeferred
async def test_bytes_go_out_through_sendfile(served: Served, monkeypatch: Any) -> None:
    calls = []
    real = os.sendfile

    def counting(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        calls.append(count)
        return real(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", counting)
    data = os.urandom(8 * 1024 * 1024)
    _, url = await add(served.librarian, data)
    assert (await served.client.request("GET", url)).body == data
    assert calls  # the bulk of the bytes never went through Python


@pytest_twisted.ensureDeferred
async def test_head_gives_the_headers_and_no_body(served: Served) -> None:
    data = os.urandom(100_000)
    alias_id, _ = await add(served.librarian, data, "f.txt")
    raw = await served.client.raw(
        f"HEAD /librarian/{alias_id}/f.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    lines, body = head_and_body(raw)
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert f"Content-Length: {len(data)}".encode() in lines
    assert body == b""


@pytest_twisted.ensureDeferred
async def test_an_empty_file_is_served(served: Served) -> None:
    _, url = await add(served.librarian, b"", "empty")
    response = await served.client.request("GET", url)
    assert (response.code, response.body, response.length) == (200, b"", 0)


@pytest_twisted.ensureDeferred
async def test_a_range_gets_206_and_just_those_bytes(served: Served) -> None:
    data = os.urandom(1_000_000)
    _, url = await add(served.librarian, data)
    for header, start, stop in [
        ("bytes=10-19", 10, 20),
        ("bytes=-5", 999_995, 1_000_000),
        ("bytes=300000-", 300_000, 1_000_000),
        ("bytes=0-999999", 0, 1_000_000),
    ]:
        for each in served.both(url):
            response = await served.client.request("GET", each, {"Range": header})
            assert response.code == 206
            assert response.body == data[start:stop]
            assert response.header("content-range") == f"bytes {start}-{stop - 1}/1000000"
            assert response.length == stop - start


@pytest_twisted.ensureDeferred
async def test_an_interrupted_download_resumes(served: Served) -> None:
    data = os.urandom(6 * 1024 * 1024 + 11)
    _, url = await add(served.librarian, data, "chroot.tar")
    for each in served.both(url):
        # the first attempt dies after some bytes...
        got = await served.client.partial(each, 1_500_000)
        assert 1_500_000 <= len(got) < len(data) and data.startswith(got)
        # ...the builder asks for the rest, as wget -c or curl -C - do
        etag = f'"{hashlib.sha1(data).hexdigest()}"'
        rest = await served.client.request(
            "GET", each, {"Range": f"bytes={len(got)}-", "If-Range": etag}
        )
        assert rest.code == 206
        assert got + rest.body == data


@pytest_twisted.ensureDeferred
async def test_if_range_for_other_bytes_gets_the_whole_file(served: Served) -> None:
    data = os.urandom(10_000)
    _, url = await add(served.librarian, data)
    response = await served.client.request(
        "GET",
        url,
        {"Range": "bytes=5000-", "If-Range": '"0000000000000000000000000000000000000000"'},
    )
    assert (response.code, response.body) == (200, data)


@pytest_twisted.ensureDeferred
async def test_a_copy_that_is_current_gets_304(served: Served) -> None:
    data = os.urandom(10_000)
    _, url = await add(served.librarian, data)
    first = await served.client.request("GET", url)
    etag, modified = first.header("etag"), first.header("last-modified")
    assert etag is not None and modified is not None
    for headers in [
        {"If-None-Match": etag},
        {"If-Modified-Since": modified},
        {"If-None-Match": f'"other", {etag}'},
    ]:
        response = await served.client.request("GET", url, headers)
        assert (response.code, response.body) == (304, b""), headers
    for headers in [
        {"If-None-Match": '"other"', "If-Modified-Since": modified},
        {"If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"},
    ]:
        response = await served.client.request("GET", url, headers)
        assert (response.code, response.body) == (200, data), headers


@pytest_twisted.ensureDeferred
async def test_head_ignores_ranges(served: Served) -> None:
    alias_id, _ = await add(served.librarian, os.urandom(1000), "f")
    for header in ["bytes=0-10", "bytes=5000-"]:
        raw = await served.client.raw(
            f"HEAD /librarian/{alias_id}/f HTTP/1.1\r\nHost: x\r\nRange: {header}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        lines, body = head_and_body(raw)
        assert lines[0] == b"HTTP/1.1 200 OK"
        assert b"Content-Length: 1000" in lines
        assert body == b""


@pytest_twisted.ensureDeferred
async def test_a_malformed_or_unsatisfiable_range_gets_416(served: Served) -> None:
    _, url = await add(served.librarian, os.urandom(100_000))
    for header in [
        "bytes=100000-",
        "bytes=200000-300000",
        "bytes=50-10",
        "bytes=abc",
        "bytes=-0",
        "bytes=1-2-3",
        "bytes=-",
        "bytes=0-1,junk",
    ]:
        response = await served.client.request("GET", url, {"Range": header})
        assert response.code == 416, header
        assert response.header("content-range") == "bytes */100000"
        assert b"Range not satisfiable" in response.body


@pytest_twisted.ensureDeferred
async def test_ranges_we_do_not_do_get_the_whole_file(served: Served) -> None:
    data = os.urandom(1000)
    _, url = await add(served.librarian, data)
    for header in ["items=0-10", "bytes=0-10,20-30"]:
        response = await served.client.request("GET", url, {"Range": header})
        assert (response.code, response.body) == (200, data)


@pytest_twisted.ensureDeferred
async def test_a_slow_client_gets_every_byte_in_order(served: Served) -> None:
    data = os.urandom(12 * 1024 * 1024)
    _, url = await add(served.librarian, data, "big")
    for each in served.both(url):
        got = await served.client.slow_get(each)
        assert len(got) == len(data)
        assert got == data


@pytest_twisted.ensureDeferred
async def test_many_clients_at_once(served: Served) -> None:
    data = os.urandom(3 * 1024 * 1024)
    _, url = await add(served.librarian, data)
    responses = await defer.gatherResults(
        [defer.ensureDeferred(served.client.request("GET", url)) for _ in range(20)]
    )
    assert all(r.code == 200 and r.body == data for r in responses)


@pytest_twisted.ensureDeferred
async def test_a_client_that_goes_away_costs_nothing(served: Served) -> None:
    data = os.urandom(16 * 1024 * 1024)
    _, url = await add(served.librarian, data, "big")

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    for each in served.both(url) * 2:
        got = await served.client.partial(each, 1_000_000)
        assert data.startswith(got)
    # the server lets go of its file and socket descriptors once it notices
    await wait_for(served.client.reactor, lambda: open_fds() <= before, 60, "descriptors closed")
    assert (await served.client.request("GET", url)).body == data


# -- refusals --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_unknown_expired_and_mismatched_files_are_404(served: Served) -> None:
    lib = served.librarian
    alias_id, url = await add(lib, b"data", "right.txt")
    expired_id, expired_url = await add(lib, b"old", "old.txt", expires=PAST)
    for path in [
        f"{alias_id + 100}/right.txt",
        f"{alias_id}/wrong.txt",
        f"{alias_id}/RIGHT.TXT",
        f"{alias_id}",
        f"{alias_id}/",
        f"{alias_id}/right.txt/more",
        f"x{alias_id}/right.txt",
        f"-{alias_id}/right.txt",
        "99999999999999999999999/right.txt",
        f"{expired_id}/old.txt",
        "",
    ]:
        response = await served.client.request("GET", path)
        assert response.code == 404, path
    assert (await served.client.request("GET", url)).code == 200
    assert (await served.client.request("HEAD", expired_url)).code == 404


@pytest_twisted.ensureDeferred
async def test_path_traversal_finds_nothing(served: Served, tmp_path: Path) -> None:
    alias_id, _ = await add(served.librarian, b"data", "f.txt")
    (tmp_path / "secret.txt").write_text("secret")
    for path in [
        f"/librarian/{alias_id}/../../secret.txt",
        f"/librarian/{alias_id}/..%2f..%2fsecret.txt",
        f"/librarian/{alias_id}/%2e%2e",
        f"/librarian/{alias_id}/f.txt%00",
        f"/librarian/{alias_id}/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/librarian/../librarian/secret.txt",
        "/librarian/incoming/x",
    ]:
        raw = await served.client.raw(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        lines, body = head_and_body(raw)
        assert lines[0] in (b"HTTP/1.1 404 Not Found", b"HTTP/1.1 400 Bad Request"), path
        assert b"secret" not in body


@pytest_twisted.ensureDeferred
async def test_restricted_files_need_their_token(served: Served) -> None:
    lib = served.librarian
    data = os.urandom(50_000)
    alias_id, url = await add(lib, data, "private.dsc", restricted=True)
    other_id, _ = await add(lib, b"other", "other.dsc", restricted=True)
    for headers in [
        {},
        {"Authorization": basic_auth("not-a-token")},
        {"Authorization": basic_auth(lib.token_for(other_id))},
        {"Authorization": basic_auth(lib.token_for(alias_id, lifetime=-1))},
        {"Authorization": basic_auth(lib.upload_token())},
        {"Authorization": b"Bearer " + lib.token_for(alias_id).encode()},
        {"Authorization": b"Basic !!!not-base64"},
    ]:
        response = await served.client.request("GET", url, headers)
        assert response.code == 401, headers
        assert response.header("www-authenticate") == 'Basic realm="librarian"'
        assert data not in response.body
    for user in ["buildd", "", "anything"]:
        auth = basic_auth(lib.token_for(alias_id), user=user)
        response = await served.client.request("GET", url, {"Authorization": auth})
        assert (response.code, response.body) == (200, data)
        assert response.header("cache-control") == "private"


@pytest_twisted.ensureDeferred
async def test_without_its_token_a_restricted_files_name_is_not_told(served: Served) -> None:
    """Right name, wrong name, or expired: the same 401 to anyone without the file's token."""
    lib = served.librarian
    alias_id, url = await add(lib, b"private source", "secret_1.0.dsc", restricted=True)
    expired_id, expired_url = await add(lib, b"old", "old.dsc", restricted=True, expires=PAST)
    other_id, _ = await add(lib, b"other", "other.dsc", restricted=True)
    paths = [
        url,
        f"{alias_id}/wrong.dsc",
        f"{alias_id}/SECRET_1.0.DSC",
        f"{alias_id}/secret_1.0.dsc.gz",
        expired_url,
        f"{expired_id}/wrong.dsc",
    ]
    for headers in [
        {},
        {"Authorization": basic_auth("not-a-token")},
        {"Authorization": basic_auth(lib.token_for(other_id))},
        {"Authorization": basic_auth(lib.token_for(alias_id, lifetime=-1))},
    ]:
        answers = set()
        for path in paths:
            for method in ("GET", "HEAD"):
                response = await served.client.request(method, path, headers)
                answers.add((response.code, response.header("www-authenticate"), response.body))
        assert answers == {
            (401, 'Basic realm="librarian"', b"This file needs a valid token.\n"),
            (401, 'Basic realm="librarian"', b""),  # HEAD
        }, headers
    # with its token: the name and the expiry count again
    token = {"Authorization": basic_auth(lib.token_for(alias_id))}
    assert (await served.client.request("GET", url, token)).code == 200
    assert (await served.client.request("GET", f"{alias_id}/wrong.dsc", token)).code == 404
    expired_token = {"Authorization": basic_auth(lib.token_for(expired_id))}
    assert (await served.client.request("GET", expired_url, expired_token)).code == 404


@pytest_twisted.ensureDeferred
async def test_unrestricted_files_need_no_token(served: Served) -> None:
    _, url = await add(served.librarian, b"public")
    response = await served.client.request("GET", url, {"Authorization": basic_auth("junk")})
    assert (response.code, response.body) == (200, b"public")


@pytest_twisted.ensureDeferred
async def test_other_methods_are_not_allowed(served: Served) -> None:
    _, url = await add(served.librarian, b"x")
    for method in ["PUT", "DELETE", "PATCH"]:
        response = await served.client.request(method, url, body=b"new")
        assert response.code == 405, method
    response = await served.client.request("POST", url, body=b"new")
    assert response.code == 405
    assert response.header("allow") == "GET, HEAD"
    assert await served.librarian.read_bytes(1) == b"x"


@pytest_twisted.ensureDeferred
async def test_missing_bytes_are_an_error_not_a_file(served: Served, captured_log: Any) -> None:
    captured_log.allow_errors(CorruptFile)
    alias_id, url = await add(served.librarian, b"12345")
    file = await served.librarian.get(alias_id)
    served.librarian.store.path_for(file.sha256).unlink()
    response = await served.client.request("GET", url)
    assert response.code == 500
    assert b"12345" not in response.body
    assert any("is missing" in m for m in captured_log.messages())


@pytest_twisted.ensureDeferred
async def test_a_database_outage_is_503(served: Served, db: Database) -> None:
    _, url = await add(served.librarian, b"x")
    await db.close()
    response = await served.client.request("GET", url)
    assert response.code == 503
    assert response.header("retry-after") == "5"
    upload = await served.client.request(
        "POST", "+upload/f", upload_headers(served.librarian), b"data"
    )
    assert upload.code == 503
    # the refused upload's bytes may be in place, unrecorded: the collector takes them later
    store = served.librarian.store
    assert set(stored_files(served.librarian.root)) <= {
        store.path_for(hashlib.sha256(b"x").hexdigest()),
        store.path_for(hashlib.sha256(b"data").hexdigest()),
    }


@pytest_twisted.ensureDeferred
async def test_a_file_handed_out_is_served_without_asking_the_database_again(
    reactor: Any, db: Database, tmp_path: Path, clock: Any
) -> None:
    lib = make_librarian(reactor, db, tmp_path / "librarian", hand_out_window=0.5, clock=clock)
    async with serve(reactor, lib) as served:
        handed_id, _ = await add(lib, b"the .dsc a builder is about to fetch", "hello_1.dsc")
        other_id, other_url = await add(lib, b"another file", "other.txt")
        restricted_id, _ = await add(lib, b"private source", "secret.dsc", restricted=True)
        url = lib.hand_out(await lib.get(handed_id))
        restricted_url = lib.hand_out(await lib.get(restricted_id))
        assert url == await lib.getURL(handed_id)
        await db.close()  # from here on, every database round trip fails
        response = await served.client.request("GET", url)
        assert (response.code, response.body) == (200, b"the .dsc a builder is about to fetch")
        assert (await served.client.request("GET", other_url)).code == 503
        # the rest of the rules still hold: the name, the token
        assert (await served.client.request("GET", f"{handed_id}/other.dsc")).code == 404
        assert (await served.client.request("GET", restricted_url)).code == 401
        token = lib.token_for(restricted_id)
        response = await served.client.request(
            "GET", restricted_url, {"authorization": basic_auth(token)}
        )
        assert (response.code, response.body) == (200, b"private source")
        clock.advance(0.4)
        assert (await served.client.request("GET", url)).code == 200, "still in its window"
        clock.advance(0.2)
        assert (await served.client.request("GET", url)).code == 503, "read again once past"


@pytest_twisted.ensureDeferred
async def test_handed_out_files_are_remembered_up_to_a_limit(
    reactor: Any, db: Database, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setattr(librarian_module, "MAX_HANDED_OUT", 3)
    lib = make_librarian(reactor, db, tmp_path / "librarian")
    files = [await lib.get((await add(lib, b"%d" % i, f"f{i}.dsc"))[0]) for i in range(5)]
    for file in files:
        lib.hand_out(file)
    await db.close()
    for file in files[2:]:  # the newest three
        assert await lib.get_for_download(file.id) == file
    for file in files[:2]:  # forgotten: read from the database, which is down
        with pytest.raises(DatabaseError):
            await lib.get_for_download(file.id)


# -- uploads ---------------------------------------------------------------------------------


def upload_headers(lib: Librarian, **extra: str | bytes) -> dict[str, str | bytes]:
    headers: dict[str, str | bytes] = {
        "Authorization": basic_auth(lib.upload_token(), user="operator"),
        "Content-Type": "application/x-tar",
    }
    headers.update({k.replace("_", "-"): v for k, v in extra.items()})
    return headers


@pytest_twisted.ensureDeferred
async def test_an_operator_uploads_a_file(served: Served) -> None:
    lib = served.librarian
    data = os.urandom(2 * 1024 * 1024 + 1)
    response = await served.client.request(
        "POST",
        "+upload/hoary%20chroot.tar",
        upload_headers(
            lib,
            X_Librarian_SHA1=hashlib.sha1(data).hexdigest(),
            X_Librarian_Expires="2100-01-01T00:00:00+00:00",
        ),
        data,
    )
    assert response.code == 201, response.body
    info = json.loads(response.body)
    assert info["filename"] == "hoary chroot.tar"
    assert info["size"] == len(data)
    assert info["sha256"] == hashlib.sha256(data).hexdigest()
    assert info["restricted"] is False
    assert info["expires"] == "2100-01-01T00:00:00+00:00"
    assert response.header("location") == info["url"]
    assert info["url"] == f"{served.client.base}{info['id']}/hoary%20chroot.tar"
    download = await served.client.request("GET", info["url"])
    assert (download.code, download.body) == (200, data)
    assert download.header("content-type") == "application/x-tar"


@pytest_twisted.ensureDeferred
async def test_a_small_restricted_upload(served: Served) -> None:
    lib = served.librarian
    response = await served.client.request(
        "POST", "+upload/key.asc", upload_headers(lib, X_Librarian_Restricted="yes"), b"secret"
    )
    assert response.code == 201
    info = json.loads(response.body)
    assert info["restricted"] is True
    assert (await served.client.request("GET", info["url"])).code == 401
    auth = basic_auth(lib.token_for(info["id"]))
    assert (await served.client.request("GET", info["url"], {"Authorization": auth})).body == (
        b"secret"
    )


@pytest_twisted.ensureDeferred
async def test_uploads_without_a_valid_token_store_nothing(served: Served, db: Database) -> None:
    lib = served.librarian
    for auth in [
        None,
        basic_auth("wrong"),
        basic_auth(lib.token_for(1)),  # a download token is not an upload token
        basic_auth(lib.upload_token(lifetime=-1)),
    ]:
        headers: dict[str, str | bytes] = {"Content-Type": "text/plain"}
        if auth is not None:
            headers["Authorization"] = auth
        response = await served.client.request("POST", "+upload/f.txt", headers, b"data")
        assert response.code == 401
        assert response.header("www-authenticate") == 'Basic realm="librarian"'
    await assert_nothing_stored(lib, db)


@pytest_twisted.ensureDeferred
async def test_bad_uploads_get_an_error_and_store_nothing(served: Served, db: Database) -> None:
    for path, extra, code in [
        ("+upload/%2e%2e", {}, 400),
        ("+upload/..%2f..%2fetc%2fpasswd", {}, 400),
        ("+upload/a%00b", {}, 400),
        ("+upload/%ff%fe", {}, 400),
        ("+upload/" + "a" * 256, {}, 400),
        ("+upload/f", {"X_Librarian_SHA1": "0" * 40}, 400),
        ("+upload/f", {"X_Librarian_SHA1": "not-a-sha1"}, 400),
        ("+upload/f", {"X_Librarian_Expires": "tomorrow"}, 400),
        ("+upload/f", {"X_Librarian_Expires": "2100-01-01T00:00:00"}, 400),
        ("+upload/f", {"X_Librarian_Restricted": "maybe"}, 400),
        ("+upload/f", {"Content_Type": "text/plain\tX"}, 400),
        ("+upload", {}, 404),
        ("+upload/a/b", {}, 404),
        ("1/f", {}, 405),
    ]:
        response = await served.client.request(
            "POST", path, upload_headers(served.librarian, **extra), b"data"
        )
        assert response.code == code, (path, extra, response.body)
    await assert_nothing_stored(served.librarian, db)


@pytest_twisted.ensureDeferred
async def test_an_upload_over_the_size_limit_is_413(
    reactor: Any, db: Database, tmp_path: Path
) -> None:
    lib = make_librarian(reactor, db, tmp_path / "lib", max_file_size=1000)
    async with serve(reactor, lib) as served:
        client = served.client
        small = await client.request("POST", "+upload/f", upload_headers(lib), b"x" * 1000)
        assert small.code == 201
        big = await client.request("POST", "+upload/g", upload_headers(lib), b"x" * 1001)
        assert big.code == 413
        assert await row_counts(db) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_raw_upload_requests_that_make_no_sense(served: Served, db: Database) -> None:
    token = basic_auth(served.librarian.upload_token()).decode()
    requests = {
        # chunked: no Content-Length to check against
        "411": "POST /librarian/+upload/f HTTP/1.1\r\nHost: x\r\nAuthorization: {t}\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\ndata\r\n0\r\n\r\n",
        "400": "POST /librarian/+upload/f HTTP/1.1\r\nHost: x\r\nAuthorization: {t}\r\n"
        "Content-Length: -4\r\nConnection: close\r\n\r\ndata",
    }
    for code, text in requests.items():
        raw = await served.client.raw(text.format(t=token).encode())
        lines, _ = head_and_body(raw)
        assert lines[0].startswith(f"HTTP/1.1 {code}".encode()), (code, lines[0])
    await assert_nothing_stored(served.librarian, db)
    assert stored_files(served.librarian.root) == []


def _upload_head(length: int | str, auth: bytes | None, path: str = "+upload/f.bin") -> bytes:
    lines = [
        f"POST /librarian/{path} HTTP/1.1",
        "Host: x",
        "Expect: 100-continue",
        "Connection: close",
        "Content-Type: application/octet-stream",
    ]
    if isinstance(length, int):
        lines.append(f"Content-Length: {length}")
    else:
        lines.append(f"Transfer-Encoding: {length}")
    if auth is not None:
        lines.append(f"Authorization: {auth.decode()}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest_twisted.ensureDeferred
async def test_an_upload_is_refused_before_its_body_when_the_client_waits_for_100(
    reactor: Any, db: Database, tmp_path: Path
) -> None:
    """A client that asks ``Expect: 100-continue`` and would be refused gets its 401, 411
    or 413 at once, without a 100 first, and never sends the body (the server closes)."""
    lib = make_librarian(reactor, db, tmp_path / "lib", max_file_size=10_000)
    async with serve(reactor, lib) as served:
        good = basic_auth(lib.upload_token(), user="operator")
        cases = [
            (_upload_head(5_000_000, None), 401),  # anonymous, big
            (_upload_head(10, None), 401),  # anonymous, small
            (_upload_head(10, basic_auth("wrong")), 401),
            (_upload_head(10, basic_auth(lib.token_for(1))), 401),  # a download token
            (_upload_head(10, basic_auth(lib.upload_token(lifetime=-1))), 401),
            (_upload_head(10_001, good), 413),
            (_upload_head(2**62, good), 413),
            (_upload_head("chunked", good), 411),
            (_upload_head(10, None, path="%2Bupload/f.bin"), 401),  # the same resource
        ]
        for head, code in cases:
            answer, body_sent = await served.client.expect_continue(head, b"x" * 10)
            assert not body_sent, head
            assert b"100 Continue" not in answer, head
            lines, text = head_and_body(answer)
            assert lines[0].startswith(f"HTTP/1.1 {code} ".encode()), (head, lines[0])
            assert b"connection: close" in [line.lower() for line in lines]
            if code == 401:
                assert b'WWW-Authenticate: Basic realm="librarian"' in lines
            assert text.endswith(b"\n") and len(text) > 1
        await assert_nothing_stored(lib, db)
        assert stored_files(lib.root) == []

        # an accepted upload gets its 100 Continue, sends its body, and is stored
        answer, body_sent = await served.client.expect_continue(
            _upload_head(10, good), b"0123456789"
        )
        assert body_sent
        assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n")
        info = json.loads(head_and_body(answer.split(b"\r\n\r\n", 1)[1])[1])
        assert (await lib.read_bytes(info["id"])) == b"0123456789"


def test_an_unauthorised_upload_body_is_never_stored() -> None:
    from twisted.web.test.requesthelper import DummyChannel

    from buildmaster.librarian.guard import DiscardedBody, guarded_request_factory

    class FakeLibrarian:
        max_file_size = 10 * 1024 * 1024

        def check_upload_token(self, token: bytes | str | None) -> bool:
            return token in (b"good", "good")

    factory = guarded_request_factory(lambda: FakeLibrarian(), max_anonymous_body=1000)

    def kept(length: int | None, password: str | None) -> bool:
        r = factory(DummyChannel())
        if password is not None:
            import base64

            creds = base64.b64encode(f"operator:{password}".encode())
            r.requestHeaders.setRawHeaders(b"authorization", [b"Basic " + creds])
        r.gotLength(length)
        content = r.content
        assert content is not None
        content.close()
        return not isinstance(content, DiscardedBody)

    assert not kept(5_000_000, None)  # anonymous and big
    assert not kept(None, None)  # anonymous, length unknown
    assert not kept(5_000_000, "wrong")
    assert not kept(50_000_000, "good")  # over the librarian's limit
    assert kept(5_000_000, "good")  # an operator's upload
    assert kept(500, None)  # small bodies are harmless
    body = DiscardedBody()
    body.write(b"x" * 1000)
    assert body.size == 1000 and body.read() == b""
