"""A web-only process (``twistd buildmaster --web-only``) beside a scanning master, on one
database and one files directory.

The web process serves the API, the pages, ``/metrics``, the health checks and the
librarian's URLs; it holds no builder and does not count among the masters that share them.
What its operations ask of a builder (a cancel of a running build, any change to the
builder) reaches the
master that holds the builder through ``NOTIFY builder_scan``, before that master's next
scan; the same goes between two scanning masters.

Real processes' parts (:class:`BuildmasterService` each, with its own state directory and
web server on 127.0.0.1), a real PostgreSQL, simulated builders over real XML-RPC.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from api_support import ApiClient, digest_header, make_source
from test_api_uploads import upload
from test_twistd import _failed_start
from twisted.internet import task

from buildmaster.config import MasterConfig
from buildmaster.operations import SCAN_CHANNEL
from buildmaster.ownership import OWNERSHIP_LOCK, PRESENCE_LOCK
from buildmaster.service import BuildmasterService, ServiceSettings, StartupError
from buildmaster.tap import Options
from buildmaster.testing import wait_for
from slavesim import Farm

#: builds on the simulated builders last this long unless a test says otherwise
LONG = 3600.0
#: a scan interval no test outlasts: the master's periodic scans come a slice (1/20 of the
#: interval) at a time, the first after 180 s; what happens before that was asked for
NEVER = 3600.0
BUILDING, ABORTING = "BuilderStatus.BUILDING", "BuilderStatus.ABORTING"


def _settings(
    state: Path, dsn: str, files: Path, scan_interval: float, web_only: bool = False
) -> ServiceSettings:
    return ServiceSettings(
        state_dir=state,
        dsn=dsn,
        port="tcp:0:interface=127.0.0.1",
        files_dir=files,
        master=MasterConfig(scan_interval=scan_interval, vm_resume_command="true %(vm_host)s"),
        web_only=web_only,
    )


def _base(service: BuildmasterService) -> str:
    return f"http://127.0.0.1:{service.web.getHost().port}"


class Processes:
    """The services started for a test (stopped at its end), the simulated builders, and an
    admin token."""

    def __init__(self, reactor: Any, dsn: str, world: Any, tmp_path: Path, admin: str) -> None:
        self.reactor = reactor
        self.dsn = dsn
        self.world = world
        self.store = world.store
        self.tmp_path = tmp_path
        self.admin_token = admin
        self.files = world.state / "librarian"
        self.sims = Farm(reactor, tmp_path / "slavesim", build_time=LONG, history_size=1000)
        self.started: list[BuildmasterService] = []
        self.clients: list[ApiClient] = []

    async def start(
        self, name: str, scan_interval: float = NEVER, web_only: bool = False
    ) -> BuildmasterService:
        settings = _settings(
            self.tmp_path / name, self.dsn, self.files, scan_interval, web_only=web_only
        )
        service = BuildmasterService(self.reactor, settings)
        self.started.append(service)
        service.startService()
        await service.when_ready()
        return service

    def admin(self, service: BuildmasterService) -> ApiClient:
        client = ApiClient(self.reactor, _base(service), self.admin_token)
        self.clients.append(client)
        return client

    async def i386_builder(self, name: str, manual: bool = False) -> tuple[Any, Any]:
        """A simulated i386 builder, registered (not virtualized: it builds the primary
        archive's builds)."""
        sim = await self.sims.start_builder(name, ("i386",))
        builder = await self.store.builders.new(
            name, sim.url, [self.world.data.processor_386], manual=manual
        )
        return sim, builder

    async def stop(self) -> None:
        for client in self.clients:
            client.close()
        for service in reversed(self.started):
            await service.stopService()
        await self.sims.stop()


@contextlib.asynccontextmanager
async def _processes(
    reactor: Any, dsn: str, world: Any, tmp_path: Path
) -> AsyncIterator[Processes]:
    token = await world.store.tokens.create(admin=True, description="the test admin")
    processes = Processes(reactor, dsn, world, tmp_path, token.secret)
    try:
        yield processes
    finally:
        await processes.stop()


async def _lock_holders(store: Any, namespace: int) -> dict[int, int]:
    """Database session (pid) -> how many advisory locks of ``namespace`` it holds."""
    rows = await store.db.query(
        "SELECT pid, count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid = %s::oid AND objsubid = 2"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " GROUP BY pid",
        (namespace,),
    )
    return {int(pid): int(n) for pid, n in rows}


@pytest_twisted.ensureDeferred
async def test_the_whole_story_through_the_web_process(
    reactor: Any, dsn: str, process_world: Any, tmp_path: Path
) -> None:
    """Through the web process only: a PPA, an uploader token, a chroot, two builders, a
    source upload; the scanning master (which holds both builders: the web process is not
    a master) builds both; their logs and .debs come from the web process's librarian
    URLs. The web process answers /readyz (it does not scan), /metrics and the pages."""
    async with _processes(reactor, dsn, process_world, tmp_path) as farm:
        scanning = await farm.start("scanning", scan_interval=0.2)
        web = await farm.start("web", web_only=True)
        assert web.master is None and scanning.master is not None
        admin = farm.admin(web)
        ppa = await admin.post(
            "/api/v1/archives", {"owner": "alice", "name": "tools", "distribution": "ubuntu"}
        )
        assert ppa.status == 201, ppa.body
        token = await admin.post(
            "/api/v1/tokens", {"scope": "uploader", "archives": ["~alice/ubuntu/tools"]}
        )
        alice = admin.with_token(token.json["secret"])
        chroot = b"\x1f\x8b" + bytes(range(256)) * 1024
        put = await admin.put(
            "/api/v1/chroots/ubuntu/hoary/amd64", chroot, headers=digest_header(chroot)
        )
        assert put.status == 201, put.body
        for name, arch in (("ppa-i386", "i386"), ("ppa-amd64", "amd64")):
            sim = await farm.sims.start_builder(name, (arch,))
            added = await admin.post(
                "/api/v1/builders",
                {
                    "name": name,
                    "url": sim.url,
                    "processors": ["386" if arch == "i386" else arch],
                    "virtualized": True,
                    "vm_host": f"{name}.vm",
                },
            )
            assert added.status == 201, added.body
        farm.sims.build_time = 0.3

        source = make_source("hello", architecture="any")
        submitted = await upload(alice, "~alice/ubuntu/tools", source)
        assert submitted.status == 201, submitted.body
        builds = submitted.json["builds"]
        assert sorted(b["architecture"]["tag"] for b in builds) == ["amd64", "i386"]

        async def built() -> bool:
            answers = [await alice.get(b["url"]) for b in builds]
            return {a.json["state"] for a in answers} == {"FULLYBUILT"}

        await wait_for(reactor, built, 60, "both builds to be built")
        for summary in builds:
            build = (await alice.get(summary["url"])).json
            assert build["builder"] == f"ppa-{build['architecture']['tag']}"
            log = build["log"]
            assert log["url"].startswith(_base(web) + "/librarian/")
            data = await _download(alice, log["url"])
            assert hashlib.sha256(data).hexdigest() == log["sha256"]
            [deb] = [f for f in build["files"] if f["filename"].endswith(".deb")]
            assert deb["url"].startswith(_base(web) + "/librarian/")
            content = await _download(alice, deb["url"])
            assert hashlib.sha256(content).hexdigest() == deb["sha256"]
            assert content.startswith(b"!<arch>")

        # one master present (the scanning one), holding every builder
        assert scanning.master.ownership.owned == {
            b.id for b in await farm.store.builders.all() if b.active
        }
        presence = await _lock_holders(farm.store, PRESENCE_LOCK)
        holders = await _lock_holders(farm.store, OWNERSHIP_LOCK)
        assert len(presence) == 1 and set(holders) == set(presence)

        ready = await alice.get("/readyz")
        assert ready.status == 200, ready.body
        assert ready.json["checks"]["database"]["ok"]
        assert "does not scan" in ready.json["checks"]["scanner"]["detail"]
        metrics = await alice.get("/metrics")
        assert metrics.status == 200 and b"# TYPE buildmaster_builders gauge" in metrics.body
        page = await alice.get("/builders")
        assert page.status == 200 and b"ppa-amd64" in page.body


async def _download(client: ApiClient, url: str) -> bytes:
    response = await client.http.request(b"GET", url, max_body=64 * 1024 * 1024)
    assert response.status == 200, (url, response.status)
    return response.body or b""


async def _state(store: Any, build: Any) -> str:
    return (await store.builds.get(build.id)).status.name


@pytest.mark.parametrize("second", ["web-only", "scanning"])
@pytest_twisted.ensureDeferred
async def test_manual_mode_and_cancel_from_another_process_reach_the_builder_at_once(
    reactor: Any, dsn: str, process_world: Any, tmp_path: Path, second: str, captured_log: Any
) -> None:
    """Master A holds the builder and scans only on its own once an hour; the operator
    works through the second process (web-only, or a second scanning master): manual mode
    on reaches A's view of the builder, a build queued meanwhile waits; manual mode off
    has A dispatch it; a cancel has A abort it on the builder: each at once, through
    NOTIFY builder_scan, not at A's next scan."""
    async with _processes(reactor, dsn, process_world, tmp_path) as farm:
        sim, builder = await farm.i386_builder("b1")
        farm.sims.settings.abort_time = LONG  # the builder stays ABORTING: seen as it is
        a = await farm.start("a")
        assert a.master is not None and a.master.ownership.owned == {builder.id}
        b = await farm.start("b", web_only=second == "web-only")
        assert b.master is None or b.master.ownership.owned == set()
        admin = farm.admin(b)
        worker = a.master.workers[builder.id]
        # notifications that name no builder, or one nobody holds, change nothing
        await farm.store.db.notify(SCAN_CHANNEL, "not a builder")
        await farm.store.db.notify(SCAN_CHANNEL, "99999")

        changed = await admin.patch("/api/v1/builders/b1", {"manual": True})
        assert changed.status == 200, changed.body
        await wait_for(reactor, lambda: worker.builder.manual, 60, "A to see manual mode")
        build = await farm.world.queue("waits")
        await task.deferLater(reactor, 1.0, lambda: None)  # the queue's NOTIFY is heard
        assert await _state(farm.store, build) == "NEEDSBUILD"
        assert sim.state.state == "BuilderStatus.IDLE"

        changed = await admin.patch("/api/v1/builders/b1", {"manual": False})
        assert changed.status == 200, changed.body

        async def dispatched() -> bool:
            return sim.state.state == BUILDING and await _state(farm.store, build) == "BUILDING"

        await wait_for(reactor, dispatched, 60, "A to dispatch the build")

        cancelled = await admin.post(f"/api/v1/builds/{build.id}/cancel")
        assert cancelled.status == 200, cancelled.body
        assert cancelled.json["state"] == "CANCELLING"
        await wait_for(reactor, lambda: sim.state.state == ABORTING, 60, "the builder to abort")
        assert sim.state.build_id == (await farm.store.builds.get(build.id)).cookie
        assert a.master.ownership.owned == {builder.id}  # A held it all along
        assert any("names no builder: 'not a builder'" in w for w in captured_log.warnings())


@pytest.mark.parametrize("second", ["web-only", "scanning"])
@pytest_twisted.ensureDeferred
async def test_a_builder_disabled_and_enabled_from_another_process_is_seen_at_once(
    reactor: Any, dsn: str, process_world: Any, tmp_path: Path, second: str
) -> None:
    """Master A holds the builder and scans only on its own once an hour. An operator
    disables it through the second process: A sees it out of service at once, and a build
    queued meanwhile waits; enabled again, A dispatches that build at once, not at its next
    scan (the queue's own notification came while the builder was out of service)."""
    async with _processes(reactor, dsn, process_world, tmp_path) as farm:
        sim, builder = await farm.i386_builder("b1")
        a = await farm.start("a")
        assert a.master is not None and a.master.ownership.owned == {builder.id}
        b = await farm.start("b", web_only=second == "web-only")
        admin = farm.admin(b)
        worker = a.master.workers[builder.id]
        assert worker.builder.builderok

        changed = await admin.patch("/api/v1/builders/b1", {"enabled": False, "reason": "disks"})
        assert changed.status == 200, changed.body
        await wait_for(reactor, lambda: not worker.builder.builderok, 60, "A to see it disabled")
        assert worker.builder.failnotes == "disabled by an operator: disks"
        build = await farm.world.queue("waits")
        await task.deferLater(reactor, 1.0, lambda: None)  # the queue's NOTIFY is heard
        assert await _state(farm.store, build) == "NEEDSBUILD"
        assert sim.state.state == "BuilderStatus.IDLE"

        changed = await admin.patch("/api/v1/builders/b1", {"enabled": True})
        assert changed.status == 200, changed.body

        async def dispatched() -> bool:
            return sim.state.state == BUILDING and await _state(farm.store, build) == "BUILDING"

        await wait_for(reactor, dispatched, 60, "A to dispatch the build")
        assert a.master.ownership.owned == {builder.id}


@pytest_twisted.ensureDeferred
async def test_a_web_only_service_needs_the_farms_database(
    reactor: Any, tmp_path: Path, captured_log: Any
) -> None:
    captured_log.allow_errors(StartupError)  # the start's one line
    settings = ServiceSettings(state_dir=tmp_path / "state", web_only=True)
    service = BuildmasterService(reactor, settings)
    service.startService()
    with pytest.raises(StartupError, match="needs its connection string"):
        await service.when_ready()
    await service.stopService()
    assert not (tmp_path / "state" / "postgres").exists()  # no private cluster started


def test_web_only_options() -> None:
    options = Options()
    options.parseOptions(
        ["--web-only", "--dsn", "dbname=farm", "--files-dir", "/srv/files", "--port", "8080"]
        + ["--librarian-url", "http://api.example.com:8080/librarian/", "--access-log"]
    )
    settings = options.settings()
    assert settings.web_only and not settings.demo
    assert settings.dsn == "dbname=farm" and settings.files_dir == Path("/srv/files")
    assert settings.port == "tcp:8080:interface=127.0.0.1" and settings.access_log
    assert not Options().settings().web_only


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--web-only"], "--web-only needs --dsn"),
        (["--web-only", "--dsn", "dbname=x", "--demo"], "--web-only does not go with --demo"),
        (
            ["--web-only", "--dsn", "dbname=x", "--scan-interval", "5"],
            "--scan-interval is for a master that scans",
        ),
        (
            ["--web-only", "--dsn", "dbname=x", "--vm-resume-command", "reset %(vm_host)s"],
            "--vm-resume-command is for a master that scans",
        ),
    ],
)
def test_twistd_refuses_web_only_with_what_makes_no_sense(
    tmp_path: Path, args: list[str], complaint: str
) -> None:
    output = _failed_start(args, tmp_path)
    last = [line for line in output.splitlines() if line.strip()][-1]
    assert complaint in last, output[-2000:]
    assert "buildmaster cannot start" not in output  # refused before anything started


def test_a_builder_scan_notification_names_a_builder_by_ascii_digits_only() -> None:
    from buildmaster.operations import parse_scan_wanted

    assert parse_scan_wanted("42") == 42 and parse_scan_wanted(" 7\n") == 7
    # anyone with the database can NOTIFY: what is not a plain id is ignored, not an error
    for payload in ("", "\u00b3", "\u0663", "4x", "-1", "9" * 19):
        assert parse_scan_wanted(payload) is None, payload
