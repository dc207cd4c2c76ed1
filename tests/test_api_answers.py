"""Anonymous answers shared by the readers of the same second, and revalidation (ETag)."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from api_support import ApiClient
from twisted.internet import defer, task
from twisted.web import http

from buildmaster.config import MasterConfig
from buildmaster.web.api.answers import Answer, SharedAnswers


async def _api(make_world: Any) -> tuple[Any, task.Clock, ApiClient, ApiClient]:
    """A world whose API runs on a Clock; an anonymous and an admin client."""
    clock = task.Clock()
    clock.advance(1_700_000_000)
    world = await make_world(MasterConfig(scan_interval=0.2), 0.3, master_clock=clock)
    token = await world.store.tokens.create(admin=True, description="the test admin")
    anonymous = ApiClient(world.harness.reactor, world.harness.base_url)
    return world, clock, anonymous, anonymous.with_token(token.secret)


@pytest_twisted.ensureDeferred
async def test_anonymous_readers_share_an_answer_for_a_second(make_world: Any) -> None:
    world, clock, anonymous, admin = await _api(make_world)
    try:
        build = await world.queue("shared")
        path = f"/api/v1/builds/{build.id}"
        first = await anonymous.get(path)
        assert first.json["failure_count"] == 0
        assert first.header("cache-control") == "no-cache"
        await world.store.db.execute(
            "UPDATE build SET failure_count = 3 WHERE id = %s", (build.id,)
        )
        clock.advance(0.9)
        again = await anonymous.get(path)  # the answer of 0.9 s ago, as it was
        assert again.body == first.body and again.header("etag") == first.header("etag")
        head = await anonymous.call("HEAD", path)  # the same answer's head, without its body
        assert (
            head.status == 200 and head.body == b"" and head.header("etag") == first.header("etag")
        )
        assert head.header("content-length") == str(len(first.body))
        # a token's reads are answered afresh, and kept out of shared caches
        fresh = await admin.get(path)
        assert fresh.json["failure_count"] == 3
        assert fresh.header("cache-control") == "private, no-cache"
        clock.advance(0.1)
        later = await anonymous.get(path)
        assert later.json["failure_count"] == 3 and later.header("etag") != first.header("etag")
    finally:
        anonymous.close()


@pytest_twisted.ensureDeferred
async def test_a_change_made_through_the_api_is_seen_at_once(make_world: Any) -> None:
    world, clock, anonymous, admin = await _api(make_world)
    try:
        await world.builder("t1")
        assert (await anonymous.get("/api/v1/builders/t1")).json["manual"] is False
        changed = await admin.patch("/api/v1/builders/t1", {"manual": True})
        assert changed.status == 200, changed.body
        assert (await anonymous.get("/api/v1/builders/t1")).json["manual"] is True
    finally:
        anonymous.close()


@pytest_twisted.ensureDeferred
async def test_a_private_build_never_reaches_anonymous_readers(make_world: Any) -> None:
    world, clock, anonymous, admin = await _api(make_world)
    try:
        ppa = world.data.cprov_ppa
        await world.store.db.execute("UPDATE archive SET private = true WHERE id = %s", (ppa.id,))
        hidden = await world.queue("hidden", ppa=True)
        insider = anonymous.with_token((await world.store.tokens.create(archives=[ppa])).secret)
        path = "/api/v1/builds?limit=5"
        # the insider reads first: what it sees is not kept for the anonymous readers...
        assert hidden.id in [b["id"] for b in (await insider.get(path)).json["builds"]]
        assert hidden.id not in [b["id"] for b in (await anonymous.get(path)).json["builds"]]
        # ... nor is what the anonymous readers share given to the insider
        assert hidden.id in [b["id"] for b in (await insider.get(path)).json["builds"]]
        missing = await anonymous.get(f"/api/v1/builds/{hidden.id}")
        assert missing.status == 404
    finally:
        anonymous.close()


@pytest_twisted.ensureDeferred
async def test_a_client_revalidates_with_its_etag(make_world: Any) -> None:
    world, clock, anonymous, admin = await _api(make_world)
    try:
        await world.builder("t1")
        first = await anonymous.get("/api/v1/builders")
        etag = first.header("etag")
        assert etag is not None and first.header("vary") == "authorization"
        for client in (anonymous, admin):  # kept or made afresh: the same bytes, the same tag
            same = await client.get("/api/v1/builders", headers={"If-None-Match": etag})
            assert same.status == 304 and same.body == b"" and same.header("etag") == etag
        await admin.patch("/api/v1/builders/t1", {"manual": True})
        changed = await anonymous.get("/api/v1/builders", headers={"If-None-Match": etag})
        assert changed.status == 200 and changed.json["builders"][0]["manual"] is True
        assert changed.header("etag") != etag
        # errors carry no tag, and are never shared
        assert (await anonymous.get("/api/v1/builds/424242")).header("etag") is None
    finally:
        anonymous.close()


def _answer(text: bytes, status: int = http.OK) -> Answer:
    return Answer(status, {}, text)


@pytest_twisted.ensureDeferred
async def test_readers_arriving_together_wait_for_one_reading() -> None:
    clock = task.Clock()
    answers = SharedAnswers(clock, 1.0)
    readings: list[defer.Deferred[Answer]] = []

    async def make() -> Answer:
        d: defer.Deferred[Answer] = defer.Deferred()
        readings.append(d)
        return await d

    first = defer.Deferred.fromCoroutine(answers.get(b"/x", make))
    second = defer.Deferred.fromCoroutine(answers.get(b"/x", make))
    other = defer.Deferred.fromCoroutine(answers.get(b"/y", make))
    assert len(readings) == 2  # one for /x, one for /y
    readings[0].callback(_answer(b"x1"))
    assert (await first).body == (await second).body == b"x1"
    readings[1].callback(_answer(b"no", http.NOT_FOUND))
    assert (await other).status == http.NOT_FOUND
    assert (await answers.get(b"/y", make_now(b"y2"))).body == b"y2"  # a 404 is not kept
    # a reading that fails fails for everyone waiting on it, and nothing is kept
    clock.advance(1.0)
    failing = defer.Deferred.fromCoroutine(answers.get(b"/x", make))
    waiting = defer.Deferred.fromCoroutine(answers.get(b"/x", make))
    readings[-1].errback(RuntimeError("the database went away"))
    for d in (failing, waiting):
        with pytest.raises(RuntimeError):
            await d
    assert (await answers.get(b"/x", make_now(b"x3"))).body == b"x3"
    # 0 seconds: nothing is shared
    assert not SharedAnswers(clock, 0).enabled


def make_now(text: bytes) -> Any:
    async def make() -> Answer:
        return _answer(text)

    return make


@pytest_twisted.ensureDeferred
async def test_kept_answers_are_bounded_in_number_bytes_and_age() -> None:
    clock = task.Clock()
    answers = SharedAnswers(clock, 1.0, size=3, max_bytes=100)
    for i in range(5):
        await answers.get(b"/%d" % i, make_now(b"x"))
    assert answers.kept == 3  # the two oldest went
    assert (await answers.get(b"/0", make_now(b"again"))).body == b"again"
    await answers.get(b"/big", make_now(b"y" * 99))
    assert answers.kept == 1  # the others went to make room for its bytes
    await answers.get(b"/huge", make_now(b"z" * 101))
    assert answers.kept == 0  # too large to keep at all
    await answers.get(b"/a", make_now(b"a"))
    clock.advance(1.0)
    await answers.get(b"/b", make_now(b"b"))
    assert answers.kept == 1  # the expired one went as the new one came
