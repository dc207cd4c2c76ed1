"""The ``buildmaster`` command line, run as the installed console script against a running
master over real HTTP (real PostgreSQL, slavesim builders): what a user sees on standard
output and standard error, and the exit status."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from api_support import make_source
from twisted.internet import defer, protocol
from twisted.internet.utils import getProcessOutputAndValue

from buildmaster.config import MasterConfig
from buildmaster.testing import wait_for

#: the console script that `pip install` made from [project.scripts]
BUILDMASTER = Path(sys.executable).parent / "buildmaster"


@attrs.frozen
class Ran:
    out: str
    err: str
    code: int

    @property
    def error_line(self) -> str:
        """The one line an error is said in (fails if there are more)."""
        lines = self.err.splitlines()
        assert self.code != 0 and len(lines) == 1, (self.code, self.err)
        return lines[0]

    @property
    def json(self) -> Any:
        return json.loads(self.out)


class _Running(protocol.ProcessProtocol):
    """A command running in the background: what it has written so far, and its end."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.ended: defer.Deferred[Ran] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(Ran(self.out.decode(), self.err.decode(), reason.value.exitCode))


class _Terminal(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: defer.Deferred[int] = defer.Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)


class Cli:
    """Runs ``buildmaster`` with a home of its own and the environment a test gives."""

    def __init__(self, reactor: Any, home: Path, url: str) -> None:
        self.reactor = reactor
        self.home = home
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("BUILDMASTER_")},
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "BUILDMASTER_URL": url,
            "COLUMNS": "200",
        }

    async def __call__(self, *args: str, **env: str) -> Ran:
        assert BUILDMASTER.exists(), f"{BUILDMASTER}: the package's console script"
        out, err, code = await getProcessOutputAndValue(
            str(BUILDMASTER), args, env={**self.env, **env}, path=str(self.home)
        )
        return Ran(out.decode(), err.decode(), code)

    def start(self, *args: str, **env: str) -> _Running:
        """Run in the background, the reactor serving the master meanwhile."""
        running = _Running()
        self.reactor.spawnProcess(
            running,
            str(BUILDMASTER),
            [str(BUILDMASTER), *args],
            env={**self.env, **env},
            path=str(self.home),
        )
        return running

    async def on_terminal(self, *args: str, **env: str) -> tuple[str, int]:
        """Run on a pseudo-terminal: what it shows there (both streams), its exit status."""
        terminal = _Terminal()
        self.reactor.spawnProcess(
            terminal,
            str(BUILDMASTER),
            [str(BUILDMASTER), *args],
            env={**self.env, **env, "TERM": "xterm"},
            path=str(self.home),
            usePTY=True,
        )
        code = await terminal.ended
        return terminal.output.decode(errors="replace"), code


@pytest_twisted.async_yield_fixture
async def farm(make_world: Any, tmp_path: Path) -> Any:
    """A master serving the API (not started), builds taking two seconds; a CLI for it."""
    world = await make_world(
        MasterConfig(scan_interval=0.2, vm_resume_command="true %(vm_host)s"), 2.0
    )
    home = tmp_path / "home"
    home.mkdir()
    yield world, Cli(world.harness.reactor, home, world.harness.base_url)


