"""The simulated builder: the protocol's state machine, on an injected clock, no sockets.

:class:`SimulatedBuilder` answers every call of the builder protocol with the values the
real daemon gives (see docs/protocol.md) and runs scripted builds:

    IDLE -build-> BUILDING -(finished)-> WAITING -clean-> IDLE
    BUILDING -abort-> ABORTING -(abort_time)-> WAITING (BuildStatus.ABORTED)

and the real daemon's quirks when they are switched on (:class:`slavesim.faults.Faults`):
a build's directory that outlives a crash makes ``build()`` of that build id leave the
builder BUILDING with nothing running (after a Fault); ``abort()`` of nothing then sticks in
ABORTING; an unkillable build ends WAITING with BUILDERFAIL 120 s after its abort.

While BUILDING the log grows in chunks driven by the clock (``logtail`` changes between
polls); the outcome and duration come from the outcome rules (:mod:`slavesim.outcomes`).
The faults in :class:`slavesim.faults.Faults` that concern the state (forgetting a build,
reporting a wrong cookie, crashing, the rejected-build quirk) are applied here; the ones
that concern the wire (latency, hang, garbage, refuse) are applied by the web layer.

Malformed calls and calls in the wrong state raise :class:`slavesim.wire.BadCall` before
anything changes (except for the real daemon's quirk, see ``build``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any
from xmlrpc.client import Binary

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from slavesim import artifacts, wire
from slavesim.cache import FileCache
from slavesim.faults import ABORT_REAP_TIMEOUT, Faults
from slavesim.outcomes import Decision, Outcome, OutcomeRule, decide

__all__ = ["DEFAULT_VERSION", "LOGTAIL_SIZE", "Settings", "SimulatedBuilder"]

#: What ``status`` reports as ``builder_version`` by default.
DEFAULT_VERSION = "slavesim-0.1"
#: The most bytes of log a BUILDING status carries.
LOGTAIL_SIZE = 2048
_ABORTED = "BuildStatus.ABORTED"
_BUILDERFAIL = "BuildStatus.BUILDERFAIL"


def _positive(instance: object, attribute: object, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"must be a finite number of seconds >= 0, not {value!r}")


@define
class Settings:
    """Settings shared by every builder of a farm; changes apply to the next build.

    - ``build_time``: how long a build runs when no rule says otherwise.
    - ``abort_time``: how long ABORTING lasts before WAITING/ABORTED.
    - ``log_interval``: the longest gap between two chunks of build log.
    - ``version``: the ``builder_version`` status reports (``None``: not reported).
    - ``builder_types``: what ``info`` lists and ``build`` accepts.
    """

    build_time: float = field(default=3.0, validator=_positive)
    abort_time: float = field(default=1.0, validator=_positive)
    log_interval: float = field(default=1.0, validator=_positive)
    version: str | None = DEFAULT_VERSION
    builder_types: tuple[str, ...] = ("binarypackage",)


@define
class _Build:
    """The build a builder is running or holding the results of."""

    facts: artifacts.BuildFacts
    decision: Decision
    started: float
    ends: float
    step: int = 0
    build_status: str | None = None
    filemap: dict[str, str] = field(factory=dict)
    dependencies: str = ""
    #: whether a build process runs (not after a ``build()`` that faulted half-way)
    running: bool = True


class SimulatedBuilder:
    """One simulated builder daemon's state, driven by ``clock`` (an ``IReactorTime``).

    ``rules`` (this builder's) and ``shared_rules`` (the farm's) are read when a build
    starts, so editing those lists scripts the next builds. ``on_crash`` is called when
    a ``crash_mid_build`` fault fires (the farm stops the builder listening).
    """

    _log = Logger()

    def __init__(
        self,
        clock: Any,
        name: str,
        arch_tags: Sequence[str],
        cache: FileCache,
        *,
        faults: Faults | None = None,
        settings: Settings | None = None,
        rules: list[OutcomeRule] | None = None,
        shared_rules: list[OutcomeRule] | None = None,
    ) -> None:
        if not arch_tags:
            raise ValueError("a builder needs at least one architecture tag")
        self.clock = clock
        self.name = name
        self.arch_tags = tuple(arch_tags)
        self.cache = cache
        self.faults = Faults() if faults is None else faults
        self.settings = Settings() if settings is None else settings
        self.rules = [] if rules is None else rules
        self.shared_rules = [] if shared_rules is None else shared_rules
        self.on_crash: Callable[[], object] = lambda: None
        self._state = wire.IDLE
        self._build_id: str | None = None
        self._build: _Build | None = None
        self._tail = b""
        self._has_log = False
        self._tick_call: Any = None
        self._abort_call: Any = None
        self._crash_call: Any = None
        self._status: dict[str, Any] | None = None
        #: the build ids whose build directory exists (removed by ``clean()``)
        self._build_dirs: set[str] = set()
        #: downloads in progress, and who waits for them to be over
        self._downloads = 0
        self._downloads_over: list[Deferred[None]] = []

    # -- what tests and the web layer look at -----------------------------------------

    @property
    def state(self) -> str:
        """The builder status, e.g. ``"BuilderStatus.IDLE"``."""
        return self._state

    @property
    def build_id(self) -> str | None:
        """The build id the builder would report (``None`` after a crash or forget)."""
        return self._build_id

    @property
    def decision(self) -> Decision | None:
        """How the current build was scripted to end (``None`` when there is none)."""
        return None if self._build is None else self._build.decision

    @property
    def build_dirs(self) -> frozenset[str]:
        """The build ids whose build directory is on the builder."""
        return frozenset(self._build_dirs)

    @property
    def running(self) -> bool:
        """Whether a build process runs (BUILDING or ABORTING with something to stop)."""
        build = self._build
        return self._state in (wire.BUILDING, wire.ABORTING) and build is not None and build.running

    @property
    def downloading(self) -> bool:
        """Whether an ``ensurepresent`` download is in progress."""
        return self._downloads > 0

    def downloads_over(self) -> Deferred[None]:
        """Fires once no download is in progress (at once if none is)."""
        d: Deferred[None] = Deferred()
        if self._downloads:
            self._downloads_over.append(d)
        else:
            d.callback(None)
        return d

    def log_path(self) -> str | None:
        """The file holding the build log, ``None`` when there is no log (404)."""
        return str(self.cache.log_path) if self._has_log else None

    # -- the protocol ------------------------------------------------------------------

    def call(self, method: str, args: tuple[object, ...]) -> object:
        """Carry out XML-RPC ``method(*args)``: the answer, or a Deferred of it.

        Raises :class:`wire.BadCall` for a malformed call or one made in the wrong state,
        and ``KeyError`` for an unknown method.
        """
        if method == "status":
            wire.expect_no_args(method, args)
            return self.status()
        if method == "echo":
            return list(args)
        if method == "info":
            wire.expect_no_args(method, args)
            return self.info()
        if method == "ensurepresent":
            return self.ensurepresent(wire.parse_ensurepresent(args))
        if method == "build":
            return self.build(wire.parse_build(args))
        if method == "abort":
            wire.expect_no_args(method, args)
            return self.abort()
        if method == "clean":
            wire.expect_no_args(method, args)
            return self.clean()
        raise KeyError(method)

    def info(self) -> list[object]:
        """``["1.0", arch_tag, [builder types]]``."""
        version = self.faults.protocol_version or wire.PROTOCOL_VERSION
        return [version, self.arch_tags[0], list(self.settings.builder_types)]

    def status(self) -> dict[str, Any]:
        """The status dict, with the keys the real daemon gives in each state.

        While nothing changes the same dict object is returned (callers must not modify
        it), so the web layer can keep its serialised form.
        """
        if self.faults.forget_build and self._state in (wire.BUILDING, wire.ABORTING):
            self.faults.forget_build = False
            self._log.warn(
                "{builder}: forgetting build {build_id} (fault injection)",
                builder=self.name,
                build_id=self._build_id,
            )
            self._lose_build()
        status = self._status
        if status is None:
            status = self._status = self._make_status()
        wrong = self.faults.wrong_cookie
        if wrong is not None and "build_id" in status:
            status = {**status, "build_id": wrong}
        hostile = self.faults.hostile_results
        if hostile is not None and status.get("filemap"):
            status = {**status, "filemap": artifacts.hostile_filemap(hostile, status["filemap"])}
        return status

    def _make_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"builder_status": self._state}
        if self.settings.version is not None:
            status["builder_version"] = self.settings.version
        if self._state == wire.BUILDING:
            status["build_id"] = self._build_id
            status["logtail"] = Binary(self._tail)
        elif self._state == wire.ABORTING:
            status["build_id"] = self._build_id
        elif self._state == wire.WAITING:
            build = self._build
            assert build is not None
            status["build_status"] = build.build_status
            status["build_id"] = self._build_id
            if build.build_status in (
                Outcome.OK.value,
                Outcome.PACKAGEFAIL.value,
                Outcome.DEPFAIL.value,
            ):
                status["filemap"] = dict(build.filemap)
                status["dependencies"] = build.dependencies
        return status

    def ensurepresent(self, request: wire.EnsurePresentRequest) -> Deferred[list[object]]:
        """``[present, message]`` once the file is cached (or not); see :class:`FileCache`.

        The real daemon downloads synchronously and answers nothing else meanwhile; slavesim
        does so with ``faults.blocking_downloads`` (the web layer holds the other calls),
        and otherwise keeps answering other calls (only calls for the same file wait).
        """
        d = self.cache.ensure_present(request.sha1, request.url, request.username, request.password)
        if not d.called:
            self._downloads += 1
            d.addBoth(self._download_over)
        said = self.faults.ensurepresent_message
        if said is not None:
            d.addCallback(lambda answer: [answer[0], said])
        return d

    def _download_over(self, result: object) -> object:
        self._downloads -= 1
        if not self._downloads:
            waiting, self._downloads_over = self._downloads_over, []
            for d in waiting:
                d.callback(None)
        return result

    def build(self, request: wire.BuildRequest) -> list[str]:
        """Start a build, checking what the real daemon checks, in its order.

        ``["BuilderStatus.BUILDING", build_id]`` when started;
        ``["BuilderStatus.UNKNOWNBUILDER", info]`` for an unknown builder type;
        ``["BuilderStatus.UNKNOWNSUM", info]`` when the chroot or a file is not cached.
        Raises :class:`wire.WrongState` unless IDLE (having overwritten the reported build
        id first, when ``faults.overwrite_build_id_on_rejected_build``), and
        :class:`wire.BadCall` for a filemap without ``.dsc`` or missing required ``args``.

        Known difference: the real daemon makes those last two checks after switching to
        BUILDING, so there a refused build leaves it BUILDING with nothing running (until
        an abort); slavesim refuses before changing anything.

        With ``faults.leftover_build_dirs``, a build id whose build directory is still there
        (it outlived a crash) does what the real daemon does: BUILDING, then a Fault, with
        nothing running.
        """
        types = list(self.settings.builder_types)
        if request.builder_type not in types:
            return [wire.UNKNOWNBUILDER, f"{request.builder_type} not in {types!r}"]
        if not self.cache.has(request.chroot):
            return [wire.UNKNOWNSUM, f"CHROOTSUM -> {request.chroot}: not in the file cache"]
        for sha1 in request.filemap.values():
            if not self.cache.has(sha1):
                return [wire.UNKNOWNSUM, f"FILESUM -> {sha1}: not in the file cache"]
        if self._state != wire.IDLE:
            if self.faults.overwrite_build_id_on_rejected_build:
                self._build_id = request.build_id
                self._changed()
            raise wire.WrongState(
                f"build {request.build_id} refused: builder is {self._state}"
                f" (now reporting build id {self._build_id})"
            )
        if request.dsc is None:
            raise wire.BadCall(f"build {request.build_id} refused: the filemap has no .dsc")
        missing = request.missing_args()
        if missing:
            raise wire.BadCall(f"build {request.build_id} refused: args lack {missing}")
        if self.faults.leftover_build_dirs and request.build_id in self._build_dirs:
            self._start(request, running=False)
            raise wire.BadCall(
                f"build {request.build_id}: its build directory exists already"
                " (left BUILDING with nothing running)"
            )
        self._start(request)
        return [wire.BUILDING, self.faults.wrong_cookie or request.build_id]

    def abort(self) -> str:
        """``"BuilderStatus.ABORTING"``; WAITING/ABORTED follows after ``abort_time``.

        Aborting while already ABORTING is accepted (as the real daemon does); in any other
        state it raises :class:`wire.WrongState`. With ``faults.abort_sticks`` an abort of
        nothing (a faulted ``build()``) stays ABORTING; with ``faults.unkillable_builds`` an
        abort of a build ends WAITING/BUILDERFAIL after :data:`ABORT_REAP_TIMEOUT` seconds.
        """
        if self._state == wire.ABORTING:
            return wire.ABORTING
        if self._state != wire.BUILDING:
            raise wire.WrongState(f"abort refused: builder is {self._state}")
        build = self._build
        assert build is not None
        self._cancel("_tick_call")
        self._state = wire.ABORTING
        self._changed()
        if not build.running:
            if not self.faults.abort_sticks:
                self._abort_call = self.clock.callLater(self.settings.abort_time, self._aborted)
        elif self.faults.unkillable_builds:
            self._append_log(b"\nAbort requested: killing the build processes\n")
            self._abort_call = self.clock.callLater(ABORT_REAP_TIMEOUT, self._reap_failed)
        else:
            self._append_log(b"\nAbort requested: killing the build processes\n")
            self._abort_call = self.clock.callLater(self.settings.abort_time, self._aborted)
        self._log.info(
            "{builder}: aborting build {build_id}", builder=self.name, build_id=self._build_id
        )
        return wire.ABORTING

    def clean(self) -> str:
        """``"BuilderStatus.IDLE"``: drop the result files and the log. Only when WAITING."""
        if self._state != wire.WAITING:
            raise wire.WrongState(f"clean refused: builder is {self._state}")
        build = self._build
        assert build is not None
        for sha1 in set(build.filemap.values()):
            self.cache.remove(sha1)
        self._delete_log()
        if self._build_id is not None:
            self._build_dirs.discard(self._build_id)
        self._build = None
        self._state = wire.IDLE
        self._changed()
        return wire.IDLE

    # -- life and death --------------------------------------------------------------

    def reset(self) -> None:
        """Lose everything, as a restarted daemon would: IDLE, no build id, no log.

        Result files of a finished build stay in the cache, and build directories stay on
        disk (they are files on disk).
        """
        self._lose_build()

    def new_machine(self) -> None:
        """Become a new machine, as a virtualized builder whose VM was reset: IDLE, no
        build, no build directory, an empty file cache."""
        self._lose_build()
        self._build_dirs.clear()
        self.cache.cancel_downloads()
        for sha1 in self.cache.files():
            self.cache.remove(sha1)

    def shutdown(self) -> None:
        """Cancel every pending timer (the builder stops moving; its state is kept)."""
        for name in ("_tick_call", "_abort_call", "_crash_call"):
            self._cancel(name)

    # -- internals --------------------------------------------------------------------

    def _changed(self) -> None:
        self._status = None

    def _cancel(self, name: str) -> None:
        call: Any = getattr(self, name)
        if call is not None:
            if call.active():
                call.cancel()
            setattr(self, name, None)

    def _start(self, request: wire.BuildRequest, running: bool = True) -> None:
        now = self.clock.seconds()
        decision = decide(
            (self.rules, self.shared_rules),
            self.name,
            request.package,
            self.settings.build_time,
        )
        facts = artifacts.BuildFacts(
            builder=self.name, request=request, arch=request.arch_tag or self.arch_tags[0]
        )
        self._build = _Build(
            facts=facts,
            decision=decision,
            started=now,
            ends=now + decision.duration,
            running=running,
        )
        self._build_id = request.build_id
        self._state = wire.BUILDING
        if not running:  # a build() that failed half-way: nothing runs, nothing logs
            self._changed()
            self._log.warn(
                "{builder}: the build directory of {build_id} exists already: BUILDING with"
                " nothing running",
                builder=self.name,
                build_id=request.build_id,
            )
            return
        self._build_dirs.add(request.build_id)
        self._write_log(artifacts.log_header(facts, now))
        self._log.info(
            "{builder}: building {build_id} ({package} {version}): {outcome} in {duration}s",
            builder=self.name,
            build_id=request.build_id,
            package=request.package,
            version=request.version,
            outcome=decision.outcome.name,
            duration=decision.duration,
        )
        if self.faults.crash_mid_build:
            self.faults.crash_mid_build = False
            self._crash_call = self.clock.callLater(decision.duration / 2, self._crash)
        self._schedule_tick()

    def _interval(self, build: _Build) -> float:
        return min(self.settings.log_interval, max(build.decision.duration / 20, 0.25))

    def _schedule_tick(self) -> None:
        build = self._build
        assert build is not None
        # Chunks are due at fixed times from the start, so a late tick does not drift.
        due = min(build.started + (build.step + 1) * self._interval(build), build.ends)
        self._tick_call = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._tick)

    def _tick(self) -> None:
        self._tick_call = None
        build = self._build
        assert build is not None and self._state == wire.BUILDING
        now = self.clock.seconds()
        if now >= build.ends:
            self._finish(build, now)
            return
        build.step += 1
        duration = build.decision.duration
        fraction = (now - build.started) / duration if duration else 1.0
        self._append_log(artifacts.log_progress(build.facts, build.step, fraction))
        self._schedule_tick()

    def _finish(self, build: _Build, now: float) -> None:
        decision = build.decision
        build.build_status = decision.outcome.value
        build.dependencies = decision.dependencies
        if decision.outcome is Outcome.OK:
            for filename, data in artifacts.result_files(build.facts, now).items():
                build.filemap[filename] = self.cache.store(data)
        self._append_log(artifacts.log_footer(build.build_status, now, decision.dependencies))
        self._to_waiting()

    def _aborted(self, result: str = _ABORTED) -> None:
        self._abort_call = None
        build = self._build
        assert build is not None and self._state == wire.ABORTING
        build.build_status = result
        if build.running:
            self._append_log(artifacts.log_footer(result, self.clock.seconds()))
        build.running = False
        self._to_waiting()

    def _reap_failed(self) -> None:
        self._log.warn(
            "{builder}: the processes of {build_id} would not die: BUILDERFAIL",
            builder=self.name,
            build_id=self._build_id,
        )
        self._aborted(_BUILDERFAIL)

    def _to_waiting(self) -> None:
        if self._crash_call is not None:
            # The build ended before it could crash: the next build will.
            self._cancel("_crash_call")
            self.faults.crash_mid_build = True
        self._state = wire.WAITING
        self._changed()
        build = self._build
        assert build is not None
        self._log.info(
            "{builder}: build {build_id} finished: {build_status}",
            builder=self.name,
            build_id=self._build_id,
            build_status=build.build_status,
        )

    def _crash(self) -> None:
        self._crash_call = None
        self._log.warn(
            "{builder}: crashing during build {build_id} (fault injection)",
            builder=self.name,
            build_id=self._build_id,
        )
        self._lose_build()
        self.on_crash()

    def _lose_build(self) -> None:
        self.shutdown()
        self._delete_log()
        self._build = None
        self._build_id = None
        self._state = wire.IDLE
        self._changed()

    def _write_log(self, data: bytes) -> None:
        self.cache.log_path.write_bytes(data)
        self._has_log = True
        self._tail = data[-LOGTAIL_SIZE:]
        self._changed()

    def _append_log(self, data: bytes) -> None:
        with open(self.cache.log_path, "ab") as f:
            f.write(data)
        self._tail = (self._tail + data)[-LOGTAIL_SIZE:]
        self._changed()

    def _delete_log(self) -> None:
        self.cache.log_path.unlink(missing_ok=True)
        self._has_log = False
        self._tail = b""
