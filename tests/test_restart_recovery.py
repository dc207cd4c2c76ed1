"""Kill the master (SIGKILL) at random points while a farm works, restart it, many times:
nothing is lost, nothing is built twice, nothing is stored twice."""

from __future__ import annotations

import collections
import hashlib
import io
import os
import random
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from buildmaster.enums import BuildStatus, PackagePublishingPocket, SourcePackageFileType
from buildmaster.librarian import Librarian
from buildmaster.sampledata import load_sample_data
from buildmaster.store import Store
from buildmaster.testing import wait_for

ROOT = Path(__file__).resolve().parent.parent


def start_master(dsn: str, state: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "--logfile",
            str(log),
            "buildmaster",
            "--dsn",
            dsn,
            "--state-dir",
            str(state),
            "--port",
            "0",
            "--scan-interval",
            "0.3",
            "--socket-timeout",
            "3",
        ],  # fmt: skip
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _running(log: Path) -> bool:
    return log.exists() and "buildmaster is running" in log.read_text(errors="replace")


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_sigkill_at_random_points_loses_nothing(
    reactor: Any, store: Store, dsn: str, tmp_path: Path
) -> None:
    from slavesim import Farm

    state = tmp_path / "state"
    state.mkdir()
    data = await load_sample_data(store)
    await store.queue.destroySelf(data.lost_job_id)
    await store.queue.destroySelf(data.waiting_job_id)
    for name in ("bob", "frog"):
        await store.builders.set_active(await store.builders.getByName(name), False)
    # files go into the librarian the master serves from (same directory, same database)
    librarian = Librarian(
        reactor,
        store.db,
        state / "librarian",
        "http://unused/",
        Librarian.load_or_create_secret(state),
    )

    async def add(name: str, content: bytes) -> int:
        return int(
            await librarian.addFile(
                name, len(content), io.BytesIO(content), "application/octet-stream"
            )
        )

    await store.distributions.addOrUpdateChroot(
        data.hoary_i386, await add("chroot.tar.gz", b"chroot" * 50)
    )

    # the builders outlive the master: they run here, in the test's process
    farm = Farm(reactor, tmp_path / "slavesim", build_time=0.5, history_size=100_000)
    sims = []
    for i in range(6):
        sim = await farm.start_builder(f"k{i}", ("i386",))
        await store.builders.new(f"k{i}", sim.url, [data.processor_386])
        sims.append(sim)
    builds = []
    for i in range(120):
        dsc = await add(f"pkg{i}_1.0.dsc", f"Source: pkg{i}\n".encode())
        spr = await store.sources.new(
            f"pkg{i}", "1.0", data.hoary, files=[(dsc, SourcePackageFileType.DSC)]
        )
        build = await store.builds.createBuild(
            spr, data.hoary_i386, PackagePublishingPocket.RELEASE, data.primary
        )
        await store.queue.createBuildQueueEntry(build)
        builds.append(build)

    async def built() -> int:
        rows = await store.db.query(
            "SELECT count(*) FROM build WHERE id = ANY(%s) AND buildstate = %s",
            ([b.id for b in builds], int(BuildStatus.FULLYBUILT)),
        )
        return int(rows[0][0])

    async def finished() -> bool:
        return await built() == len(builds)

    def calls() -> int:
        return sum(len(sim.history) for sim in sims)

    async def more_built(than: int) -> bool:
        return await built() > than

    def reached(target: int) -> bool:
        return calls() >= target

    chooser = random.Random(20261127)
    progress = []
    try:
        for attempt in range(14):
            log = tmp_path / f"master-{attempt}.log"
            before = await built()
            master = start_master(dsn, state, log)
            # once it runs and has finished a build, it dies somewhere in its work
            # (claiming, dispatching, collecting, cleaning): after a random number of
            # calls to the builders, not of seconds, which a loaded machine would stretch
            await wait_for(reactor, partial(_running, log), 120, "the master to start")
            await wait_for(reactor, partial(more_built, before), 120, "a build finished")
            target = calls() + chooser.randint(0, 30)
            await wait_for(reactor, partial(reached, target), 120, "calls to the builders")
            master.send_signal(signal.SIGKILL)
            master.wait()
            progress.append(await built())
        master = start_master(dsn, state, tmp_path / "master-final.log")
        await wait_for(reactor, finished, 180, "every build to finish after the restarts")
        master.send_signal(signal.SIGTERM)
        master.wait(timeout=60)
    finally:
        if master.poll() is None:
            master.kill()
        await farm.stop()
    # the kills fell while the farm was working: each master finished builds before it
    # was killed, and the last master still had work to do
    assert len(progress) == 14 and 0 < progress[-1] < len(builds)
    assert progress == sorted(set(progress)), progress

    # every build ended, with its log and files, whose bytes match their hashes
    for build in builds:
        build = await store.builds.get(build)
        assert build.status is BuildStatus.FULLYBUILT and build.log_id is not None
        files = await store.builds.files(build)
        assert {f.filename.rsplit(".", 1)[-1] for f in files} >= {"changes", "deb"}
        for f in files:
            assert hashlib.sha1(await librarian.read_bytes(f.file.id)).hexdigest() == f.file.sha1
            assert f.file.expires is None
    # no build was started twice
    started = collections.Counter(
        c.args[0] for sim in sims for c in sim.history if c.method == "build"
    )
    assert set(started) == {b.cookie for b in builds}
    assert max(started.values()) == 1, [c for c, n in started.items() if n > 1]
    # no file stored twice: one content per hash (the librarian's rule), one permanent alias
    # per result, and whatever a killed master left half-linked is provisional (expires)
    duplicates = await store.db.query(
        "SELECT content, filename FROM libraryfilealias WHERE expires IS NULL GROUP BY 1, 2 HAVING count(*) > 1"
    )
    assert duplicates == []
    stray = await store.db.query(
        "SELECT count(*) FROM libraryfilealias lfa WHERE expires IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM buildfile bf WHERE bf.libraryfile = lfa.id)"
        " AND NOT EXISTS (SELECT 1 FROM build b WHERE b.log = lfa.id)"
        " AND NOT EXISTS (SELECT 1 FROM sourcepackagereleasefile f WHERE f.libraryfile = lfa.id)"
        " AND NOT EXISTS (SELECT 1 FROM distroarchseries d WHERE d.chroot = lfa.id)"
    )
    assert stray[0][0] == 0
