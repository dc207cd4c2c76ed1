"""The web pages over real HTTP (no browser): what they show, that everything builders and
uploaders wrote is escaped, signing in, CSRF, and that the forms do what the token allows.
tests/test_pages_browser.py looks at them in Chromium."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

import pytest_twisted

from buildmaster.enums import BuildStatus

HOSTILE = "<script>alert(\"x\")</script> 'quoted' & more"
ESCAPED = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &#39;quoted&#39; &amp; more"


def _form(fields: dict[str, str]) -> dict[str, Any]:
    return {
        "body": urlencode(fields).encode(),
        "headers": {"Content-Type": "application/x-www-form-urlencoded"},
    }


def _cookie(answer: Any) -> str:
    header = answer.header("set-cookie")
    assert header is not None, answer.body
    return header.split(";")[0]


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found is not None
    return found.group(1)


@pytest_twisted.ensureDeferred
async def test_everything_builders_and_uploaders_wrote_is_escaped(api_world: Any) -> None:
    world, store, anonymous = api_world.world, api_world.store, api_world.anonymous
    _, builder = await world.builder("t1")
    await store.db.execute(
        "UPDATE builder SET title = %s, version = %s WHERE id = %s", (HOSTILE, HOSTILE, builder.id)
    )
    await store.jobs.fail_builder(builder, HOSTILE)
    # a source name and version with every character they may hold that means something
    # in a URL; an archive whose display name (the uploader's) is markup
    odd = await world.queue("g++-4.9.x", ppa=True)
    await store.db.execute(
        "UPDATE sourcepackagerelease SET version = '1:2.0~rc1+dfsg-1' WHERE id ="
        " (SELECT sourcepackagerelease FROM build WHERE id = %s)",
        (odd.id,),
    )
    await store.db.execute("UPDATE archive SET displayname = %s", (HOSTILE,))
    # a build with a log tail and a failure reason full of markup, on the builder
    await store.db.execute(
        "UPDATE buildqueue SET builder = %s, status = 1, logtail = %s, date_started = now()"
        " WHERE build = %s",
        (builder.id, HOSTILE, odd.id),
    )
    await store.db.execute(
        "UPDATE build SET buildstate = %s, builder = %s, date_started = now(),"
        " failure_reason = %s, dependencies = %s WHERE id = %s",
        (int(BuildStatus.BUILDING), builder.id, HOSTILE, HOSTILE, odd.id),
    )
    for path in (
        "/builders",
        "/builders/t1",
        f"/builds/{odd.id}",
        "/builds",
        "/archives",
        "/archives/cprov/ppa",
    ):
        page = await anonymous.get(path)
        assert page.status == 200, (path, page.body[:300])
        html = page.body.decode()
        assert "<script>alert" not in html and "'quoted'" not in html, path
        assert page.header("content-type") == "text/html; charset=utf-8"
        assert "script-src 'self'" in (page.header("content-security-policy") or "")
    builders = (await anonymous.get("/builders")).body.decode()
    assert ESCAPED in builders  # the failnotes, in the table and among those out of service
    builder_page = (await anonymous.get("/builders/t1")).body.decode()
    assert builder_page.count(ESCAPED) >= 3  # failnotes, title, version, the failure event
    build_page = (await anonymous.get(f"/builds/{odd.id}")).body.decode()
    assert "g++-4.9.x" in build_page and "1:2.0~rc1+dfsg-1" in build_page
    # its link to the other builds of its source keeps the + signs (a + in a query is a space)
    link = re.search(r'href="(/builds\?source=[^"]+)"', build_page)
    assert link is not None and link.group(1) == "/builds?source=g%2B%2B-4.9.x"
    others = (await anonymous.get(link.group(1))).body.decode()
    assert f'href="/builds/{odd.id}"' in others
    assert (
        f'data-stream="/builds/{odd.id}/log/stream" data-state="BUILDING">{ESCAPED}</pre>'
        in build_page
    )
    # a query parameter comes back escaped too
    listed = (await anonymous.get("/builds?source=%3Cscript%3E")).body.decode()
    assert 'value="&lt;script&gt;"' in listed and "<script>" not in listed.split("</head>")[1]


@pytest_twisted.ensureDeferred
async def test_signing_in_and_the_buttons_a_token_allows(api_world: Any) -> None:
    world, store, anonymous = api_world.world, api_world.store, api_world.anonymous
    build = await world.queue("hello")
    ppa_build = await world.queue("tool", ppa=True)
    page = (await anonymous.get(f"/builds/{build.id}")).body.decode()
    assert 'id="cancel"' not in page and "Sign in" in page
    # an unknown token: refused, no cookie
    refused = await anonymous.call("POST", "/signin", **_form({"token": "bm_nothing"}))
    assert refused.status == 401 and refused.header("set-cookie") is None
    assert "unknown or revoked" in refused.body.decode()
    # an uploader to the PPA: cancel and retry its builds, not the primary's, never rescore
    uploader = await store.tokens.create(archives=[world.data.cprov_ppa], description="cprov")
    signed = await anonymous.call("POST", "/signin", **_form({"token": uploader.secret}))
    assert signed.status == 303 and signed.header("location") == "/builders"
    cookie = _cookie(signed)
    attributes = (signed.header("set-cookie") or "").lower()
    assert "; httponly" in attributes and "; samesite=strict" in attributes
    as_uploader = {"headers": {"Cookie": cookie}}
    primary = (await anonymous.get(f"/builds/{build.id}", **as_uploader)).body.decode()
    assert 'id="cancel"' not in primary and "cprov" in primary
    mine = (await anonymous.get(f"/builds/{ppa_build.id}", **as_uploader)).body.decode()
    assert 'id="cancel"' in mine and 'id="rescore"' not in mine
    csrf = _csrf(mine)
    # without the CSRF token, or from another site: refused, nothing done
    for fields, headers in (
        ({}, {}),
        ({"csrf": "0" * 64}, {}),
        ({"csrf": csrf}, {"Origin": "http://evil.example"}),
    ):
        answer = await anonymous.call(
            "POST",
            f"/builds/{ppa_build.id}/cancel",
            body=urlencode(fields).encode(),
            headers={
                "Cookie": cookie,
                "Content-Type": "application/x-www-form-urlencoded",
                **headers,
            },
        )
        assert answer.status == 403, answer.body
        assert (await store.builds.get(ppa_build)).status is BuildStatus.NEEDSBUILD
    # the primary archive's build: the token may not, whatever the form says
    answer = await anonymous.call(
        "POST",
        f"/builds/{build.id}/cancel",
        body=urlencode({"csrf": csrf}).encode(),
        headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status == 403 and "may not cancel builds of ubuntu" in answer.body.decode()
    assert (await store.builds.get(build)).status is BuildStatus.NEEDSBUILD
    rescore = await anonymous.call(
        "POST",
        f"/builds/{ppa_build.id}/rescore",
        body=urlencode({"csrf": csrf, "score": "5"}).encode(),
        headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert rescore.status == 403 and "admin" in rescore.body.decode()
    done = await anonymous.call(
        "POST",
        f"/builds/{ppa_build.id}/cancel",
        body=urlencode({"csrf": csrf}).encode(),
        headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert (
        done.status == 303 and done.header("location") == f"/builds/{ppa_build.id}?done=cancelled"
    )
    assert (await store.builds.get(ppa_build)).status is BuildStatus.CANCELLED
    after = (await anonymous.get(done.header("location"), **as_uploader)).body.decode()
    assert "Build cancelled." in after and 'id="retry"' in after and 'id="cancel"' not in after
    # a revoked token signs its holder out at the next page
    await store.tokens.revoke(uploader.token.id)
    revoked = await anonymous.get(f"/builds/{ppa_build.id}", **as_uploader)
    assert 'id="retry"' not in revoked.body.decode() and "Sign in" in revoked.body.decode()
    assert "Max-Age=0" in (revoked.header("set-cookie") or "")


@pytest_twisted.ensureDeferred
async def test_pages_and_their_errors(api_world: Any) -> None:
    world, anonymous = api_world.world, api_world.anonymous
    builds = [await world.queue(f"p{i}") for i in range(3)]
    home = await anonymous.get("/")
    assert home.status == 200 and b"/builders" in home.body
    queue = (await anonymous.get("/queue?processor=386&virtualized=false")).body.decode()
    assert queue.index(f"/builds/{builds[0].id}") < queue.index(f"/builds/{builds[2].id}")
    assert (await anonymous.get("/builders/nobody")).status == 404
    assert (await anonymous.get("/builds/999999")).status == 404
    assert (await anonymous.get("/nothing/here")).status in (404,)
    assert (await anonymous.get("/builds?state=bogus")).status == 400
    assert (await anonymous.get("/queue?processor=sparc")).status == 404
    assert (await anonymous.get("/archives/cprov/ppa")).status == 200
    assert (await anonymous.get("/archives/ubuntu")).status == 200
    assert (await anonymous.get("/archives/nobody/ppa")).status == 404
    assert (await anonymous.get("/archives")).status == 200
    css = await anonymous.get("/static/pages.css")
    assert css.status == 200 and css.header("content-type") == "text/css; charset=utf-8"
    assert (
        (await anonymous.get("/static/pages.js"))
        .header("content-type")
        .startswith("text/javascript")
    )


@pytest_twisted.ensureDeferred
async def test_a_private_archive_is_shown_only_to_a_token_that_may_read_it(
    api_world: Any,
) -> None:
    world, store, anonymous = api_world.world, api_world.store, api_world.anonymous
    await store.db.execute(
        "UPDATE archive SET private = true WHERE id = %s", (world.data.cprov_ppa.id,)
    )
    secret = await world.queue("secret", ppa=True)
    await store.db.execute(
        "UPDATE build SET buildstate = %s, date_finished = now() WHERE id = %s",
        (int(BuildStatus.CANCELLED), secret.id),
    )
    await store.db.execute("DELETE FROM buildqueue WHERE build = %s", (secret.id,))
    for path in ("/archives/cprov/ppa", f"/builds/{secret.id}", f"/builds/{secret.id}/log/stream"):
        assert (await anonymous.get(path)).status == 404, path
    assert f"/builds/{secret.id}" not in (await anonymous.get("/builds")).body.decode()
    uploader = await store.tokens.create(archives=[world.data.cprov_ppa], description="cprov")
    cookie = _cookie(await anonymous.call("POST", "/signin", **_form({"token": uploader.secret})))
    mine = {"headers": {"Cookie": cookie}}
    archive = await anonymous.get("/archives/cprov/ppa", **mine)
    assert archive.status == 200 and f'href="/builds/{secret.id}"' in archive.body.decode()
    assert (await anonymous.get(f"/builds/{secret.id}", **mine)).status == 200
    # the page's live log reads the API's stream with the cookie's token
    stream = await anonymous.get(f"/builds/{secret.id}/log/stream", **mine)
    assert stream.status == 200 and stream.body.startswith(b"event: end\n")
