"""The simulated builder's state machine, on a Clock: no reactor, no sockets."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any
from xmlrpc.client import Binary

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from slavesim import Outcome, OutcomeRule, Settings, SimulatedBuilder
from slavesim.builder import LOGTAIL_SIZE
from slavesim.cache import FileCache
from slavesim.testing import MemoryFetcher
from slavesim.wire import BadCall, WrongState

IDLE = "BuilderStatus.IDLE"
BUILDING = "BuilderStatus.BUILDING"
ABORTING = "BuilderStatus.ABORTING"
WAITING = "BuilderStatus.WAITING"
ARGS = {
    "distribution": "ubuntu",
    "series": "hoary",
    "suite": "hoary-updates",
    "ogrecomponent": "main",
    "arch_tag": "i386",
    "archive_purpose": "PRIMARY",
    "archives": ["deb http://archive.example/ubuntu hoary main"],
    "archive_private": False,
    "fast_cleanup": True,
    "build_url": "https://buildmaster.example/builds/1",
    "trusted_keys": [],
    "build_debug_symbols": False,
}


class BuilderTestCase(SynchronousTestCase):
    """A builder 'bob' (amd64, i386) on a Clock; builds take 10 s, aborts 2 s."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.fetcher = MemoryFetcher()
        self.builder = self.make_builder()
        self.chroot = self.builder.cache.store(b"a chroot tarball")
        self.dsc = self.builder.cache.store(b"a dsc")
        self.orig = self.builder.cache.store(b"an orig tarball")

    def tearDown(self) -> None:
        # Every test leaves the clock without pending calls.
        self.builder.shutdown()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def make_builder(self, name: str = "bob", **kwargs: Any) -> SimulatedBuilder:
        directory = tempfile.mkdtemp(prefix="slavesim-test-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        cache = FileCache(Path(directory), self.fetcher, max_size=1 << 20)
        kwargs.setdefault("settings", Settings(build_time=10.0, abort_time=2.0))
        return SimulatedBuilder(self.clock, name, ("amd64", "i386"), cache, **kwargs)

    def build(
        self,
        build_id: str = "PACKAGEBUILD-1",
        package: str = "hello",
        builder: SimulatedBuilder | None = None,
        **overrides: Any,
    ) -> object:
        builder = self.builder if builder is None else builder
        for data in (b"a chroot tarball", b"a dsc", b"an orig tarball"):
            builder.cache.store(data)
        filemap = {f"{package}_2.10-1.dsc": self.dsc, f"{package}_2.10.orig.tar.gz": self.orig}
        args: dict[str, Any] = {
            "build_id": build_id,
            "builder_type": "binarypackage",
            "chroot": self.chroot,
            "filemap": filemap,
            "args": dict(ARGS),
        }
        args.update(overrides)
        return builder.call(
            "build",
            (args["build_id"], args["builder_type"], args["chroot"], args["filemap"], args["args"]),
        )

    def status(self) -> dict[str, Any]:
        status = self.builder.call("status", ())
        assert isinstance(status, dict)
        return status


class IdleTests(BuilderTestCase):
    def test_idle_status_has_only_status_and_version(self) -> None:
        self.assertEqual(self.status(), {"builder_status": IDLE, "builder_version": "slavesim-0.1"})

    def test_no_version_no_version_key(self) -> None:
        self.builder = self.make_builder(settings=Settings(version=None))
        self.assertEqual(self.status(), {"builder_status": IDLE})

    def test_info_reports_protocol_first_arch_and_builder_types(self) -> None:
        self.assertEqual(self.builder.call("info", ()), ["1.0", "amd64", ["binarypackage"]])

    def test_echo_returns_its_arguments_as_a_list(self) -> None:
        self.assertEqual(self.builder.call("echo", (1, "two", [3])), [1, "two", [3]])
        self.assertEqual(self.builder.call("echo", ()), [])

    def test_abort_and_clean_are_refused_when_idle(self) -> None:
        for method in ("abort", "clean"):
            self.assertRaises(WrongState, self.builder.call, method, ())
        self.assertEqual(self.status()["builder_status"], IDLE)

    def test_unknown_method(self) -> None:
        self.assertRaises(KeyError, self.builder.call, "proxy_info", ())

    def test_no_build_log_when_idle(self) -> None:
        self.assertIsNone(self.builder.log_path())


class BuildTests(BuilderTestCase):
    def test_build_answers_building_with_the_cookie(self) -> None:
        self.assertEqual(self.build(), [BUILDING, "PACKAGEBUILD-1"])
        status = self.status()
        self.assertEqual(set(status), {"builder_status", "builder_version", "build_id", "logtail"})
        self.assertEqual(status["builder_status"], BUILDING)
        self.assertEqual(status["build_id"], "PACKAGEBUILD-1")
        self.assertIsInstance(status["logtail"], Binary)

    def test_log_grows_between_polls_and_tail_is_at_most_2_kib(self) -> None:
        self.build()
        tails = []
        for _ in range(9):
            tails.append(self.status()["logtail"].data)
            self.clock.advance(1)
        self.assertEqual(len(set(tails)), len(tails), "the log tail changed at every poll")
        self.assertTrue(all(len(tail) <= LOGTAIL_SIZE for tail in tails))
        self.assertEqual(len(tails[-1]), LOGTAIL_SIZE, "a long log is cut to 2 KiB")
        log_path = self.builder.log_path()
        assert log_path is not None
        full = Path(log_path).read_bytes()
        self.assertGreater(len(full), LOGTAIL_SIZE)
        self.assertEqual(self.status()["logtail"].data, full[-LOGTAIL_SIZE:])
        self.assertIn(b"https://buildmaster.example/builds/1", full)

    def test_build_takes_the_build_time_then_waits_with_ok(self) -> None:
        self.build()
        self.clock.advance(9.9)
        self.assertEqual(self.status()["builder_status"], BUILDING)
        self.clock.advance(0.1)
        status = self.status()
        self.assertEqual(status["builder_status"], WAITING)
        self.assertEqual(status["build_status"], "BuildStatus.OK")
        self.assertEqual(status["build_id"], "PACKAGEBUILD-1")
        self.assertEqual(status["dependencies"], "")
        self.assertEqual(
            sorted(status["filemap"]), ["hello_2.10-1_i386.changes", "hello_2.10-1_i386.deb"]
        )
        self.assertNotIn("logtail", status)

    def test_results_are_in_the_cache_under_their_sha1(self) -> None:
        self.build()
        self.clock.advance(10)
        filemap = self.status()["filemap"]
        for sha1 in filemap.values():
            data = self.builder.cache.path(sha1).read_bytes()
            self.assertEqual(hashlib.sha1(data).hexdigest(), sha1)
        deb = self.builder.cache.path(filemap["hello_2.10-1_i386.deb"]).read_bytes()
        changes = self.builder.cache.path(filemap["hello_2.10-1_i386.changes"]).read_bytes()
        self.assertTrue(deb.startswith(b"!<arch>\ndebian-binary"))
        self.assertIn(
            f" {hashlib.sha1(deb).hexdigest()} {len(deb)} hello_2.10-1_i386.deb\n".encode(),
            changes,
        )
        self.assertIn(b"Distribution: hoary-updates\n", changes)

    def test_results_are_deterministic(self) -> None:
        other = self.make_builder("bob")
        self.build()
        self.build(builder=other)
        self.clock.advance(10)
        self.assertEqual(self.status()["filemap"], other.status()["filemap"])

    def test_arch_defaults_to_the_builders_first_tag(self) -> None:
        args = dict(ARGS)
        del args["arch_tag"]
        self.build(args=args)
        self.clock.advance(10)
        self.assertIn("hello_2.10-1_amd64.deb", self.status()["filemap"])

    def test_clean_removes_results_and_log_and_goes_idle(self) -> None:
        self.build()
        self.clock.advance(10)
        filemap = self.status()["filemap"]
        self.assertEqual(self.builder.call("clean", ()), IDLE)
        self.assertEqual(self.status(), {"builder_status": IDLE, "builder_version": "slavesim-0.1"})
        for sha1 in filemap.values():
            self.assertFalse(self.builder.cache.has(sha1))
        self.assertIsNone(self.builder.log_path())
        self.assertFalse(self.builder.cache.log_path.exists())
        self.assertTrue(self.builder.cache.has(self.chroot), "inputs stay cached")

    def test_a_second_build_after_clean(self) -> None:
        self.build()
        self.clock.advance(10)
        self.builder.call("clean", ())
        self.assertEqual(self.build("PACKAGEBUILD-2"), [BUILDING, "PACKAGEBUILD-2"])
        self.assertEqual(self.status()["build_id"], "PACKAGEBUILD-2")
        log_path = self.builder.log_path()
        assert log_path is not None
        self.assertNotIn(b"PACKAGEBUILD-1", Path(log_path).read_bytes())

    def test_clean_is_refused_while_building(self) -> None:
        self.build()
        self.assertRaises(WrongState, self.builder.call, "clean", ())
        self.assertEqual(self.status()["builder_status"], BUILDING)


class OutcomeTests(BuilderTestCase):
    def finish(self, rule: OutcomeRule) -> dict[str, Any]:
        self.builder.rules.append(rule)
        self.build()
        self.clock.advance(rule.duration or 10)
        return self.status()

    def test_packagefail_has_an_empty_filemap(self) -> None:
        status = self.finish(OutcomeRule(Outcome.PACKAGEFAIL, duration=3))
        self.assertEqual(status["build_status"], "BuildStatus.PACKAGEFAIL")
        self.assertEqual(status["filemap"], {})
        self.assertEqual(status["dependencies"], "")

    def test_depfail_reports_the_dependencies(self) -> None:
        status = self.finish(
            OutcomeRule(Outcome.DEPFAIL, duration=3, dependencies="libfoo (>= 1.0)")
        )
        self.assertEqual(status["build_status"], "BuildStatus.DEPFAIL")
        self.assertEqual(status["dependencies"], "libfoo (>= 1.0)")
        self.assertEqual(status["filemap"], {})

    def test_other_failures_have_no_filemap_nor_dependencies(self) -> None:
        for outcome in (Outcome.CHROOTFAIL, Outcome.BUILDERFAIL, Outcome.GIVENBACK):
            self.builder.rules[:] = []
            status = self.finish(OutcomeRule(outcome, duration=1))
            self.assertEqual(
                status,
                {
                    "builder_status": WAITING,
                    "builder_version": "slavesim-0.1",
                    "build_status": outcome.value,
                    "build_id": "PACKAGEBUILD-1",
                },
            )
            self.builder.call("clean", ())

    def test_rule_duration_sets_the_build_time(self) -> None:
        self.builder.rules.append(OutcomeRule(Outcome.OK, duration=2.5))
        self.build()
        self.clock.advance(2.4)
        self.assertEqual(self.status()["builder_status"], BUILDING)
        self.clock.advance(0.1)
        self.assertEqual(self.status()["builder_status"], WAITING)

    def test_builder_rules_win_over_shared_rules(self) -> None:
        shared = [OutcomeRule(Outcome.GIVENBACK)]
        self.builder = self.make_builder(
            rules=[OutcomeRule(Outcome.CHROOTFAIL, package="hello")], shared_rules=shared
        )
        self.build()
        self.clock.advance(10)
        self.assertEqual(self.status()["build_status"], "BuildStatus.CHROOTFAIL")
        self.builder.call("clean", ())
        self.build(package="world")
        self.clock.advance(10)
        self.assertEqual(self.status()["build_status"], "BuildStatus.GIVENBACK")

    def test_builder_pattern_in_shared_rules(self) -> None:
        shared = [OutcomeRule(Outcome.BUILDERFAIL, builder="b*")]
        self.builder = self.make_builder(shared_rules=shared)
        alice = self.make_builder("alice", shared_rules=shared)
        self.build()
        self.build(builder=alice)
        self.clock.advance(10)
        self.assertEqual(self.status()["build_status"], "BuildStatus.BUILDERFAIL")
        self.assertEqual(alice.status()["build_status"], "BuildStatus.OK")

    def test_changing_settings_applies_to_the_next_build(self) -> None:
        self.builder.settings.build_time = 1.0
        self.build()
        self.clock.advance(1)
        self.assertEqual(self.status()["builder_status"], WAITING)

    def test_zero_duration_still_reports_building_first(self) -> None:
        self.builder.rules.append(OutcomeRule(Outcome.OK, duration=0))
        self.assertEqual(self.build(), [BUILDING, "PACKAGEBUILD-1"])
        self.assertEqual(self.status()["builder_status"], BUILDING)
        self.clock.advance(0)
        self.assertEqual(self.status()["builder_status"], WAITING)


class AbortTests(BuilderTestCase):
    def test_abort_then_aborted(self) -> None:
        self.build()
        self.clock.advance(3)
        self.assertEqual(self.builder.call("abort", ()), ABORTING)
        status = self.status()
        self.assertEqual(
            status,
            {
                "builder_status": ABORTING,
                "builder_version": "slavesim-0.1",
                "build_id": "PACKAGEBUILD-1",
            },
        )
        self.clock.advance(1.9)
        self.assertEqual(self.status()["builder_status"], ABORTING)
        self.clock.advance(0.1)
        status = self.status()
        self.assertEqual(status["builder_status"], WAITING)
        self.assertEqual(status["build_status"], "BuildStatus.ABORTED")
        self.assertNotIn("filemap", status)
        self.assertEqual(self.builder.call("clean", ()), IDLE)

    def test_abort_while_aborting_is_accepted(self) -> None:
        self.build()
        self.builder.call("abort", ())
        self.assertEqual(self.builder.call("abort", ()), ABORTING)

    def test_abort_when_waiting_is_refused(self) -> None:
        self.build()
        self.clock.advance(10)
        self.assertRaises(WrongState, self.builder.call, "abort", ())
        self.assertEqual(self.status()["build_status"], "BuildStatus.OK")

    def test_aborted_build_makes_no_results(self) -> None:
        before = self.builder.cache.files()
        self.build()
        self.builder.call("abort", ())
        self.clock.advance(20)
        self.assertEqual(self.builder.cache.files(), before)


class BuildRefusalTests(BuilderTestCase):
    def test_unknown_builder_type(self) -> None:
        self.assertEqual(
            self.build(builder_type="snap"),
            ["BuilderStatus.UNKNOWNBUILDER", "snap not in ['binarypackage']"],
        )
        self.assertEqual(self.status()["builder_status"], IDLE)

    def test_chroot_not_in_cache(self) -> None:
        missing = "f" * 40
        reply = self.build(chroot=missing)
        assert isinstance(reply, list)
        self.assertEqual(reply[0], "BuilderStatus.UNKNOWNSUM")
        self.assertIn(missing, reply[1])
        self.assertEqual(self.status()["builder_status"], IDLE)

    def test_file_not_in_cache(self) -> None:
        missing = "e" * 40
        reply = self.build(filemap={"hello_1.dsc": self.dsc, "hello_1.tar.gz": missing})
        assert isinstance(reply, list)
        self.assertEqual(reply[0], "BuilderStatus.UNKNOWNSUM")
        self.assertIn(missing, reply[1])
        self.assertEqual(self.status()["builder_status"], IDLE)

    def test_filemap_without_dsc(self) -> None:
        self.assertRaises(BadCall, self.build, filemap={"hello_1.tar.gz": self.orig})
        self.assertEqual(self.status()["builder_status"], IDLE)

    def test_missing_required_args(self) -> None:
        for key in ("distribution", "series", "suite", "ogrecomponent"):
            args = dict(ARGS)
            del args[key]
            self.assertRaises(BadCall, self.build, args=args)
        self.assertEqual(self.status()["builder_status"], IDLE)

    def test_busy_build_is_refused_but_overwrites_the_build_id(self) -> None:
        self.build("PACKAGEBUILD-1")
        self.assertRaises(WrongState, self.build, "PACKAGEBUILD-2")
        status = self.status()
        self.assertEqual(status["builder_status"], BUILDING)
        self.assertEqual(status["build_id"], "PACKAGEBUILD-2", "the real daemon's quirk")
        self.clock.advance(10)
        self.assertEqual(self.status()["build_id"], "PACKAGEBUILD-2")
        self.assertIn("hello_2.10-1_i386.deb", self.status()["filemap"])

    def test_busy_build_without_the_quirk(self) -> None:
        self.builder.faults.overwrite_build_id_on_rejected_build = False
        self.build("PACKAGEBUILD-1")
        self.clock.advance(10)
        self.assertRaises(WrongState, self.build, "PACKAGEBUILD-2")
        self.assertEqual(self.status()["build_id"], "PACKAGEBUILD-1")

    def test_unknown_sum_comes_before_the_busy_check(self) -> None:
        self.build("PACKAGEBUILD-1")
        reply = self.build("PACKAGEBUILD-2", chroot="d" * 40)
        assert isinstance(reply, list)
        self.assertEqual(reply[0], "BuilderStatus.UNKNOWNSUM")
        self.assertEqual(self.status()["build_id"], "PACKAGEBUILD-1")


def _snapshot(builder: SimulatedBuilder) -> tuple[object, ...]:
    return (
        dict(builder.status()),
        builder.cache.files(),
        builder.log_path(),
        builder.cache.log_path.exists(),
    )


_wire_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**31), 2**31 - 1)
    | st.text(max_size=50)
    | st.sampled_from(["../../etc/passwd", "/etc/passwd", "A" * 40, "a" * 39, ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=8,
)


class MalformedCallTests(BuilderTestCase):
    """Any malformed call is refused with BadCall and changes nothing."""

    def assert_refused_unchanged(self, method: str, args: tuple[object, ...]) -> None:
        before = _snapshot(self.builder)
        self.assertRaises(BadCall, self.builder.call, method, args)
        self.assertEqual(_snapshot(self.builder), before)

    def test_wrong_argument_counts(self) -> None:
        self.assert_refused_unchanged("status", (1,))
        self.assert_refused_unchanged("info", ("x",))
        self.assert_refused_unchanged("abort", (None,))
        self.assert_refused_unchanged("clean", (1, 2))
        self.assert_refused_unchanged("ensurepresent", (self.chroot, None, None))
        self.assert_refused_unchanged("build", ("PACKAGEBUILD-1", "binarypackage"))

    def test_bad_sha1s(self) -> None:
        for sha1 in ("../../etc/passwd", "A" * 40, "a" * 41, "g" * 40, "", 7, None):
            self.assert_refused_unchanged("ensurepresent", (sha1, None, None, None))
            self.assert_refused_unchanged(
                "build",
                ("B-1", "binarypackage", sha1, {"h_1.dsc": self.dsc}, dict(ARGS)),
            )
            self.assert_refused_unchanged(
                "build",
                ("B-1", "binarypackage", self.chroot, {"h_1.dsc": sha1}, dict(ARGS)),
            )

    def test_path_like_file_names(self) -> None:
        for name in ("../h_1.dsc", "a/h_1.dsc", "..", ".", "", "h\x00_1.dsc"):
            self.assert_refused_unchanged(
                "build", ("B-1", "binarypackage", self.chroot, {name: self.dsc}, dict(ARGS))
            )

    def test_wrong_types(self) -> None:
        good: list[object] = ["B-1", "binarypackage", self.chroot, {"h_1.dsc": self.dsc}, ARGS]
        bad_values: list[tuple[int, object]] = [(0, 5), (0, ""), (1, None), (3, ["x.dsc"])]
        for index, bad in [*bad_values, (4, "args")]:
            args = list(good)
            args[index] = bad
            self.assert_refused_unchanged("build", tuple(args))
        self.assert_refused_unchanged("ensurepresent", (self.chroot, 5, None, None))
        self.assert_refused_unchanged("ensurepresent", (self.chroot, "http://x/", 1, None))

    def test_malformed_calls_while_building_change_nothing(self) -> None:
        self.build()
        self.clock.advance(3)
        self.assert_refused_unchanged(
            "build", ("B-2", "binarypackage", self.chroot, {"../h_1.dsc": self.dsc}, {})
        )
        self.assert_refused_unchanged("clean", ())
        self.assert_refused_unchanged("abort", (1,))

    @settings(max_examples=150, deadline=None)
    @given(
        method=st.sampled_from(["ensurepresent", "build", "abort", "clean", "status", "info"]),
        args=st.lists(_wire_values, max_size=6).map(tuple),
    )
    def test_fuzzed_calls_are_answered_or_refused_without_change(
        self, method: str, args: tuple[object, ...]
    ) -> None:
        before = _snapshot(self.builder)
        try:
            result = self.builder.call(method, args)
        except BadCall:
            self.assertEqual(_snapshot(self.builder), before)
            return
        # Only well-formed calls get here; none of them can start a build (no .dsc cached
        # under a fuzzed name) or download (the fake fetcher has no files).
        if method == "ensurepresent":
            assert isinstance(result, Deferred)
            self.assertIn(self.successResultOf(result)[0], (True, False))
        self.assertEqual(self.builder.state, IDLE)


class FaultTests(BuilderTestCase):
    def test_forget_build_reports_idle_once_and_loses_the_build(self) -> None:
        self.build()
        self.clock.advance(2)
        self.builder.faults.forget_build = True
        self.assertEqual(self.status(), {"builder_status": IDLE, "builder_version": "slavesim-0.1"})
        self.assertFalse(self.builder.faults.forget_build)
        self.clock.advance(20)
        self.assertEqual(self.status()["builder_status"], IDLE, "the build is really gone")
        self.assertIsNone(self.builder.log_path())
        self.assertEqual(self.build("PACKAGEBUILD-2"), [BUILDING, "PACKAGEBUILD-2"])

    def test_forget_build_waits_for_a_build(self) -> None:
        self.builder.faults.forget_build = True
        self.status()
        self.assertTrue(self.builder.faults.forget_build)

    def test_wrong_cookie(self) -> None:
        self.builder.faults.wrong_cookie = "PACKAGEBUILD-999"
        self.assertNotIn("build_id", self.status())
        self.build()
        self.assertEqual(self.status()["build_id"], "PACKAGEBUILD-999")
        self.builder.call("abort", ())
        self.assertEqual(self.status()["build_id"], "PACKAGEBUILD-999")
        self.clock.advance(2)
        self.assertEqual(self.status()["build_id"], "PACKAGEBUILD-999")
        self.builder.faults.wrong_cookie = None
        self.assertEqual(self.status()["build_id"], "PACKAGEBUILD-1")

    def test_crash_mid_build(self) -> None:
        crashes: list[str] = []
        self.builder.on_crash = lambda: crashes.append(self.builder.state)
        self.builder.faults.crash_mid_build = True
        self.build()
        self.clock.advance(4.9)
        self.assertEqual(crashes, [])
        self.assertEqual(self.status()["builder_status"], BUILDING)
        self.clock.advance(0.1)
        self.assertEqual(crashes, [IDLE])
        self.assertFalse(self.builder.faults.crash_mid_build, "only the next build crashes")
        self.assertIsNone(self.builder.build_id)
        self.assertIsNone(self.builder.log_path())
        self.assertEqual(self.status()["builder_status"], IDLE)

    def test_crash_rearmed_when_the_build_ends_before_half_way(self) -> None:
        self.builder.faults.crash_mid_build = True
        self.build()
        self.builder.call("abort", ())
        self.clock.advance(2)
        self.assertEqual(self.status()["build_status"], "BuildStatus.ABORTED")
        self.assertTrue(self.builder.faults.crash_mid_build)

    def test_reset_loses_everything(self) -> None:
        self.build()
        self.builder.reset()
        self.assertEqual(self.status()["builder_status"], IDLE)
        self.assertIsNone(self.builder.build_id)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RealDaemonQuirkTests(BuilderTestCase):
    """The behaviours of the real daemon that recovery must survive, switched on."""

    def crash_during(self, build_id: str = "PACKAGEBUILD-1") -> None:
        self.assertEqual(self.build(build_id), [BUILDING, build_id])
        self.clock.advance(3)
        self.builder.reset()  # the daemon restarts: its state is gone, its files are not
        self.assertEqual(self.status()["builder_status"], IDLE)

    def test_a_build_directory_that_outlived_a_crash_faults_the_same_build(self) -> None:
        self.builder.faults.leftover_build_dirs = True
        self.crash_during()
        self.assertEqual(self.builder.build_dirs, {"PACKAGEBUILD-1"})
        self.assertRaises(BadCall, self.build)
        status = self.status()
        self.assertEqual(
            (status["builder_status"], status["build_id"]), (BUILDING, "PACKAGEBUILD-1")
        )
        self.assertFalse(self.builder.running, "nothing runs")
        self.clock.advance(60)
        self.assertEqual(self.status()["builder_status"], BUILDING, "and nothing ends")
        self.assertIsNone(self.builder.log_path())

    def test_other_builds_are_not_concerned(self) -> None:
        self.builder.faults.leftover_build_dirs = True
        self.crash_during()
        self.assertEqual(self.build("PACKAGEBUILD-2"), [BUILDING, "PACKAGEBUILD-2"])
        self.assertTrue(self.builder.running)

    def test_without_the_quirk_the_same_build_starts_again(self) -> None:
        self.crash_during()
        self.assertEqual(self.build(), [BUILDING, "PACKAGEBUILD-1"])
        self.assertTrue(self.builder.running)

    def test_clean_removes_the_build_directory(self) -> None:
        self.builder.faults.leftover_build_dirs = True
        self.build()
        self.clock.advance(10)
        self.builder.call("clean", ())
        self.assertEqual(self.builder.build_dirs, frozenset())
        self.assertEqual(self.build(), [BUILDING, "PACKAGEBUILD-1"])

    def test_a_new_machine_has_no_build_directory(self) -> None:
        self.builder.faults.leftover_build_dirs = True
        self.crash_during()
        self.builder.new_machine()
        self.assertEqual(self.builder.build_dirs, frozenset())
        self.assertFalse(self.builder.cache.has(self.chroot), "nor any cached file")
        self.assertEqual(self.build(), [BUILDING, "PACKAGEBUILD-1"])

    def test_an_abort_of_nothing_sticks_in_aborting_until_a_restart(self) -> None:
        self.builder.faults.leftover_build_dirs = True
        self.builder.faults.abort_sticks = True
        self.crash_during()
        self.assertRaises(BadCall, self.build)
        self.assertEqual(self.builder.call("abort", ()), ABORTING)
        self.clock.advance(3600)
        status = self.status()
        self.assertEqual(
            (status["builder_status"], status["build_id"]), (ABORTING, "PACKAGEBUILD-1")
        )
        self.assertEqual(self.builder.call("abort", ()), ABORTING)
        self.builder.reset()
        self.assertEqual(self.status()["builder_status"], IDLE)

    def test_without_the_quirk_an_abort_of_nothing_ends_aborted(self) -> None:
        self.builder.faults.leftover_build_dirs = True
        self.crash_during()
        self.assertRaises(BadCall, self.build)
        self.assertEqual(self.builder.call("abort", ()), ABORTING)
        self.clock.advance(2)
        status = self.status()
        self.assertEqual(
            (status["builder_status"], status["build_status"]), (WAITING, "BuildStatus.ABORTED")
        )
        self.assertEqual(self.builder.call("clean", ()), IDLE)
        self.assertEqual(self.builder.build_dirs, frozenset(), "the clean-up removed it")

    def test_an_unkillable_build_ends_builderfail_after_120_seconds(self) -> None:
        self.builder.faults.unkillable_builds = True
        self.build()
        self.clock.advance(1)
        self.assertEqual(self.builder.call("abort", ()), ABORTING)
        self.clock.advance(119.9)
        self.assertEqual(self.status()["builder_status"], ABORTING)
        self.clock.advance(0.1)
        status = self.status()
        self.assertEqual(
            (status["builder_status"], status["build_status"]), (WAITING, "BuildStatus.BUILDERFAIL")
        )
        self.assertNotIn("filemap", status)

    def test_like_the_real_daemon_switches_every_quirk_on(self) -> None:
        faults = self.builder.faults
        faults.like_the_real_daemon()
        self.assertTrue(
            faults.leftover_build_dirs
            and faults.abort_sticks
            and faults.unkillable_builds
            and faults.blocking_downloads
            and faults.overwrite_build_id_on_rejected_build
        )
        faults.clear()
        self.assertFalse(faults.leftover_build_dirs or faults.abort_sticks)
        self.assertFalse(faults.unkillable_builds or faults.blocking_downloads)

    def test_downloads_in_progress_are_known(self) -> None:
        data = b"slow file"
        sha1 = hashlib.sha1(data).hexdigest()
        self.fetcher.files["http://librarian/slow"] = data
        self.fetcher.paused = True
        d = self.builder.call("ensurepresent", (sha1, "http://librarian/slow", None, None))
        over = self.builder.downloads_over()
        self.assertTrue(self.builder.downloading)
        self.assertNoResult(over)
        self.fetcher.release()
        self.assertEqual(self.successResultOf(d), [True, "Download"])  # type: ignore[arg-type]
        self.assertIsNone(self.successResultOf(over))
        self.assertFalse(self.builder.downloading)


class EnsurePresentTests(BuilderTestCase):
    def ensure(self, sha1: str, url: str | None, user: str | None = None) -> object:
        d = self.builder.call("ensurepresent", (sha1, url, user, None if user is None else "pw"))
        assert not isinstance(d, list)
        return self.successResultOf(d)  # type: ignore[arg-type]

    def test_presence_check_without_url(self) -> None:
        self.assertEqual(self.ensure(self.chroot, None), [True, "No URL"])
        self.assertEqual(self.ensure("0" * 40, None), [False, "No URL"])

    def test_download_then_cache(self) -> None:
        data = b"new file"
        sha1 = hashlib.sha1(data).hexdigest()
        self.fetcher.files["http://librarian/f"] = data
        self.assertEqual(self.ensure(sha1, "http://librarian/f"), [True, "Download"])
        self.assertEqual(self.ensure(sha1, "http://librarian/f"), [True, "Cache"])
        self.assertEqual(self.builder.cache.path(sha1).read_bytes(), data)
        self.assertEqual(len(self.fetcher.requests), 1)

    def test_credentials_are_passed_on(self) -> None:
        data = b"private"
        sha1 = hashlib.sha1(data).hexdigest()
        self.fetcher.files["http://librarian/p"] = data
        self.fetcher.credentials["http://librarian/p"] = ("buildd", "pw")
        self.assertEqual(self.ensure(sha1, "http://librarian/p", "buildd"), [True, "Download"])
        self.assertEqual(self.fetcher.requests, [("http://librarian/p", "buildd", "pw")])
