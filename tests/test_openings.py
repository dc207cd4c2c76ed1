"""Which kinds of builder have no waiting job, and which idle builders wait for one
(buildmaster.scan.claims.Openings): no reactor, a Clock."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock

from buildmaster.scan.claims import EMPTY_CACHE_LIFETIME, Key, Openings

AMD64: Key = (1, False)
I386: Key = (2, False)


class IdleBuilder:
    """A worker as Openings sees it: idle until it is scanned."""

    def __init__(self, builder_id: int, keys: list[Key]) -> None:
        self.builder_id = builder_id
        self.keys = tuple(keys)
        self.idle = True
        self.idle_keys: tuple[Key, ...] = ()
        self.scans = 0

    def request_scan(self) -> defer.Deferred[None]:
        self.scans += 1
        self.idle = False
        return defer.succeed(None)


def openings(listening: bool = True, works: set[int] | None = None) -> tuple[Openings, Clock]:
    clock = Clock()
    state = {"listening": listening}
    return (
        Openings(clock, lambda: state["listening"], lambda b: works is None or b in works),
        clock,
    )


def test_a_waiting_job_wakes_as_many_idle_builders_of_its_kind_as_jobs() -> None:
    o, _ = openings()
    amd = [IdleBuilder(i, [AMD64]) for i in range(3)]
    i386 = IdleBuilder(9, [I386])
    for w in [*amd, i386]:
        o.note_idle(w, listed=True)
    o.job_waiting([AMD64], count=2)
    assert sorted(w.scans for w in amd) == [0, 1, 1]
    assert i386.scans == 0
    # woken builders are no longer listed: the next job wakes the third
    o.job_waiting([AMD64], count=5)
    assert [w.scans for w in amd] == [1, 1, 1]


def test_a_builder_not_worked_here_or_excluded_is_not_woken() -> None:
    o, _ = openings(works={2})
    one, two = IdleBuilder(1, [AMD64]), IdleBuilder(2, [AMD64])
    o.note_idle(one, listed=True)
    o.note_idle(two, listed=True)
    o.wake([AMD64], exclude=two, count=2)
    assert (one.scans, two.scans) == (0, 0)
    o.wake([AMD64], count=2)
    assert (one.scans, two.scans) == (0, 1)


def test_a_busy_or_unlisted_builder_is_not_listed() -> None:
    o, _ = openings()
    busy, gone = IdleBuilder(1, [AMD64]), IdleBuilder(2, [AMD64])
    busy.idle = False
    o.note_idle(busy, listed=True)
    o.note_idle(gone, listed=False)
    o.job_waiting([AMD64], count=2)
    assert (busy.scans, gone.scans) == (0, 0)


def test_no_waiting_job_is_trusted_only_while_notifications_arrive() -> None:
    o, _ = openings(listening=False)
    o.mark_empty([AMD64], o.generations([AMD64]))
    assert not o.known_empty([AMD64])
    o, _ = openings()
    o.mark_empty([AMD64], o.generations([AMD64]))
    assert o.known_empty([AMD64])
    assert not o.known_empty([AMD64, I386])
    assert not o.known_empty([])


def test_a_notification_during_a_claim_wins_over_its_empty_answer() -> None:
    o, _ = openings()
    before = o.generations([AMD64])
    o.job_waiting([AMD64], count=1)  # a job came while the claim was asking
    o.mark_empty([AMD64], before)
    assert not o.known_empty([AMD64])


def test_no_waiting_job_is_forgotten_after_its_lifetime() -> None:
    o, clock = openings()
    o.mark_empty([AMD64], o.generations([AMD64]))
    clock.advance(EMPTY_CACHE_LIFETIME - 1)
    o.expire()
    assert o.known_empty([AMD64])
    clock.advance(1)
    o.expire()
    assert not o.known_empty([AMD64])
