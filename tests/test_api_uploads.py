"""Source uploads and chroots through the operator API: sessions, streamed files, the checks
against the .dsc, the builds it makes; chroot uploads; archives, and private ones."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest_twisted
from api_support import ApiClient, digest_header, make_source
from test_api_basics import assert_problem
from test_librarian_support import ExpectContinue
from twisted.internet import defer, protocol, task

from buildmaster.testing import wait_for
from buildmaster.web.api.problems import PROBLEM_TYPES


async def upload(client: ApiClient, archive: str, source: Any, **submit: Any) -> Any:
    """Open a session, PUT every file (with its digest), submit: the submit's answer."""
    session = await client.post("/api/v1/uploads", {"archive": archive})
    assert session.status == 201, session.body
    base = session.json["url"]
    for name, data in source.files.items():
        put = await client.put(f"{base}/files/{name}", data, headers=digest_header(data))
        assert put.status == 201, put.body
    return await client.post(f"{base}/submit", {"dsc": source.dsc_name, **submit})


async def add_ppa_builder(api_world: Any, name: str, arch: str) -> None:
    sim = await api_world.harness.start_builder(name, arch)
    processor = "386" if arch == "i386" else arch
    added = await api_world.admin.post(
        "/api/v1/builders",
        {
            "name": name,
            "url": sim.url,
            "processors": [processor],
            "virtualized": True,
            "vm_host": f"{name}.vm",
        },
    )
    assert added.status == 201, added.body


@pytest_twisted.ensureDeferred
async def test_the_whole_story(api_world: Any) -> None:
    """An admin makes a PPA and an uploader token; the uploader uploads a source; its builds
    are dispatched, built and collected; the log and the .deb are fetched and checked."""
    admin, reactor = api_world.admin, api_world.reactor
    ppa = await admin.post(
        "/api/v1/archives", {"owner": "alice", "name": "tools", "distribution": "ubuntu"}
    )
    assert ppa.status == 201, ppa.body
    assert ppa.json["reference"] == "~alice/ubuntu/tools" and ppa.json["require_virtualized"]
    token = await admin.post(
        "/api/v1/tokens", {"scope": "uploader", "archives": ["~alice/ubuntu/tools"]}
    )
    alice = api_world.anonymous.with_token(token.json["secret"])
    # amd64 has no chroot yet: upload one (streamed, checked against its digest)
    chroot = b"\x1f\x8b" + bytes(range(256)) * 4096
    put = await admin.put(
        "/api/v1/chroots/ubuntu/hoary/amd64", chroot, headers=digest_header(chroot)
    )
    assert put.status == 201, put.body
    assert put.json["chroot"]["sha256"] == hashlib.sha256(chroot).hexdigest()
    assert put.json["chroot"]["size"] == len(chroot)
    for name, arch in (("ppa-i386", "i386"), ("ppa-amd64", "amd64")):
        await add_ppa_builder(api_world, name, arch)

    source = make_source("hello", architecture="any")
    submitted = await upload(alice, "~alice/ubuntu/tools", source)
    assert submitted.status == 201, submitted.body
    builds = submitted.json["builds"]
    assert sorted(b["architecture"]["tag"] for b in builds) == ["amd64", "i386"]
    assert {b["archive"]["reference"] for b in builds} == {"~alice/ubuntu/tools"}
    assert submitted.json["source"]["name"] == "hello"
    assert sorted(f["filename"] for f in submitted.json["source"]["files"]) == sorted(source.files)

    master = api_world.harness.master
    master.startService()
    await master.when_ready()

    async def states() -> set[str]:
        answers = [await alice.get(b["url"]) for b in builds]
        return {a.json["state"] for a in answers}

    seen: set[str] = set()

    async def built() -> bool:
        now = await states()
        seen.update(now)
        return now == {"FULLYBUILT"}

    await wait_for(reactor, built, 60, "both builds to be built")
    assert "BUILDING" in seen or "NEEDSBUILD" in seen
    for summary in builds:
        build = (await alice.get(summary["url"])).json
        kinds = [e["kind"] for e in build["events"]]
        assert kinds[:3] == ["created", "queued", "dispatched"] and kinds[-1] == "finished"
        assert build["builder"] == f"ppa-{build['architecture']['tag']}"
        log = build["log"]
        data = await _download(api_world, log["url"])
        assert hashlib.sha256(data).hexdigest() == log["sha256"] and len(data) == log["size"]
        debs = [f for f in build["files"] if f["filename"].endswith(".deb")]
        assert len(debs) == 1
        deb = await _download(api_world, debs[0]["url"])
        assert hashlib.sha256(deb).hexdigest() == debs[0]["sha256"]
        assert hashlib.md5(deb).hexdigest() == debs[0]["md5"]
        assert deb.startswith(b"!<arch>")
    finished = await api_world.anonymous.get(
        "/api/v1/builds?archive=~alice/ubuntu/tools&state=fullybuilt"
    )
    assert len(finished.json["builds"]) == 2


