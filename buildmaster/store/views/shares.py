"""How a waiting build's turn is decided: its owner's fair share, the reserve and aging.

The numbers the claim (``buildqueue_candidate()``, migrations 0008 and 0011; the rules in
:mod:`buildmaster.fairshare`) reads, shown for builders of the build's own processor and
virtualization (a builder of several processors weighs the owners over all of them).
"""

from __future__ import annotations

import attrs

from buildmaster.enums import BuildQueueStatus
from buildmaster.store.database import Database
from buildmaster.store.views.builds import BuildSummary

__all__ = ["ShareStanding", "ShareViews"]


@attrs.frozen
class ShareStanding:
    owner: str
    weight: float
    #: the owner's usage of this kind: builder-seconds, decayed (half-life ``half_life``)
    usage_seconds: float
    #: weight share minus usage share among the owners with waiting work of this kind
    deficit: float
    #: the owner's turn: 1 = the next builder of this kind takes this owner's best job
    owner_rank: int
    owners_waiting: int
    waited_seconds: float
    #: once it has waited this long it goes before fair shares (longest waiting first)
    aged_after_seconds: float
    aged: bool
    half_life: float
    #: the owner's builds of this kind on a builder now
    running: int
    #: whether the reserve holds the owner back now: it runs at least its fair share
    #: (``share_builders``) while at most the reserve (``reserve`` of ``builders``) is idle
    held_back: bool
    #: the kind's builders and how many are idle (``None`` when the reserve is off or no
    #: other owner has work of the kind: then it holds nobody back)
    builders: int | None
    idle_builders: int | None
    reserve: int
    #: its fair share of the builders beyond the reserve (``None`` unless they are scarce)
    share_builders: float | None
    #: how its place is decided, in a sentence
    text: str


_SHARE_SQL = """
WITH f AS (SELECT * FROM fairshare),
q AS (SELECT * FROM buildqueue WHERE id = %(job)s),
u AS (
    SELECT s.owner, max(coalesce(w.weight, f.default_weight)) AS weight,
        sum(s.usage * power(0.5, greatest(0, extract(epoch FROM now() - s.stamp)) / f.half_life))
            AS usage
    FROM shareusage s CROSS JOIN f LEFT JOIN shareweight w ON w.owner = s.owner
    WHERE s.processor = %(processor)s AND s.virtualized = %(virtualized)s
      AND (s.waiting > 0 OR s.owner = (SELECT shareowner FROM q))
    GROUP BY s.owner),
d AS (
    SELECT u.owner, u.weight, u.usage,
        u.weight / sum(u.weight) OVER ()
            - coalesce(u.usage / nullif(sum(u.usage) OVER (), 0), 0) AS deficit
    FROM u),
r AS (SELECT d.*, rank() OVER (ORDER BY d.deficit DESC, d.owner) AS rank, count(*) OVER () AS n
      FROM d),
res AS (SELECT * FROM fairshare_reserve(ARRAY[%(processor)s]::integer[], %(virtualized)s))
SELECT p.name, r.weight, r.usage, r.deficit, r.rank, r.n,
    extract(epoch FROM now() - q.datecreated), f.aging_bound - f.aging_slack, f.half_life,
    (SELECT coalesce(sum(s.running), 0) FROM shareusage s WHERE s.processor = %(processor)s
        AND s.virtualized = %(virtualized)s AND s.owner = q.shareowner),
    q.shareowner = ANY(res.held), res.builders, res.idle, res.reserve,
    CASE WHEN res.level < 'Infinity' THEN res.level * r.weight END
FROM r JOIN person p ON p.id = r.owner CROSS JOIN f JOIN q ON q.shareowner = r.owner
    CROSS JOIN res
"""


def _text(s: ShareStanding) -> str:
    if s.aged:
        return (
            f"waited {s.waited_seconds:.0f} s, over {s.aged_after_seconds:.0f} s: it goes before"
            " fair shares, the longest waiting first"
        )
    turn = (
        "its owner's turn is next"
        if s.owner_rank == 1
        else f"{s.owner_rank - 1} owner(s) ahead by fair share"
    )
    text = (
        f"{s.owner} (weight {s.weight:g}) used {s.usage_seconds:.0f} builder-seconds lately:"
        f" deficit {s.deficit:+.3f} among {s.owners_waiting} owner(s) with waiting builds;"
        f" {turn}; within the owner, by score; aged after {s.aged_after_seconds:.0f} s"
    )
    if s.held_back and s.share_builders is not None:
        text += (
            f". Held back by the reserve: {s.owner} runs {s.running} build(s) of this kind, at"
            f" least its fair share ({s.share_builders:.1f}), and only {s.idle_builders} of"
            f" {s.builders} builders are idle (the last {s.reserve} are kept for owners under"
            " their share): it waits for another builder to free up"
        )
    return text


class ShareViews:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def standing(self, summary: BuildSummary) -> ShareStanding | None:
        """The fair-share standing of a waiting build (``None`` unless it waits)."""
        job = summary.job
        if job is None or job.status is not BuildQueueStatus.WAITING or job.builder_id is not None:
            return None
        rows = await self._db.query(
            _SHARE_SQL,
            {
                "processor": job.processor_id,
                "virtualized": job.virtualized,
                "job": job.id,
            },
            prepared=True,  # its plan took longer than its run (1.2 ms, 0.6 ms at 60,000 jobs)
        )
        if not rows:
            return None
        (
            name,
            weight,
            usage,
            deficit,
            rank,
            n,
            waited,
            after,
            half_life,
            running,
            held,
            builders,
            idle,
            reserve,
            share,
        ) = rows[0]
        waited = float(waited)
        standing = ShareStanding(
            name,
            float(weight),
            float(usage),
            float(deficit),
            int(rank),
            int(n),
            waited,
            float(after),
            waited >= float(after),
            float(half_life),
            int(running),
            bool(held) and waited < float(after),  # an aged build is never held back
            builders,
            idle,
            int(reserve),
            None if share is None else float(share),
            "",
        )
        return attrs.evolve(standing, text=_text(standing))
