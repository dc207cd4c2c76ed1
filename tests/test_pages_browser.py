"""The web pages in a real browser (headless Chromium through selenium) against a running
master with simulated builders: what a person would check. One browser for the module;
screenshots are saved as test artifacts (tests/browser_support.py says where)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from browser_support import CHROMEDRIVER, CHROMIUM, Browser, quit_chromium, start_chromium
from test_api_builders import _state
from twisted.internet import task

from buildmaster.enums import BuildStatus
from buildmaster.testing import wait_for
from buildmaster.web.samples import FarmSampler

# CI installs them and sets BUILDMASTER_TEST_BROWSER=required: there, a missing browser fails
pytestmark = pytest.mark.skipif(
    not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK))
    and os.environ.get("BUILDMASTER_TEST_BROWSER") != "required",
    reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)",
)

#: markup and quotes from a builder: shown as text, never run
HOSTILE = "<script>window.pwned = 1</script> \"boom\" 'x' <img src=x onerror=window.pwned=2>"


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    chromium, profile = start_chromium()
    yield chromium
    quit_chromium(chromium, profile)


@pytest.fixture
def browser(driver: Any, api_world: Any) -> Iterator[Browser]:
    driver.delete_all_cookies()
    driver.get_log("browser")  # what earlier tests left
    yield Browser(api_world.reactor, driver, api_world.harness.base_url)
    # leave the page before the master goes (its live streams would fail, and their errors
    # land in the next test's console)
    driver.get("about:blank")


def _farm_on_a_clock(api_world: Any, build_time: float | None = None) -> task.Clock:
    """The simulated builders' time: their builds last until the test advances it."""
    clock = task.Clock()
    clock.advance(api_world.reactor.seconds())
    api_world.world.harness.farm.clock = clock
    if build_time is not None:
        api_world.world.harness.farm.build_time = build_time
    return clock


async def _sign_in(browser: Browser, secret: str) -> None:
    await browser.open("/signin")
    await browser.fill("#token", secret)
    await browser.follow("#signin")
    await browser.wait_until("#signed-in", bool, "signed in")


@pytest_twisted.ensureDeferred
async def test_the_builders_page_shows_the_farm_at_a_glance(
    api_world: Any, browser: Browser
) -> None:
    world, store = api_world.world, api_world.store
    clock = _farm_on_a_clock(api_world)
    await world.builder("t1")
    await world.builder("t2")
    await world.builder("t3")
    disabled = await api_world.admin.patch(
        "/api/v1/builders/t3", {"enabled": False, "reason": HOSTILE}
    )
    assert disabled.status == 200
    await world.builder("v1", virtualized=True)
    assert (await api_world.admin.patch("/api/v1/builders/v1", {"manual": True})).status == 200
    building = await world.queue("hello")
    for i in range(3):
        await world.queue(f"ppa{i}", ppa=True)  # the one virtualized builder is in manual mode
    await FarmSampler(clock, store.db).sample()
    master = world.harness.master
    master.startService()
    await master.when_ready()
    await wait_for(api_world.reactor, lambda: _state(store, building.id, "BUILDING"), 60)
    await browser.open("/builders")
    assert await browser.text("h1") == "Builders"
    health = await browser.text("#health")
    assert "1 of 4 builders out of service" in health
    rows = await browser.texts("#builders tbody tr")
    by_name = {row.split()[0]: row for row in rows}
    assert set(by_name) == {"t1", "t2", "t3", "v1"}
    assert "building hello 1.0 on i386 for" in by_name["t1"] + by_name["t2"]
    assert "disabled" in by_name["t3"] and HOSTILE in by_name["t3"]  # as text, quotes and all
    assert "virtualized manual manual" in by_name["v1"]  # kind, mode, state
    down = await browser.texts("#down tbody tr")
    assert len(down) == 1 and down[0].startswith("t3 disabled") and HOSTILE in down[0]
    assert await browser.script("return window.pwned === undefined")
    kinds = await browser.texts("table.kinds tbody tr")
    assert any(row.startswith("386 PPA 3 ") for row in kinds), kinds
    assert any("never: no builder takes them" in row for row in kinds)
    assert await browser.count("figure.chart svg") == 1
    # sorting: by state, the failed builder first; again, last
    await browser.follow("#builders th:nth-child(5) a")
    names = [row.split()[0] for row in await browser.texts("#builders tbody tr")]
    assert names[0] == "t3"
    await browser.screenshot("builders")
    await browser.follow("#builders th:nth-child(5) a")
    assert (await browser.texts("#builders tbody tr"))[-1].startswith("t3")
    assert await browser.console_errors() == []
    # one builder's page: its failure, the judgement, in words
    await browser.open("/builders/t3")
    assert HOSTILE in await browser.text("#builder-state")
    judgements = await browser.texts("#judgements tbody tr")
    assert any(f"disabled by an operator: {HOSTILE}" in row for row in judgements), judgements
    assert await browser.script("return window.pwned === undefined")
    await browser.screenshot("builder-disabled")


