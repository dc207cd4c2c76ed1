"""The master embedded in a trial test: start, build, operate through Deferreds, stop.

Trial fails a test that leaves a DelayedCall, a listening port or a connection behind, so
each test also checks that stopping the master really stops everything.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any, cast

from twisted.internet import defer
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest
from zope.interface import provider

from buildmaster.config import MasterConfig
from buildmaster.enums import BuildQueueStatus, BuildStatus
from buildmaster.service import BuildmasterService, ServiceSettings, StartupError
from buildmaster.store.cluster import free_port
from buildmaster.testing import MasterTestMixin, TestMaster, wait_for


def running_reactor() -> Any:
    """The reactor trial runs the tests in (imported here, not when the module loads: an
    embedder may install another reactor first)."""
    from twisted.internet import reactor

    return reactor


class EmbeddedMasterTests(MasterTestMixin, unittest.TestCase):
    timeout = 120

    async def test_a_queued_build_is_built_collected_and_logged(self) -> None:
        farm = await self.start_master(running_reactor(), builders=1, build_time=0.2)
        self.assertTrue(farm.service.running and farm.master.running)
        build = await farm.queue("hello")
        built = await farm.wait_for_build(build)
        self.assertEqual(built.status, BuildStatus.FULLYBUILT)
        files = [f.filename for f in await farm.store.builds.files(built)]
        self.assertTrue(any(name.endswith(".deb") for name in files), files)
        assert built.log_id is not None and farm.service.librarian is not None
        log = gzip.decompress(await farm.service.librarian.read_bytes(built.log_id))
        self.assertIn(b"hello", log)

    async def test_the_operations_answer_with_deferreds(self) -> None:
        farm = await self.start_master(running_reactor(), builders=1, build_time=0.2)
        builder = await farm.store.builders.getByName("trusted0")
        manual = farm.master.set_manual(builder, True)
        self.assertIsInstance(manual, defer.Deferred)
        self.assertTrue((await manual).manual)

        # the only builder takes no new job: the build waits, and can be worked on
        build = await farm.queue("waiting")
        rescored = farm.master.rescore(build, 9000)
        self.assertIsInstance(rescored, defer.Deferred)
        job = await rescored
        self.assertEqual((job.lastscore, job.status), (9000, BuildQueueStatus.WAITING))
        cancelled = farm.master.cancel(build)
        self.assertIsInstance(cancelled, defer.Deferred)
        self.assertEqual(await cancelled, BuildStatus.CANCELLED)
        retried = farm.master.retry(build)
        self.assertIsInstance(retried, defer.Deferred)
        self.assertEqual((await retried).build_id, build.id)
        resumed = farm.master.resume_waiting()  # nothing was suspended
        self.assertIsInstance(resumed, defer.Deferred)
        self.assertEqual(await resumed, 0)

        # callback style works as well as await
        results: list[Any] = []
        farm.master.set_manual(builder, False).addCallback(results.append)
        await wait_for(running_reactor(), lambda: results, 30, "set_manual to fire")
        self.assertFalse(results[0].manual)
        await farm.master.scan_all()
        await farm.wait_for_build(build)

        # a failure comes back as a failed Deferred, not an exception at the call
        failed = farm.master.retry(build)  # FULLYBUILT: nothing to retry
        self.assertIsInstance(failed, defer.Deferred)
        with self.assertRaises(ValueError):
            await failed

    async def test_a_running_build_is_cancelled_on_its_builder(self) -> None:
        farm = await self.start_master(running_reactor(), builders=1, build_time=3600)
        build = await farm.queue("long")
        await farm.wait_for_build(build, BuildStatus.BUILDING)
        self.assertEqual(await farm.master.cancel(build), BuildStatus.CANCELLING)
        await farm.wait_for_build(build, BuildStatus.CANCELLED)
        sim = farm.sims["trusted0"]
        self.assertIn("abort", [call.method for call in sim.history])

    async def test_virtualized_builders_build_ppa_jobs(self) -> None:
        farm = await self.start_master(running_reactor(), builders=0, virtualized_builders=1)
        build = await farm.queue("ppa-package", ppa=True)
        await farm.wait_for_build(build)
        self.assertIn("build", [call.method for call in farm.sims["virtual0"].history])


class ReadinessTests(unittest.TestCase):
    timeout = 60

    async def test_when_ready_fails_with_the_start_up_error(self) -> None:
        dsn = f"host=127.0.0.1 port={free_port()} user=nobody dbname=x connect_timeout=2"
        service = BuildmasterService(
            running_reactor(),
            ServiceSettings(
                state_dir=Path(self.mktemp()).absolute(),
                dsn=dsn,
                port="tcp:0:interface=127.0.0.1",
            ),
        )
        said: list[str] = []

        @provider(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            if event.get("log_level") is LogLevel.critical:
                said.append(formatEvent(event))

        critical = cast(ILogObserver, observe)
        globalLogPublisher.addObserver(critical)
        self.addCleanup(globalLogPublisher.removeObserver, critical)
        early = service.when_ready()  # asked before the start: waits for it
        self.assertNoResult(early)
        service.startService()
        with self.assertRaises(StartupError) as raised:
            await early
        self.assertIn("cannot connect to the database", str(raised.exception))
        with self.assertRaises(StartupError):
            await service.when_ready()  # asked afterwards: the same answer at once
        await service.stopService()
        # the service logs why it could not start (one line), whether or not anybody waits
        self.assertEqual(said, [f"buildmaster cannot start: {raised.exception}"])

    async def test_when_ready_fires_once_the_master_runs(self) -> None:
        farm = await MasterTestMixin.start_master(self, running_reactor(), builders=0)  # type: ignore[arg-type]
        ready = farm.service.when_ready()
        self.assertIsNone(self.successResultOf(ready))  # fired at once: it runs
        self.assertIsInstance(farm, TestMaster)


class ConfiguredMasterTests(MasterTestMixin, unittest.TestCase):
    timeout = 120

    async def test_a_master_with_its_own_config(self) -> None:
        config = MasterConfig(scan_interval=0.5, vm_resume_command="true %(vm_host)s")
        farm = await self.start_master(running_reactor(), builders=2, config=config, build_time=0.1)
        builds = [await farm.queue() for _ in range(4)]
        for build in builds:
            await farm.wait_for_build(build)
        cookies = {
            c.args[0] for sim in farm.sims.values() for c in sim.history if c.method == "build"
        }
        self.assertEqual(cookies, {b.cookie for b in builds})