def write_source(directory: Path, source: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in source.files.items():
        (directory / name).write_bytes(data)
    return directory / source.dsc_name


def table_row(out: str, first: str) -> list[str]:
    """The cells of the table row that starts with ``first`` (cells: 2+ spaces apart)."""
    for line in out.splitlines():
        if line.split("  ")[0] == first:
            return [cell.strip() for cell in line.split("  ") if cell.strip()]
    raise AssertionError(f"no row {first!r} in:\n{out}")


def field(out: str, name: str) -> str:
    """The value of a ``name:  value`` line."""
    for line in out.splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in:\n{out}")


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_the_whole_story(farm: Any, dsn: str, tmp_path: Path) -> None:
    """A token, builders, a chroot and a source; the builds followed to their end, their
    files fetched; a build cancelled, retried, rescored and built."""
    world, cli = farm
    harness = world.harness

    # the first admin token, straight in the database; kept in the config file (0600)
    made = await cli("token", "create", "--admin", "--description", "ops", "--dsn", dsn)
    assert made.code == 0, made.err
    admin = made.out.strip()
    assert admin.startswith("bm_") and "shown only now" in made.err
    config = cli.home / "config" / "buildmaster" / "client.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'token = "{admin}"\n')
    config.chmod(0o600)

    listed = await cli("token", "list")
    assert listed.code == 0, listed.err
    assert listed.out.splitlines()[0].split() == [
        "ID", "PREFIX", "SCOPE", "CREATED", "REVOKED", "DESCRIPTION"
    ]  # fmt: skip
    row = table_row(listed.out, listed.out.splitlines()[1].split()[0])
    assert (row[1][:3], row[2], row[-2:]) == ("bm_", "admin", ["-", "ops"])
    assert admin not in listed.out
    uploader = await cli("token", "create", "--uploader", "ppa:cprov/ppa")
    assert uploader.code == 0, uploader.err
    assert "uploader to ~cprov/ubuntu/ppa" in uploader.err
    uploader_token = uploader.out.strip()

    # two PPA builders
    for name, arch, processor in (("ppa-i386", "i386", "386"), ("ppa-amd64", "amd64", "amd64")):
        sim = await harness.start_builder(name, arch)
        added = await cli(
            "builders", "add", name, sim.url, "--processor", processor, "--virtualized",
            "--vm-host", f"{name}.vm",
        )  # fmt: skip
        assert added.code == 0, added.err
        assert added.out.strip() == f"added builder {name} (virtualized, {sim.url})"
    shown = await cli("builders")
    assert shown.code == 0, shown.err
    assert table_row(shown.out, "ppa-amd64")[:4] == ["ppa-amd64", "amd64", "virtualized", "idle"]
    assert table_row(shown.out, "ppa-i386")[-1] == "ok"

    # amd64's chroot, on a terminal (a progress bar) and piped (none)
    tarball = tmp_path / "chroot-hoary-amd64.tar.gz"
    tarball.write_bytes(b"\x1f\x8b" + os.urandom(3 * 1024 * 1024))
    screen, code = await cli.on_terminal("chroot", "upload", "hoary", "amd64", str(tarball))
    assert code == 0, screen
    assert "sending chroot-hoary-amd64.tar.gz" in screen and "100%" in screen
    piped = await cli("chroot", "upload", "hoary", "amd64", str(tarball))
    assert piped.code == 0 and piped.err == "", piped.err
    sha256 = hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert piped.out.strip() == (
        f"chroot of ubuntu/hoary/amd64: {tarball.name} ({tarball.stat().st_size} bytes,"
        f" SHA-256 {sha256})"
    )
    chroots = await cli("chroot", "list")
    assert table_row(chroots.out, "ubuntu/hoary")  # the table has the series
    assert [line for line in chroots.out.splitlines() if sha256 in line][0].split()[:2] == [
        "ubuntu/hoary",
        "amd64",
    ]

    # the source, as the uploader
    dsc = write_source(tmp_path / "src", make_source("hello", architecture="any"))
    uploaded = await cli(
        "upload", str(dsc), "--archive", "ppa:cprov/ppa", BUILDMASTER_TOKEN=uploader_token
    )
    assert uploaded.code == 0, uploaded.err
    assert uploaded.out.splitlines()[0] == (
        "uploaded hello 2.10-1 to ~cprov/ubuntu/ppa (ubuntu/hoary): 2 builds"
    )
    rows = {table_row(uploaded.out, line.split()[0])[3]: line.split()[0]
            for line in uploaded.out.splitlines()[2:]}  # fmt: skip
    assert sorted(rows) == ["amd64", "i386"]
    builds = await cli("builds", "--archive", "ppa:cprov/ppa", "--page-size", "1")
    everything = await cli("builds", "--json")
    ppa = [
        str(b["id"]) for b in everything.json if b["archive"]["reference"] == "~cprov/ubuntu/ppa"
    ]
    assert sorted(ppa) == sorted(rows.values())
    # one build a page: the second came from the page the first one's `next` named
    assert [line.split()[0] for line in builds.out.splitlines()[1:]] == ppa  # newest first
    assert all(table_row(builds.out, i)[1] == "NEEDSBUILD" for i in rows.values())

    # follow both logs from before the master starts until the builds end
    follows = {arch: cli.start("build", "log", build_id, "--follow")
               for arch, build_id in rows.items()}  # fmt: skip
    for following in follows.values():
        started = following.err

        def connected(err: bytearray = started) -> bool:
            return b": NEEDSBUILD" in err

        await wait_for(harness.reactor, connected, 30, "the log's follower to connect")
    harness.master.startService()
    await harness.master.when_ready()
    for arch, build_id in rows.items():
        followed = await follows[arch].ended
        assert followed.code == 0, followed.err
        assert f"build {build_id}: BUILDING" in followed.err
        assert followed.err.rstrip().endswith(f"build {build_id} ended FULLYBUILT")
        assert "slavesim: hello/" in followed.err  # the live tail, as it grew
        assert followed.out.startswith("slavesim build log for ")
        assert "\nFinished: " in followed.out  # the whole log, to its last lines

    # fetch the results: the log and the .deb, checked
    build_id = rows["amd64"]
    detail = (await cli("build", "show", build_id, "--json")).json
    fetched = await cli("build", "fetch", build_id, "out")
    assert fetched.code == 0 and fetched.err == "", fetched.err
    for file in [detail["log"], *detail["files"]]:
        target = cli.home / "out" / file["filename"]
        assert hashlib.sha256(target.read_bytes()).hexdigest() == file["sha256"]
        assert f"out/{file['filename']} ({file['size']} bytes, SHA-256 verified)" in fetched.out
    assert any(f["filename"].endswith(".deb") for f in detail["files"])
    shown = await cli("build", "show", build_id)
    assert field(shown.out, "state") == "FULLYBUILT"
    assert field(shown.out, "builder") == "ppa-amd64"
    assert "dispatched to ppa-amd64" in shown.out

    # a build kept waiting (its builder in manual mode), cancelled, retried, rescored
    manual = await cli("builders", "manual", "ppa-i386", "on")
    assert manual.code == 0 and "manual mode on" in manual.out, manual.err
    again = write_source(tmp_path / "src2", make_source("hello", revision="2"))
    second = await cli(
        "upload", str(again), "--archive", "~cprov/ubuntu/ppa", "--arch", "i386", "--json",
        BUILDMASTER_TOKEN=uploader_token,
    )  # fmt: skip
    assert second.code == 0, second.err
    waiting_id = str(second.json["builds"][0]["id"])
    waiting = await cli("build", "show", waiting_id)
    assert field(waiting.out, "position") == "1"
    assert field(waiting.out, "estimated start") == "unknown (no builder takes it)"
    assert "is in manual mode: ppa-i386" in field(waiting.out, "not running")
    cancelled = await cli("build", "cancel", waiting_id, BUILDMASTER_TOKEN=uploader_token)
    assert cancelled.code == 0, cancelled.err
    assert cancelled.out.strip().endswith(": CANCELLED")
    retried = await cli("build", "retry", waiting_id, BUILDMASTER_TOKEN=uploader_token)
    assert retried.out.strip().endswith(": NEEDSBUILD"), retried.err
    rescored = await cli("build", "rescore", waiting_id, "5000")
    assert rescored.out.strip().endswith(": NEEDSBUILD, score 5000"), rescored.err
    listing = await cli("queue", "--list")
    assert table_row(listing.out, "1")[1:3] == ["5000 (manual)", waiting_id]
    listing = await cli("queue", "--list", "--processor", "386", "--virtualized")
    assert table_row(listing.out, "1")[1:5] == [
        "5000 (manual)",
        waiting_id,
        "hello 2.10-2 on i386",
        "386 virtualized",
    ]
    overview = await cli("queue")
    assert table_row(overview.out, "386")[1:3] == ["virtualized", "1"]
    await cli("builders", "manual", "ppa-i386", "off")
    followed = await cli("build", "log", waiting_id, "--follow")
    assert followed.err.rstrip().endswith(f"build {waiting_id} ended FULLYBUILT"), followed.err

    collected = await cli("build", "log", waiting_id)
    assert collected.code == 0 and collected.err == "", collected.err
    assert collected.out.startswith("slavesim build log for ") and "\nFinished: " in collected.out
    about = await cli("builders", "show", "ppa-i386")
    assert field(about.out, "kind") == "virtualized (VM ppa-i386.vm)"
    assert table_row(about.out, waiting_id)[1:3] == ["FULLYBUILT", "hello 2.10-2 on i386"]
    assert "manual mode off" in about.out  # its history

    # out of service and back
    disabled = await cli("builders", "disable", "ppa-amd64", "--reason", "new disk")
    assert disabled.code == 0, disabled.err
    shown = await cli("builders")
    assert table_row(shown.out, "ppa-amd64")[3] == "disabled"
    health = table_row(shown.out, "ppa-amd64")[-1]
    assert health.startswith("disabled by an operator: new disk (since "), health
    assert (await cli("builders", "enable", "ppa-amd64")).code == 0

    async def enabled() -> bool:
        return table_row((await cli("builders")).out, "ppa-amd64")[-1] == "ok"

    await wait_for(harness.reactor, enabled, 30, "ppa-amd64 back in service")

    # the uploader's token revoked: it is refused from then on
    uploader_id = next(t["id"] for t in (await cli("token", "list", "--json")).json
                       if t["scope"] == "uploader")  # fmt: skip
    revoked = await cli("token", "revoke", str(uploader_id))
    assert revoked.out.strip() == f"token {uploader_id} revoked", revoked.err
    refused = await cli("builds", BUILDMASTER_TOKEN=uploader_token)
    assert refused.code == 1 and "401 Unauthorized" in refused.error_line


@pytest_twisted.ensureDeferred
async def test_mistakes_are_one_line_with_a_status(farm: Any, tmp_path: Path) -> None:
    world, cli = farm
    admin = (await world.store.tokens.create(admin=True)).secret

    wrong = await cli("builds", "--token", "bm_nonsense")
    assert wrong.code == 2  # --token is an option of the command, not of builds
    wrong = await cli("--token", "bm_nonsense", "builds")
    assert wrong.code == 1
    assert wrong.error_line.startswith("buildmaster: 401 Unauthorized: ")

    unknown = await cli("build", "show", "999999")
    assert unknown.code == 1
    assert unknown.error_line.startswith("buildmaster: 404 Not Found: ")
    assert "999999" in unknown.error_line

    unknown = await cli("build", "log", "999999", "--follow")
    assert unknown.error_line == "buildmaster: 404 Not Found: no build 999999"

    anonymous = await cli("builders", "disable", "bob", "--reason", "x")
    assert "give a token: --token, $BUILDMASTER_TOKEN" in anonymous.error_line
    forbidden = await cli("builders", "disable", "bob", "--reason", "x", BUILDMASTER_TOKEN=admin)
    assert forbidden.code == 0, forbidden.err

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    unreachable = await cli("--url", closed, "queue")
    assert unreachable.code == 3
    assert unreachable.error_line.startswith(f"buildmaster: cannot reach the master at {closed} (")
    assert "the URL comes from --url" in unreachable.error_line

    orig = "hello_2.10.orig.tar.gz"
    missing = write_source(tmp_path / "missing", make_source())
    (missing.parent / orig).unlink()
    refused = await cli(
        "upload", str(missing), "--archive", "ppa:cprov/ppa", BUILDMASTER_TOKEN=admin
    )
    assert refused.code == 1
    assert f"{orig} is listed in the .dsc but is not in {missing.parent}" in refused.error_line
    lying = write_source(tmp_path / "lying", make_source(tamper={"file": orig, "sha256": "0" * 64}))
    refused = await cli("upload", str(lying), "--archive", "ppa:cprov/ppa", BUILDMASTER_TOKEN=admin)
    assert refused.code == 1
    assert f"{orig} has sha256" in refused.error_line and "the .dsc says 000" in refused.error_line
    # nothing reached the master
    assert (await cli("builds", "--source", "hello", "--json")).json == []

    # the master's own refusal of an upload, with its reasons
    dsc = write_source(tmp_path / "good", make_source())
    nowhere = await cli("upload", str(dsc), "--archive", "ppa:nobody/ppa", BUILDMASTER_TOKEN=admin)
    assert nowhere.code == 1 and "ppa:nobody/ppa" in nowhere.error_line

    bad_config = cli.home / "bad.toml"
    bad_config.write_text("url = 3\n")
    broken = await cli("--config", str(bad_config), "queue")
    assert broken.error_line == f"buildmaster: config file {bad_config}: url must be a string"


@pytest_twisted.ensureDeferred
async def test_an_archive_is_disabled_and_enabled_again(farm: Any) -> None:
    """Disabled, an archive's waiting build is suspended; enabled, it waits again."""
    world, cli = farm
    admin = (await world.store.tokens.create(admin=True)).secret
    build = await world.queue("hello", ppa=True)

    async def queue_status() -> str:
        shown = await cli("build", "show", str(build.id), "--json")
        assert shown.code == 0, shown.err
        return str(shown.json["queue_status"])

    disabled = await cli("archive", "disable", "ppa:cprov/ppa", BUILDMASTER_TOKEN=admin)
    assert disabled.code == 0, disabled.err
    assert disabled.out.strip() == (
        "archive ~cprov/ubuntu/ppa disabled: its waiting builds are suspended, those on"
        " builders go on"
    )
    assert await queue_status() == "suspended"
    enabled = await cli("archive", "enable", "~cprov/ubuntu/ppa", "--json", BUILDMASTER_TOKEN=admin)
    assert enabled.code == 0, enabled.err
    assert enabled.json["reference"] == "~cprov/ubuntu/ppa" and enabled.json["enabled"] is True
    assert await queue_status() == "waiting"
    unknown = await cli("archive", "disable", "ppa:nobody/ppa", BUILDMASTER_TOKEN=admin)
    assert unknown.error_line.startswith("buildmaster: 404 Not Found: ")
    anonymous = await cli("archive", "disable", "ppa:cprov/ppa")
    assert "give a token: --token, $BUILDMASTER_TOKEN" in anonymous.error_line


@pytest_twisted.ensureDeferred
async def test_the_bootstrap_commands_reach_the_database(
    reactor: Any, empty_dsn: str, tmp_path: Path
) -> None:
    """``migrate`` and ``token ... --dsn`` work in the database, with no master running."""
    cli = Cli(reactor, tmp_path, "http://127.0.0.1:1")
    migrated = await cli("migrate", "--dsn", empty_dsn)
    assert migrated.code == 0, migrated.err
    assert migrated.out.startswith("applied migrations: ")
    again = await cli("migrate", "--dsn", empty_dsn)
    assert again.out.strip() == "schema already current"
    made = await cli("token", "create", "--admin", "--description", "first", "--dsn", empty_dsn)
    assert made.code == 0 and made.out.startswith("bm_"), made.err
    listed = await cli("token", "list", "--dsn", empty_dsn)
    assert listed.out.strip().endswith("admin (first)") and made.out.strip() not in listed.out
    revoked = await cli("token", "revoke", "1", "--dsn", empty_dsn)
    assert revoked.code == 0 and "token 1 revoked" in revoked.err
    missing = await cli("token", "revoke", "99", "--dsn", empty_dsn)
    assert missing.error_line == "buildmaster.tokens: no token 99" and missing.code == 1
