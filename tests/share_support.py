"""Setting an owner's fair-share usage in a test (the usage is kept in stripes)."""

from __future__ import annotations

from buildmaster.store import Store

_SET_USAGE_SQL = (
    "WITH gone AS (DELETE FROM shareusage_stripe WHERE owner = %(owner)s"
    "  RETURNING processor, virtualized, owner, waiting, running)"
    " INSERT INTO shareusage_stripe (processor, virtualized, owner, stripe, waiting, running,"
    "  usage, stamp)"
    " SELECT processor, virtualized, owner, 0, sum(waiting), sum(running), %(usage)s,"
    "  now() - make_interval(secs => %(age)s) FROM gone GROUP BY 1, 2, 3"
)


async def set_share_usage(store: Store, owner: int, usage: float, age: float = 0.0) -> None:
    """Give ``owner`` ``usage`` builder-seconds (as counted ``age`` seconds ago) in every
    kind it has a row for, its counts of waiting and running jobs kept."""
    await store.db.execute(_SET_USAGE_SQL, {"owner": owner, "usage": usage, "age": age})