async def _download(api_world: Any, url: str, password: str | None = None) -> bytes:
    headers = {}
    if password is not None:
        headers[b"authorization"] = b"Basic " + base64.b64encode(f"x:{password}".encode())
    response = await api_world.anonymous.http.request(
        b"GET", url, headers=headers, max_body=64 * 1024 * 1024
    )
    assert response.status == 200, (url, response.status)
    return response.body or b""


@pytest_twisted.ensureDeferred
async def test_an_upload_that_does_not_match_its_dsc_is_refused(api_world: Any) -> None:
    world = api_world.world
    uploader = await api_world.uploader(world.data.cprov_ppa)
    ppa = "~cprov/ubuntu/ppa"

    async def refused(source: Any, *words: str, status: int = 422, **submit: Any) -> None:
        answer = await upload(uploader, ppa, source, **submit)
        assert_problem(answer, status, "upload-rejected" if status == 422 else "conflict", *words)

    orig = "hello_2.10.orig.tar.gz"
    await refused(make_source(tamper={"file": orig, "sha256": "0" * 64}), f"{orig} has sha256")
    await refused(make_source(tamper={"file": orig, "size": 3}), f"{orig} has", "says 3")
    await refused(make_source(tamper={"file": orig, "md5": "f" * 32}), f"{orig} has md5")
    missing = make_source()
    del missing.files[orig]
    await refused(missing, f"{orig} is listed in the .dsc but was not uploaded")
    broken = make_source(sign=True)
    dsc = broken.files[broken.dsc_name]
    broken.files[broken.dsc_name] = dsc.replace(b"-----END PGP SIGNATURE-----\n", b"")
    await refused(broken, "malformed signature")
    await refused(make_source(architecture="kfreebsd-any"), "kfreebsd-any", "amd64, i386")
    await refused(make_source(name="other"), "which gives", "amd64", architectures=["sparc"])
    # unknown archive, series, pocket
    assert_problem(
        await uploader.post("/api/v1/uploads", {"archive": "~nobody/ubuntu/ppa"}),
        422,
        "unprocessable",
        "no archive ~nobody/ubuntu/ppa",
    )
    assert_problem(
        await upload(uploader, ppa, make_source(), series="warty"),
        422,
        "unprocessable",
        "no series ubuntu/warty",
    )
    assert_problem(
        await upload(uploader, ppa, make_source(), pocket="attic"), 400, "invalid-body", "pocket"
    )
    # not this token's archive
    assert_problem(
        await uploader.post("/api/v1/uploads", {"archive": "ubuntu"}),
        403,
        "forbidden",
        "may not upload to ubuntu",
    )
    # a file whose bytes are not what its Content-Digest says: nothing stored
    session = (await uploader.post("/api/v1/uploads", {"archive": ppa})).json
    lie = await uploader.put(
        f"{session['url']}/files/{orig}", b"some bytes", headers=digest_header(b"other bytes")
    )
    assert_problem(lie, 400, "bad-request", "declared SHA-256")
    assert (await uploader.get(session["url"])).json["files"] == []
    assert_problem(
        await uploader.put(f"{session['url']}/files/notes.txt", b"x"),
        422,
        "unprocessable",
        "not a file of a source package",
    )
    assert_problem(
        await uploader.post(f"{session['url']}/submit", {"dsc": "hello_2.10-1.dsc"}),
        422,
        "unprocessable",
        "has no file hello_2.10-1.dsc",
    )
    # another token's session is not seen
    other = await api_world.uploader(world.data.cprov_ppa)
    assert_problem(await other.get(session["url"]), 404, "not-found", "token that opened it")
    # a clearsigned one is fine; it is submitted once, and its version once per archive
    signed = make_source(sign=True)
    first = await upload(uploader, ppa, signed)
    assert first.status == 201, first.body
    assert first.json["signed"] is True
    await refused(make_source(sign=True), "hello 2.10-1 is in this archive already", status=409)