@pytest_twisted.ensureDeferred
async def test_a_build_page_follows_the_live_log_until_the_build_is_built(
    api_world: Any, browser: Browser
) -> None:
    world, store = api_world.world, api_world.store
    clock = _farm_on_a_clock(api_world, build_time=30.0)
    await world.builder("t1")
    build = await world.queue("hello")
    master = world.harness.master
    master.startService()
    await master.when_ready()
    await wait_for(api_world.reactor, lambda: _state(store, build.id, "BUILDING"), 60)
    await browser.open(f"/builds/{build.id}")
    assert await browser.text("#state") == "building"
    await browser.script("window.sameDocument = true")
    first = await browser.wait_until(
        "#logtail", lambda t: f"PACKAGEBUILD-{build.id}" in t, "the log tail"
    )
    # the builder writes more: the page shows it without being reloaded
    clock.advance(12.0)
    grown = await browser.wait_until("#logtail", lambda t: len(t) > len(first), "the log to grow")
    assert grown.startswith(first[:20])
    await browser.screenshot("build-building")
    # the build ends: the page turns to its final state, with the collected log and files
    clock.advance(30.0)
    await browser.wait_until("#state", lambda t: t == "built", "the build to be built")
    assert await browser.script("return window.sameDocument === true")  # never reloaded
    files = await browser.wait_until("#files", bool, "the log and files")
    assert "buildlog_ubuntu-hoary-i386.hello_1.0_FULLYBUILT" in files and "SHA-256" in files
    history = " ".join(await browser.texts("#events tbody tr"))
    assert "dispatched to t1" in history
    assert (await store.builds.get(build)).status is BuildStatus.FULLYBUILT
    await browser.screenshot("build-built")
    assert await browser.console_errors() == []


@pytest_twisted.ensureDeferred
async def test_an_operator_cancels_a_build_and_an_anonymous_reader_sees_no_button(
    api_world: Any, browser: Browser
) -> None:
    world, store = api_world.world, api_world.store
    first = await world.queue("first")
    waiting = await world.queue("second")
    await world.builder("t1")
    await store.builders.set_builderok(await store.builders.getByName("t1"), False, "down")
    await browser.open(f"/builds/{waiting.id}")
    assert await browser.count("#cancel") == 0
    assert "Position 2" in await browser.text("#waiting")
    reason = await browser.text("#waiting .reason")
    assert "t1" in reason and "down" in reason  # no working builder: named, with why
    await browser.screenshot("build-waiting-anonymous")
    admin = await store.tokens.create(admin=True, description="the browser's admin")
    await _sign_in(browser, admin.secret)
    await browser.open(f"/builds/{waiting.id}")
    assert await browser.count("#cancel") == 1 and await browser.count("#rescore") == 1
    # the token is not readable by the page's scripts
    assert "bm_" not in (await browser.script("return document.cookie"))
    await browser.screenshot("build-waiting-operator")
    await browser.click("#cancel")
    assert await browser.wait_until("#state", lambda t: t == "cancelled", "cancelled")
    assert await browser.text("#done") == "Build cancelled."
    assert await browser.count("#cancel") == 0 and await browser.count("#retry") == 1
    assert (await store.builds.get(waiting)).status is BuildStatus.CANCELLED
    assert (await store.builds.get(first)).status is BuildStatus.NEEDSBUILD
    # retry brings it back, waiting
    await browser.click("#retry")
    await browser.wait_until("#state", lambda t: t == "waiting", "waiting again")
    assert (await store.builds.get(waiting)).status is BuildStatus.NEEDSBUILD
    await browser.screenshot("build-retried")
    await browser.follow("header form button")  # sign out
    await browser.open(f"/builds/{waiting.id}")
    assert await browser.count("#cancel") == 0
    assert await browser.console_errors() == []


@pytest_twisted.ensureDeferred
async def test_builds_are_paged_filtered_and_the_queue_is_in_dispatch_order(
    api_world: Any, browser: Browser
) -> None:
    world = api_world.world
    builds = [await world.queue(f"pkg{i}") for i in range(55)]
    ppa = await world.queue("tool", ppa=True)
    await browser.open("/builds")
    await browser.wait_for_count("table.builds tbody tr", 50, "a page of 50 builds")
    first = await browser.texts("table.builds tbody tr")
    assert first[0].startswith(f"{ppa.id} tool 1.0")
    await browser.screenshot("builds")
    await browser.follow("#older")
    # 56 builds of ours and the sample data's two: 8 on the second page
    await browser.wait_for_count("table.builds tbody tr", 8, "the second page")
    second = await browser.texts("table.builds tbody tr")
    shown = [int(row.split()[0]) for row in first + second]
    expected_tail = [b.id for b in reversed(builds)]
    assert shown[: len(expected_tail) + 1] == [ppa.id, *expected_tail]
    assert len(shown) == len(set(shown))  # no build twice
    # a filter
    await browser.open("/builds")
    await browser.fill("input[name=source]", "pkg7")
    await browser.follow(".filters button")
    rows = await browser.texts("table.builds tbody tr")
    assert len(rows) == 1 and rows[0].startswith(f"{builds[7].id} pkg7")
    # the queue, in dispatch order
    await browser.open("/queue?processor=386&virtualized=false")
    jobs = await browser.texts("#jobs tbody tr")
    assert jobs[0].startswith("1 ") and f"{builds[0].id}: pkg0" in jobs[0]
    await browser.screenshot("queue")
    # an archive's page
    await browser.open("/archives/cprov/ppa")
    assert (await browser.texts("table.builds tbody tr"))[0].startswith(f"{ppa.id} tool")
    await browser.screenshot("archive")
    assert await browser.console_errors() == []
