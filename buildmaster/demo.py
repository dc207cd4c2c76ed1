"""``--demo``: the seed's world, a farm of simulated builders, and a steady stream of builds.

So that a newcomer sees the master at work: builds are queued every few seconds (primary
archive and PPA, two architectures), dispatched to simulated builders (trusted and
virtualized), built with a growing log, collected and finished in every final state
(package names choose the outcome), and the builders cleaned and reused. bob and frog of
the sample data point at ports where nothing listens: they are marked failed at start, and a
dead demo builder joins them.
"""

from __future__ import annotations

import io
import random
import tarfile
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from buildmaster.enums import PackagePublishingPocket, SourcePackageFileType, SourcePackageUrgency
from buildmaster.master import BuilddMaster
from buildmaster.sampledata import load_sample_data
from buildmaster.store import DatabaseUnavailable, NotFound, Store
from buildmaster.store.cluster import free_port

__all__ = ["Demo"]

#: (name pattern, builder pattern) -> what the simulated builder does with such a package;
#: flaky packages are given back by some builders and build fine on the others
OUTCOMES = [
    ("fail-*", None, "PACKAGEFAIL"),
    ("dep-*", None, "DEPFAIL"),
    ("chroot-*", None, "CHROOTFAIL"),
    ("flaky-*", "*-0", "GIVENBACK"),
    ("flaky-*", "*-1", "GIVENBACK"),
]
PACKAGES = [
    "hello", "coreutils", "bash", "python3-attrs", "twisted", "nginx", "curl", "zlib",
    "fail-gcc-snapshot", "dep-libfoo", "chroot-broken", "flaky-testsuite", "vim", "tar",
]  # fmt: skip
#: (name, architecture, virtualized) of the demo builders
BUILDERS = [("i386", False), ("amd64", False), ("amd64", True), ("i386", True)]