@pytest_twisted.ensureDeferred
async def test_architectures_chosen_from_the_dsc_and_the_series(api_world: Any) -> None:
    uploader = await api_world.uploader(api_world.world.data.cprov_ppa)

    async def tags(architecture: str, **submit: Any) -> list[str]:
        source = make_source(
            f"arch-{len(architecture)}{architecture[:3]}", architecture=architecture
        )
        answer = await upload(uploader, "~cprov/ubuntu/ppa", source, **submit)
        assert answer.status == 201, answer.body
        return sorted(b["architecture"]["tag"] for b in answer.json["builds"])

    assert await tags("any") == ["amd64", "i386"]
    assert await tags("all") == ["amd64"]
    assert await tags("linux-any") == ["amd64", "i386"]
    assert await tags("i386 sparc") == ["i386"]
    assert await tags("any-i386") == ["i386"]
    assert await tags("any all", architectures=["i386"]) == ["i386"]


@pytest_twisted.ensureDeferred
async def test_a_large_file_is_streamed_into_the_librarian_as_it_arrives(
    api_world: Any,
) -> None:
    admin, store = api_world.admin, api_world.store
    uploader = await api_world.uploader(api_world.world.data.cprov_ppa)
    session = (await uploader.post("/api/v1/uploads", {"archive": "~cprov/ubuntu/ppa"})).json
    path = f"{session['url']}/files/big_1.0.orig.tar.xz"
    incoming = api_world.harness.librarian.root / "incoming"
    body = bytes(range(256)) * (24 * 4096)  # 24 MiB
    half = len(body) // 2
    port = int(api_world.harness.base_url.rsplit(":", 1)[1])

    def on_disk() -> int:
        return sum(p.stat().st_size for p in incoming.glob("*")) if incoming.exists() else 0

    # a valid token: the first half is on disk before the second is sent
    sender = await _connect(api_world.reactor, port)
    sender.send(_head("PUT", path, uploader.token, len(body)) + body[:half])
    await wait_for(api_world.reactor, lambda: on_disk() >= half // 2, 60, "bytes on disk")
    sender.send(body[half:])
    answer = await sender.answer
    assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
    files = (await uploader.get(session["url"])).json["files"]
    assert files[0]["file"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert files[0]["file"]["restricted"] is False and files[0]["file"]["expires"] is not None
    # a bad token: nothing is written while it sends, and it is refused
    liar = await _connect(api_world.reactor, port)
    liar.send(_head("PUT", path, "bm_forged", len(body)) + body[:half])
    await task.deferLater(api_world.reactor, 0.5, lambda: None)
    assert on_disk() == 0
    liar.send(body[half:])
    assert (await liar.answer).startswith(b"HTTP/1.1 401")
    # a client that goes away half-way leaves nothing behind
    quitter = await _connect(api_world.reactor, port)
    quitter.send(
        _head("PUT", "/api/v1/chroots/ubuntu/hoary/i386", admin.token, len(body)) + body[:half]
    )
    await wait_for(api_world.reactor, lambda: on_disk() > 0, 60, "bytes on disk")
    quitter.hang_up()
    await wait_for(api_world.reactor, lambda: on_disk() == 0, 60, "the temporary file to go")
    rows = await store.db.query("SELECT count(*) FROM libraryfilealias WHERE filename = 'upload'")
    assert rows[0][0] == 0


@pytest_twisted.ensureDeferred
async def test_an_upload_waiting_for_100_continue_is_refused_before_its_body(
    api_world: Any,
) -> None:
    """A client that asks ``Expect: 100-continue`` with a bad or missing token gets the 401
    at once, never a 100, and never sends its body; a valid token gets the 100."""
    admin = api_world.admin
    uploader = await api_world.uploader(api_world.world.data.cprov_ppa)
    session = (await uploader.post("/api/v1/uploads", {"archive": "~cprov/ubuntu/ppa"})).json
    port = int(api_world.harness.base_url.rsplit(":", 1)[1])
    chroot = "/api/v1/chroots/ubuntu/hoary/i386"
    file = f"{session['url']}/files/big_1.0.orig.tar.xz"
    incoming = api_world.harness.librarian.root / "incoming"

    async def send(method: str, path: str, token: str | None, body: bytes) -> tuple[bytes, bool]:
        head = _head(method, path, token, len(body)).replace(
            b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"
        )
        collector = ExpectContinue(head, body)
        await protocol.ClientCreator(api_world.reactor, lambda: collector).connectTCP(
            "127.0.0.1", port
        )
        return await collector.done

    big, small = b"x" * 5_000_000, b"x" * 10
    for method, path, token, body in [
        ("PUT", chroot, "bm_forged", big),  # unknown: refused after a database lookup
        ("PUT", chroot, "bm_forged", small),
        ("PUT", chroot, "malformed", big),  # refused without one
        ("PUT", chroot, None, big),
        ("PUT", file, "bm_forged", big),
        ("PUT", file, None, small),
        ("POST", "/api/v1/builders", None, small),
    ]:
        answer, body_sent = await send(method, path, token, body)
        assert not body_sent, (path, token, len(body))
        assert b"100 Continue" not in answer, (path, token)
        head, _, text = answer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0].startswith(b"HTTP/1.1 401 "), (path, token, lines[0])
        assert b"content-type: application/problem+json" in [x.lower() for x in lines]
        assert b'www-authenticate: bearer realm="buildmaster"' in [x.lower() for x in lines]
        problem = json.loads(text)
        assert problem["type"] == "urn:buildmaster:problem:unauthenticated"
        assert problem["title"] == PROBLEM_TYPES["unauthenticated"]
        assert problem["status"] == 401 and problem["instance"] == path
        assert "Authorization: Bearer" in problem["detail"] or "unknown" in problem["detail"]
    assert not incoming.exists() or not list(incoming.glob("*"))
    # a valid token gets its 100 Continue, sends the body, and the upload is stored
    answer, body_sent = await send("PUT", file, uploader.token, big)
    assert body_sent
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 "), answer[:200]
    answer, body_sent = await send("PUT", chroot, admin.token, small)  # replaces the world's
    assert body_sent and b"\r\n\r\nHTTP/1.1 200 " in answer, answer[:200]


def _head(method: str, path: str, token: str | None, length: int) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {length}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


class _Raw(protocol.Protocol):
    def __init__(self) -> None:
        self.answer: defer.Deferred[bytes] = defer.Deferred()
        self._data = bytearray()

    def send(self, data: bytes) -> None:
        transport: Any = self.transport
        transport.write(data)

    def hang_up(self) -> None:
        transport: Any = self.transport
        transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self._data.extend(data)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.answer.called:
            self.answer.callback(bytes(self._data))


async def _connect(reactor: Any, port: int) -> _Raw:
    raw: _Raw = await protocol.ClientCreator(reactor, _Raw).connectTCP("127.0.0.1", port)
    return raw


@pytest_twisted.ensureDeferred
async def test_chroots_are_listed_replaced_and_resume_their_builds(api_world: Any) -> None:
    admin, anonymous, store, world = (
        api_world.admin,
        api_world.anonymous,
        api_world.store,
        api_world.world,
    )
    listed = (await anonymous.get("/api/v1/chroots")).json["chroots"]
    by_arch = {c["architecture"]: c for c in listed}
    assert by_arch["amd64"]["chroot"] is None
    old = by_arch["i386"]["chroot"]
    assert (
        old["size"] == len(b"chroot" * 100)
        and old["sha1"] == hashlib.sha1(b"chroot" * 100).hexdigest()
    )
    # a build suspended for want of a chroot comes back when one arrives
    build = await world.queue("needs-chroot")
    job = await store.queue.get_for_build(build)
    assert job is not None
    await store.jobs.suspend(job, None, "not dispatched: no chroot")
    reason = (await admin.get(f"/api/v1/builds/{build.id}")).json["waiting"]["reason"]
    assert reason["code"] == "suspended" and "not dispatched: no chroot" in reason["text"]
    new = b"new chroot" * 1000
    uploader = await api_world.uploader(world.data.cprov_ppa)
    assert_problem(
        await uploader.put("/api/v1/chroots/ubuntu/hoary/i386", new), 403, "forbidden", "admin"
    )
    replaced = await admin.put(
        "/api/v1/chroots/ubuntu/hoary/i386?filename=chroot-hoary-i386.tar.xz", new
    )
    assert replaced.status == 200, replaced.body
    chroot = replaced.json["chroot"]
    assert chroot["filename"] == "chroot-hoary-i386.tar.xz" and chroot["size"] == len(new)
    resumed = await store.queue.get_for_build(build)
    assert resumed is not None and resumed.status.name == "WAITING"
    # the old one is left to expire (builders may be fetching it right now)
    rows = await store.db.query(
        "SELECT expires FROM libraryfilealias WHERE filename = %s", (old["filename"],)
    )
    assert rows[0][0] is not None
    assert (await anonymous.get("/api/v1/chroots/ubuntu/hoary/i386")).json["chroot"][
        "sha256"
    ] == chroot["sha256"]
    assert_problem(
        await admin.put("/api/v1/chroots/ubuntu/hoary/sparc", b"x"),
        404,
        "not-found",
        "GET /api/v1/series",
    )
    series = (await anonymous.get("/api/v1/series")).json["series"]
    assert series[0]["name"] == "hoary"
    assert {a["tag"]: a["has_chroot"] for a in series[0]["architectures"]} == {
        "amd64": False,
        "i386": True,
    }
    assert [p["name"] for p in (await anonymous.get("/api/v1/processors")).json["processors"]] == [
        "386",
        "amd64",
    ]


@pytest_twisted.ensureDeferred
async def test_a_private_archive_is_read_only_with_the_right_token(api_world: Any) -> None:
    admin, anonymous, world = api_world.admin, api_world.anonymous, api_world.world
    made = await admin.post(
        "/api/v1/archives",
        {"owner": "secret-team", "distribution": "ubuntu", "private": True},
    )
    assert made.status == 201, made.body
    reference = made.json["reference"]
    assert reference == "~secret-team/ubuntu/ppa"
    assert_problem(
        await admin.post("/api/v1/archives", {"owner": "secret-team", "distribution": "ubuntu"}),
        409,
        "conflict",
        "exists already",
    )
    assert_problem(
        await admin.post("/api/v1/archives", {"owner": "x", "distribution": "debian"}),
        422,
        "unprocessable",
        "no distribution debian",
    )
    insider = api_world.anonymous.with_token(
        (await admin.post("/api/v1/tokens", {"scope": "uploader", "archives": [reference]})).json[
            "secret"
        ]
    )
    outsider = await api_world.uploader(world.data.cprov_ppa)
    secret_source = make_source("secret", architecture="i386")
    submitted = await upload(insider, reference, secret_source)
    assert submitted.status == 201, submitted.body
    build = submitted.json["builds"][0]
    assert build["archive"] == {"reference": reference, "private": True}
    source_files = submitted.json["source"]["files"]
    assert all(f["restricted"] and f["download_token"] for f in source_files)
    for client in (anonymous, outsider):
        assert_problem(await client.get(build["url"]), 404, "not-found")
        assert_problem(await client.get(f"{build['url']}/log"), 404, "not-found")
        assert_problem(await client.get(f"/api/v1/archives/{reference}"), 404, "not-found")
        listed = (await client.get("/api/v1/builds")).json["builds"]
        assert build["id"] not in [b["id"] for b in listed]
        archives = (await client.get("/api/v1/archives")).json["archives"]
        assert reference not in [a["reference"] for a in archives]
        assert_problem(await client.get(submitted.json["source"]["url"]), 404, "not-found")
        jobs = (await client.get("/api/v1/queue/jobs")).json["jobs"]
        assert any(j["hidden"] and j["build"] is None for j in jobs)
        assert_problem(
            await client.post(f"{build['url']}/cancel"),
            401 if client is anonymous else 404,
            "unauthenticated" if client is anonymous else "not-found",
        )
    for client in (insider, admin):
        assert (await client.get(build["url"])).json["id"] == build["id"]
        assert reference in [
            a["reference"] for a in (await client.get("/api/v1/archives")).json["archives"]
        ]
    # its files need the download token the API gives to those who may read them
    dsc = next(f for f in source_files if f["filename"].endswith(".dsc"))
    response = await anonymous.http.request(b"GET", dsc["url"])
    assert response.status == 401
    assert await _download(api_world, dsc["url"], dsc["download_token"]) == secret_source.dsc
