"""Fault injection switches, one set per simulated builder, flipped at run time.

Every switch takes effect on the next call the builder receives; nothing needs restarting.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable

from attrs import define, field

__all__ = ["ABORT_REAP_TIMEOUT", "DEFAULT_HUGE_SIZE", "Faults", "Garbage", "Hostile"]

#: Size of the body a ``garbage = "huge"`` builder answers with.
DEFAULT_HUGE_SIZE = 16 * 1024 * 1024
#: Seconds an ``unkillable_builds`` builder tries to kill an aborted build before it gives
#: up with BUILDERFAIL (the real daemon's figure).
ABORT_REAP_TIMEOUT = 120.0


class Garbage(enum.StrEnum):
    """Kinds of garbage answers (compare equal to their plain strings)."""

    #: A ``200 text/xml`` answer that is not well-formed XML.
    XML = "xml"
    #: Well-formed XML-RPC with the wrong types (status: a struct of ints; others: an int).
    TYPES = "types"
    #: A well-formed XML-RPC answer of ``huge_size`` bytes.
    HUGE = "huge"


class Hostile(enum.StrEnum):
    """Kinds of hostile results a builder hands back (a builder runs untrusted code)."""

    #: the filemap names a file outside the result folder: ``../../../etc/passwd``
    TRAVERSAL = "traversal"
    #: the filemap lists a file whose bytes do not hash to the SHA-1 it gives
    BAD_SHA1 = "bad_sha1"
    #: the filemap lists 1,500 files (the master accepts 1,000 by default)
    MANY_FILES = "many_files"
    #: a result file never ends
    ENDLESS_FILE = "endless_file"
    #: the build log never ends (think 10 GB)
    HUGE_LOG = "huge_log"


def _to_hostile(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return Hostile(value)
    except ValueError:
        choices = ", ".join(repr(h.value) for h in Hostile)
        raise ValueError(
            f"hostile_results must be None or one of {choices}, not {value!r}"
        ) from None


def _to_garbage(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return Garbage(value)
    except ValueError:
        choices = ", ".join(repr(g.value) for g in Garbage)
        raise ValueError(f"garbage must be None or one of {choices}, not {value!r}") from None


def _non_negative(instance: object, attribute: object, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"must be a finite number >= 0, not {value!r}")


def _optional_non_negative(instance: object, attribute: object, value: float | None) -> None:
    if value is not None:
        _non_negative(instance, attribute, value)


@define
class Faults:
    """What is wrong with a builder. All off by default, except the real daemon's quirk.

    - ``latency``: seconds (on the farm's clock) before each XML-RPC call is carried out and
      answered.
    - ``refuse``: stop listening (connections get ECONNREFUSED, open ones are dropped) until
      set back to ``False``. The port closes on the next reactor turn; ``await
      builder.settled()`` to be sure.
    - ``hang``: accept and read every request (XML-RPC and /filecache), never answer, never
      act on it.
    - ``garbage``: ``"xml"``, ``"types"`` or ``"huge"`` (:class:`Garbage`): the call is
      carried out but its answer replaced by garbage.
    - ``forget_build``: the next ``status`` during a build reports IDLE: the build is lost.
      Switches itself off once used.
    - ``wrong_cookie``: every status that carries a ``build_id`` reports this one instead,
      and so does the answer of an accepted ``build``.
    - ``withhold_answer``: ``{method: seconds}``: that call is carried out at once but its
      answer is held back (on the farm's clock), as when the reply is lost on the network
      after the builder acted on the request.
    - ``protocol_version``: ``info`` reports this protocol version instead of ``"1.0"``.
    - ``ensurepresent_message``: ``ensurepresent`` answers this instead of ``"Cache"`` or
      ``"Download"`` (the file is cached all the same), as a builder of another make might.
    - ``crash_mid_build``: the next build dies half-way: the builder stops listening and
      loses its state (back to IDLE, log and build id gone). Switches itself off once used.
      The builder stays down until ``start()``, or for ``crash_downtime`` seconds if set.
    - ``stale_connection``: ``{method: count}``: the next ``count`` calls of that method
      that come over a kept-alive connection (one that has carried an answer already) find
      it closed: the builder drops the connection without answering and without carrying
      the call out, as a builder that timed the connection out, or restarted, just as the
      call was sent. Counts down.
    - ``stale_after_acting``: with ``stale_connection``, the call is carried out before the
      connection is dropped (the builder died while answering).
    - ``overwrite_build_id_on_rejected_build``: the real daemon's quirk, on by default: a
      ``build`` refused because the builder is busy still replaces the build id it reports.
    - ``hostile_results``: a finished build hands back hostile results (:class:`Hostile`):
      a path-traversal name, a SHA-1 that does not match the bytes, 1,500 files, a result
      file that never ends, or a build log that never ends.

    The real daemon's behaviours that recovery must survive, off by default (switch them
    all on with :meth:`like_the_real_daemon`):

    - ``leftover_build_dirs``: a build's directory outlives a crash (only ``clean()`` of
      that build removes it, or a new machine): ``build()`` of that build id again switches
      the builder to BUILDING, then faults (8002), and leaves it BUILDING with nothing
      running.
    - ``abort_sticks``: ``abort()`` while nothing runs (after such a ``build()``) answers
      ABORTING, and the builder stays ABORTING until it is restarted.
    - ``unkillable_builds``: ``abort()`` cannot kill a running build: the builder stays
      ABORTING for :data:`ABORT_REAP_TIMEOUT` seconds (the farm's clock), then gives up
      and ends WAITING with ``BuildStatus.BUILDERFAIL``.
    - ``blocking_downloads``: while ``ensurepresent`` downloads, the builder answers no
      other XML-RPC call: every call waits until the downloads are over (the real daemon
      downloads synchronously).
    """

    latency: float = field(default=0.0, validator=_non_negative)
    hang: bool = False
    garbage: str | None = field(default=None, converter=_to_garbage)
    huge_size: int = DEFAULT_HUGE_SIZE
    forget_build: bool = False
    wrong_cookie: str | None = None
    withhold_answer: dict[str, float] = field(factory=dict)
    protocol_version: str | None = None
    ensurepresent_message: str | None = None
    crash_mid_build: bool = False
    hostile_results: str | None = field(default=None, converter=_to_hostile)
    crash_downtime: float | None = field(default=None, validator=_optional_non_negative)
    stale_connection: dict[str, int] = field(factory=dict)
    stale_after_acting: bool = False
    overwrite_build_id_on_rejected_build: bool = True
    leftover_build_dirs: bool = False
    abort_sticks: bool = False
    unkillable_builds: bool = False
    blocking_downloads: bool = False
    _refuse: bool = False
    _on_refuse_changed: Callable[[], object] | None = field(
        default=None, init=False, repr=False, eq=False
    )

    @property
    def refuse(self) -> bool:
        """Whether the builder refuses connections (is not listening)."""
        return self._refuse

    @refuse.setter
    def refuse(self, value: bool) -> None:
        self._refuse = bool(value)
        if self._on_refuse_changed is not None:
            self._on_refuse_changed()

    def watch_refuse(self, callback: Callable[[], object] | None) -> None:
        """Call ``callback()`` whenever ``refuse`` is assigned (used by the builder)."""
        self._on_refuse_changed = callback

    def like_the_real_daemon(self) -> None:
        """Switch on every behaviour of the real daemon that recovery must survive."""
        self.overwrite_build_id_on_rejected_build = True
        self.leftover_build_dirs = True
        self.abort_sticks = True
        self.unkillable_builds = True
        self.blocking_downloads = True

    def clear(self) -> None:
        """Switch every fault and quirk off (except the rejected-build quirk: back on, as
        the real daemon has it)."""
        self.latency = 0.0
        self.hang = False
        self.garbage = None
        self.huge_size = DEFAULT_HUGE_SIZE
        self.forget_build = False
        self.wrong_cookie = None
        self.withhold_answer = {}
        self.crash_mid_build = False
        self.crash_downtime = None
        self.overwrite_build_id_on_rejected_build = True
        self.leftover_build_dirs = False
        self.abort_sticks = False
        self.unkillable_builds = False
        self.blocking_downloads = False
        self.hostile_results = None
        self.protocol_version = None
        self.ensurepresent_message = None
        self.refuse = False