def _tarball(name: str) -> bytes:
    data = f"a pretend chroot for {name}\n".encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("chroot-autobuild/README")
        info.size = len(data)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Demo:
    _log = Logger()

    def __init__(
        self, reactor: Any, store: Store, librarian: Any, master: BuilddMaster, settings: Any
    ) -> None:
        from slavesim import Farm, Outcome, OutcomeRule

        self.reactor = reactor
        self.store = store
        self.librarian = librarian
        self.master = master
        self.settings = settings
        self.random = random.Random(1)
        rules = [
            OutcomeRule(Outcome[outcome], package=package, builder=builder)
            for package, builder, outcome in OUTCOMES
        ]
        self.farm = Farm(reactor, settings.state_dir / "slavesim", build_time=6.0, rules=rules)
        self._counter = 0
        self._queue_loop = task.LoopingCall(self._queue_one)
        self._queue_loop.clock = reactor
        self._summary_loop = task.LoopingCall(self._summary)
        self._summary_loop.clock = reactor
        self._loops: list[defer.Deferred[Any]] = []

    async def _file(self, name: str, content: bytes, content_type: str) -> int:
        return int(
            await self.librarian.addFile(name, len(content), io.BytesIO(content), content_type)
        )

    async def prepare(self) -> None:
        """Sample data (once), chroots, real source files, and the simulated builders."""
        store = self.store
        try:
            ubuntu = await store.distributions.getByName("ubuntu")
            fresh = False
        except NotFound:
            await load_sample_data(store)
            ubuntu = await store.distributions.getByName("ubuntu")
            fresh = True
            self._log.info("Loaded the sample data (ubuntu/hoary, bob, frog, cprov's PPA)")
        hoary = await store.distributions.getSeries(ubuntu, "hoary")
        self.hoary = hoary
        self.archs = {}
        for arch in ("i386", "amd64"):
            das = await store.distributions.get_arch_series(hoary, arch)
            if das.chroot_id is None:
                chroot = await self._file(
                    f"chroot-ubuntu-hoary-{arch}.tar.gz", _tarball(arch), "application/x-gzip"
                )
                das = await self.master.addOrUpdateChroot(das, chroot)
            self.archs[arch] = das
            self.master.addDistroArchSeries(das)
        if fresh:
            # the sample data's .dsc files are not in any librarian: give them real ones
            for job_id in (1, 2):
                build = await store.builds.get((await store.queue.get(job_id)).build_id)
                for f in await store.sources.files(build.sourcepackagerelease_id):
                    real = await self._file(
                        f.file.filename, f"Source: {f.file.filename}\n".encode(), "text/plain"
                    )
                    await store.sources.replace_file(build.sourcepackagerelease_id, f.file.id, real)
        self.primary = await store.archives.get_primary(ubuntu)
        self.ppa = await store.archives.getPPAByName(await store.persons.getByName("cprov"))

        processors = {p.name: p for p in await store.processors.all()}
        by_arch = {"i386": processors["386"], "amd64": processors["amd64"]}
        count = max(self.settings.demo_builders, len(BUILDERS))
        for i in range(count):
            arch, virtualized = BUILDERS[i % len(BUILDERS)]
            name = f"demo-{'ppa' if virtualized else 'main'}-{arch}-{i}"
            sim = await self.farm.start_builder(name, (arch,), port=0)
            await self._register(name, sim.url, by_arch[arch], virtualized)
        # a builder that is down: connections are refused
        await self._register(
            "demo-dead", f"http://127.0.0.1:{free_port()}/", by_arch["i386"], False
        )
        for das in self.archs.values():
            await self.master.setupBuilders(das)
        self._log.info("Demo farm: {count} simulated builders, one dead builder", count=count)

    async def _register(self, name: str, url: str, processor: Any, virtualized: bool) -> None:
        try:
            builder = await self.store.builders.getByName(name)
            await self.store.builders.set_url(builder, url)
        except NotFound:
            await self.store.builders.new(
                name,
                url,
                [processor],
                virtualized=virtualized,
                vm_host=f"{name}.vm" if virtualized else None,
            )

    def start_queueing(self) -> None:
        self._loops = [
            self._queue_loop.start(self.settings.demo_queue_interval, now=True),
            self._summary_loop.start(10.0, now=False),
        ]

    async def stop_queueing(self) -> None:
        for loop in (self._queue_loop, self._summary_loop):
            if loop.running:
                loop.stop()
        await defer.DeferredList(self._loops, consumeErrors=True)

    async def stop(self) -> None:
        await self.farm.stop()

    def _queue_one(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._safe_queue_one())

    async def _safe_queue_one(self) -> None:
        try:
            await self._queue()
        except DatabaseUnavailable as e:
            if not self.store.db.explains(e):  # an outage is logged once, by the pool
                self._log.warn("The demo could not queue a build: {error}", error=e)
        except Exception:
            self._log.failure("The demo could not queue a build")

    async def _queue(self) -> None:
        self._counter += 1
        name = self.random.choice(PACKAGES)
        version = f"1.{self._counter}-1"
        arch = self.random.choice(list(self.archs))
        archive = self.ppa if self.random.random() < 0.3 else self.primary
        pocket = self.random.choice(
            [
                PackagePublishingPocket.RELEASE,
                PackagePublishingPocket.UPDATES,
                PackagePublishingPocket.SECURITY,
            ]
        )
        dsc = f"Format: 3.0 (native)\nSource: {name}\nVersion: {version}\n".encode()
        dsc_id = await self._file(f"{name}_{version}.dsc", dsc, "text/x-debian-source-package")
        spr = await self.store.sources.new(
            name,
            version,
            self.hoary,
            component=self.random.choice(["main", "main", "universe", "restricted"]),
            urgency=self.random.choice(list(SourcePackageUrgency)),
            files=[(dsc_id, SourcePackageFileType.DSC)],
        )
        build = await self.store.builds.createBuild(spr, self.archs[arch], pocket, archive)
        job = await self.store.queue.createBuildQueueEntry(build)
        self._log.info(
            "Queued {name} {version} for {arch} in {archive} (score {score})",
            name=name,
            version=version,
            arch=arch,
            archive=archive.reference,
            score=job.lastscore,
        )

    def _summary(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._safe_summary())

    async def _safe_summary(self) -> None:
        try:
            rows = await self.store.db.query(
                "SELECT buildstate, count(*) FROM build GROUP BY 1 ORDER BY 1"
            )
            from buildmaster.enums import BuildStatus

            states = ", ".join(f"{BuildStatus(s).name} {n}" for s, n in rows)
            failed = await self.store.db.query(
                "SELECT name FROM builder WHERE NOT builderok ORDER BY name"
            )
            self._log.info(
                "Builds: {states}. Failed builders: {failed}",
                states=states,
                failed=", ".join(r[0] for r in failed) or "none",
            )
            tails = await self.store.db.query(
                "SELECT q.build, br.name, q.logtail FROM buildqueue q JOIN builder br ON br.id = q.builder"
                " WHERE q.logtail IS NOT NULL ORDER BY q.date_started LIMIT 3"
            )
            for build_id, builder, tail in tails:
                lines = [line for line in tail.splitlines() if line.strip()]
                self._log.info(
                    "  PACKAGEBUILD-{build} on {builder}: ...{line}",
                    build=build_id,
                    builder=builder,
                    line=lines[-1][-100:] if lines else "",
                )
        except DatabaseUnavailable as e:
            if not self.store.db.explains(e):
                self._log.warn("The demo summary failed: {error}", error=e)
        except Exception:
            self._log.failure("The demo summary failed")
