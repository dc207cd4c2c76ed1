"""Replay a trace of uploads against the master's selection rules, on a simulated clock.

Long: the trace format, the farm, the event loop, the per-owner report and the two trace
generators are one tool; each is small, and they share the same few records.

``python -m buildmaster.simulate run TRACE [--policy fair|fair-no-affinity|score]`` prints
a JSON report; ``python -m buildmaster.simulate generate steady|flood --seed N`` writes a
trace (JSON lines) to standard output. No sockets, no database: the rules are those of
:mod:`buildmaster.fairshare`, which the claim's SQL implements (tests/test_fair_claims.py
checks that both choose the same jobs on the same state; tests/test_simulate.py that this
module's queue chooses what :func:`buildmaster.fairshare.choose` chooses).

**Trace.** The first line is the farm: ``{"farm": [{"processor": "amd64", "virtualized":
true, "count": 160, "cache": 0}, ...]}`` (``cache``: how many chroots a builder keeps).
Every other line is an upload: ``{"t": seconds, "owner": "ppa-07", "processor": "amd64",
"virtualized": true, "seconds": 600, "chroot": "noble-amd64", "chroot_bytes": 400000000,
"score": 0}`` (``score`` and ``chroot_bytes`` are optional: 0). A build takes ``seconds``
and that is also its estimate.

**Policies.** ``score``: today's order (highest score, then the oldest). ``fair``: fair
shares, aging, the reserve (``--reserve``) and chroot affinity (a job that a farm with
several idle builders takes goes to one holding its chroot, as builders claiming together
share out their jobs in the master; with ``--affinity-window N``, also the pure rules'
window, which the master does not do yet). ``fair-no-affinity``: the same without affinity.
Idle builders ask again whenever something happens to their kind (an upload, a build
ending) and when a waiting job ages, as the master's builders ask every scan.

**Report**, per owner: builds, waits (start - arrival) p50/p99/max in seconds (p-th
percentile: the value of rank ``ceil(p/100 * n)`` in the sorted waits), builder share
(its builder-seconds over all builder-seconds), chroot bytes fetched (a builder fetches a
chroot it does not hold; it then holds its ``cache`` most recently used).
"""

from __future__ import annotations

import argparse
import collections
import heapq
import json
import math
import random
import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any

import attrs

from buildmaster.fairshare import (
    FairShareConfig,
    Farm,
    Waiting,
    charged,
    deficits,
    held_back,
    is_aged,
)

__all__ = ["Upload", "Kind", "FarmKind", "KindQueue", "simulate", "read_trace", "percentile"]

POLICIES = ("fair", "fair-no-affinity", "score")

#: (processor, virtualized)
Kind = tuple[str, bool]


class TraceError(ValueError):
    """A trace line that cannot be replayed (its line number and what is wrong)."""


@attrs.frozen
class FarmKind:
    processor: str
    virtualized: bool
    count: int
    cache: int = 2


@attrs.define
class Upload:
    id: int
    t: float
    owner: str
    processor: str
    virtualized: bool
    seconds: float
    chroot: str
    chroot_bytes: int = 0
    score: int = 0
    taken: bool = False

    @property
    def kind(self) -> Kind:
        return (self.processor, self.virtualized)


def _field(line: dict[str, Any], name: str, kind: Any, number: int, default: Any = None) -> Any:
    value = line.get(name, default)
    if value is None or not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise TraceError(f"line {number}: {name!r} must be {getattr(kind, '__name__', kind)}")
    return value


def read_trace(lines: Iterable[str]) -> tuple[list[FarmKind], list[Upload]]:
    """The farm and the uploads of a trace (in arrival order).

    :raises TraceError: naming the line, for anything malformed.
    """
    farm: list[FarmKind] | None = None
    uploads: list[Upload] = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except ValueError as e:
            raise TraceError(f"line {number}: not JSON ({e})") from None
        if not isinstance(line, dict):
            raise TraceError(f"line {number}: not a JSON object")
        if "farm" in line:
            if farm is not None or not isinstance(line["farm"], list) or not line["farm"]:
                raise TraceError(f"line {number}: the farm is one non-empty list, once")
            farm = []
            for k in line["farm"]:
                if not isinstance(k, dict):
                    raise TraceError(f"line {number}: a farm entry is an object")
                count = _field(k, "count", int, number)
                cache = _field(k, "cache", int, number, 2)
                if count < 1 or cache < 0:
                    raise TraceError(f"line {number}: count >= 1 and cache >= 0")
                farm.append(
                    FarmKind(
                        _field(k, "processor", str, number),
                        _field(k, "virtualized", bool, number),
                        count,
                        cache,
                    )
                )
            continue
        seconds = float(_field(line, "seconds", (int, float), number))
        t = float(_field(line, "t", (int, float), number))
        if not (math.isfinite(t) and t >= 0 and math.isfinite(seconds) and seconds > 0):
            raise TraceError(f"line {number}: t >= 0 and seconds > 0, finite")
        uploads.append(
            Upload(
                number,
                t,
                _field(line, "owner", str, number),
                _field(line, "processor", str, number),
                _field(line, "virtualized", bool, number),
                seconds,
                _field(line, "chroot", str, number),
                _field(line, "chroot_bytes", int, number, 0),
                _field(line, "score", int, number, 0),
            )
        )
    if farm is None:
        raise TraceError("no farm line")
    kinds = {(k.processor, k.virtualized) for k in farm}
    for u in uploads:
        if u.kind not in kinds:
            raise TraceError(
                f"line {u.id}: no builder for {u.processor} virtualized={u.virtualized}"
            )
    uploads.sort(key=lambda u: (u.t, u.id))
    for n, u in enumerate(uploads, start=1):
        u.id = n  # in arrival order (what the queue's ids are)
    return farm, uploads


class KindQueue:
    """The waiting jobs of one kind of builder, and its owners' usage: the rules of
    :func:`buildmaster.fairshare.choose`, kept in structures that answer in a few steps."""

    def __init__(self, config: FairShareConfig, policy: str, builders: int = 1) -> None:
        self.config = config
        self.policy = policy
        #: the builders of the kind (the reserve's share of them)
        self.builders = builders
        self._age: list[tuple[float, int, Upload]] = []
        self._all: list[tuple[int, int, Upload]] = []  # (-score, id): the score policy
        #: per owner: its scores (a heap of -score) and, per score, its jobs oldest first
        self._scores: dict[str, list[int]] = collections.defaultdict(list)
        self._buckets: dict[str, dict[int, collections.deque[Upload]]] = collections.defaultdict(
            dict
        )
        self.waiting: collections.Counter[str] = collections.Counter()
        #: each owner's jobs on a builder
        self.running: collections.Counter[str] = collections.Counter()
        #: owner: (usage, as of)
        self.usage: dict[str, tuple[float, float]] = {}

    def add(self, job: Upload) -> None:
        heapq.heappush(self._age, (job.t, job.id, job))
        heapq.heappush(self._all, (-job.score, job.id, job))
        buckets = self._buckets[job.owner]
        if job.score not in buckets:
            buckets[job.score] = collections.deque()
            heapq.heappush(self._scores[job.owner], -job.score)
        buckets[job.score].append(job)
        self.waiting[job.owner] += 1

    def __len__(self) -> int:
        return sum(self.waiting.values())

    def usage_at(self, owner: str, now: float) -> float:
        value, since = self.usage.get(owner, (0.0, now))
        return charged(value, since, now, self.config.half_life, 0.0)

    def charge(self, owner: str, now: float, seconds: float) -> None:
        value, since = self.usage.get(owner, (0.0, now))
        self.usage[owner] = (charged(value, since, now, self.config.half_life, seconds), now)

    def _best_bucket(self, owner: str) -> collections.deque[Upload]:
        scores, buckets = self._scores[owner], self._buckets[owner]
        while True:
            bucket = buckets[-scores[0]]
            while bucket and bucket[0].taken:
                bucket.popleft()
            if bucket:
                return bucket
            del buckets[-heapq.heappop(scores)]

    def take(
        self, now: float, held: Iterable[str] = (), idle: int | None = None
    ) -> tuple[Upload, str] | None:
        """The job a free builder takes now (it holds the chroots ``held``; ``idle``
        builders of the kind are idle, itself included: the reserve), taken; with the rule
        that chose it."""
        job, rule = self.choose(now, held, idle)
        if job is None:
            return None
        job.taken = True
        self.waiting[job.owner] -= 1
        if not self.waiting[job.owner]:
            del self.waiting[job.owner]
        self.running[job.owner] += 1
        return job, rule

    def finish(self, job: Upload) -> None:
        """``job`` left its builder."""
        self.running[job.owner] -= 1
        if not self.running[job.owner]:
            del self.running[job.owner]

    def oldest(self) -> Upload | None:
        """The longest waiting job."""
        while self._age and self._age[0][2].taken:
            heapq.heappop(self._age)
        return self._age[0][2] if self._age else None

    def choose(
        self, now: float, held: Iterable[str] = (), idle: int | None = None
    ) -> tuple[Upload | None, str]:
        """The job :meth:`take` would take, not taken (``None``: none)."""
        if not self.waiting:
            return None, ""
        if self.policy == "score":
            while self._all[0][2].taken:
                heapq.heappop(self._all)
            return self._all[0][2], "score"
        while self._age[0][2].taken:
            heapq.heappop(self._age)
        oldest = self._age[0][2]
        if is_aged(oldest.t, now, self.config):
            return oldest, "aged"
        shares = {o: (self.config.weight(o), self.usage_at(o, now)) for o in self.waiting}
        d = deficits(shares)
        owner = min(d, key=lambda o: (-d[o], o))
        rule = "fair share"
        if idle is not None:
            over = held_back(self.waiting, Farm(self.builders, idle, self.running), self.config)
            if owner in over:
                rule = "reserve"
                left = [o for o in d if o not in over]
                if not left:
                    return None, ""
                owner = min(left, key=lambda o: (-d[o], o))
        bucket = self._best_bucket(owner)
        held = set(held)
        if held and self.policy == "fair" and self.config.affinity_window:
            seen = 0
            for job in bucket:
                if job.taken:
                    continue
                if job.chroot in held:
                    return job, rule
                seen += 1
                if seen == self.config.affinity_window:
                    break
        return bucket[0], rule

    def as_waiting(self) -> list[Waiting]:
        """The waiting jobs as :func:`buildmaster.fairshare.choose` takes them."""
        return [
            Waiting(j.id, j.owner, j.score, j.t, j.chroot) for _, _, j in self._age if not j.taken
        ]


@attrs.define
class _Builder:
    id: int
    kind: Kind
    cache: int
    chroots: collections.OrderedDict[str, None] = attrs.field(factory=collections.OrderedDict)
    job: Upload | None = None

    def fetch(self, chroot: str) -> bool:
        """Use ``chroot``: whether it had to be downloaded."""
        if chroot in self.chroots:
            self.chroots.move_to_end(chroot)
            return False
        if self.cache:
            self.chroots[chroot] = None
            while len(self.chroots) > self.cache:
                self.chroots.popitem(last=False)
        return True


def percentile(values: list[float], p: float) -> float:
    """Nearest rank: the value of rank ``ceil(p/100 * n)`` of the sorted values."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def simulate(
    farm: list[FarmKind],
    uploads: list[Upload],
    policy: str,
    config: FairShareConfig,
    keep_waits: bool = False,
    keep_runs: bool = False,
) -> dict[str, Any]:
    """Replay ``uploads`` on ``farm``; the report (see the module's docstring), with every
    wait per owner under ``"waits"`` if ``keep_waits``, and every build's ``(start, end,
    processor, virtualized, owner)`` under ``"runs"`` if ``keep_runs``."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}")
    for u in uploads:
        u.taken = False
    queues = {(k.processor, k.virtualized): KindQueue(config, policy, k.count) for k in farm}
    free: dict[Kind, list[_Builder]] = {kind: [] for kind in queues}
    n = 0
    for k in farm:
        for _ in range(k.count):
            n += 1
            free[(k.processor, k.virtualized)].append(
                _Builder(n, (k.processor, k.virtualized), k.cache)
            )
    waits: dict[str, list[float]] = collections.defaultdict(list)
    used: dict[str, float] = collections.defaultdict(float)
    fetched: collections.Counter[str] = collections.Counter()
    rules: collections.Counter[str] = collections.Counter()
    runs: list[tuple[float, float, str, bool, str]] = []
    # (time, order, seq, payload): a build ending (order 0, its builder), a waiting job
    # aging while builders of its kind are idle (order 1, the kind)
    events: list[tuple[float, int, int, Any]] = []
    seq = 0
    affinity = policy == "fair"
    reserve = policy != "score"
    wakes: set[tuple[float, Kind]] = set()

    def start(builder: _Builder, job: Upload, now: float) -> None:
        nonlocal seq
        waits[job.owner].append(now - job.t)
        used[job.owner] += job.seconds
        if keep_runs:
            runs.append((now, now + job.seconds, job.processor, job.virtualized, job.owner))
        if builder.fetch(job.chroot):
            fetched[job.owner] += job.chroot_bytes
        queues[builder.kind].charge(job.owner, now, job.seconds)
        builder.job = job
        seq += 1
        heapq.heappush(events, (now + job.seconds, 0, seq, builder))

    def dispatch(kind: Kind, now: float) -> None:
        """The idle builders of ``kind`` claim, one after the other, until one gets nothing;
        the job chosen goes to one holding its chroot (fair policy), else the first."""
        nonlocal seq
        queue, idle = queues[kind], free[kind]
        while idle and queue.waiting:
            job, _ = queue.choose(now, (), len(idle) if reserve else None)
            if job is None:
                # held back by the reserve: ask again when the oldest job ages
                oldest = queue.oldest()
                assert oldest is not None
                at = oldest.t + config.aging_after
                if at > now and (at, kind) not in wakes:
                    wakes.add((at, kind))
                    seq += 1
                    heapq.heappush(events, (at, 1, seq, kind))
                return
            pick = 0
            if affinity:
                pick = next((i for i, b in enumerate(idle) if job.chroot in b.chroots), 0)
            builder = idle.pop(pick)
            taken = queue.take(now, builder.chroots, len(idle) + 1 if reserve else None)
            assert taken is not None
            rules[taken[1]] += 1
            start(builder, taken[0], now)

    arrivals = iter(uploads)
    upcoming = next(arrivals, None)
    end = 0.0
    while upcoming is not None or events:
        if upcoming is not None and (not events or upcoming.t < events[0][0]):
            now, job = upcoming.t, upcoming
            upcoming = next(arrivals, None)
            queues[job.kind].add(job)
            dispatch(job.kind, now)
            continue
        now, order, _, payload = heapq.heappop(events)
        if order == 1:
            wakes.discard((now, payload))
            dispatch(payload, now)
            continue
        builder = payload
        end = now
        assert builder.job is not None
        queues[builder.kind].finish(builder.job)
        builder.job = None
        if queues[builder.kind].waiting:
            free[builder.kind].insert(0, builder)  # it asks first
        else:
            free[builder.kind].append(builder)  # the longest idle is asked first
        dispatch(builder.kind, now)
    total = sum(used.values()) or 1.0
    owners = {
        owner: {
            "builds": len(w),
            "wait_p50": percentile(w, 50),
            "wait_p99": percentile(w, 99),
            "wait_max": max(w),
            "builder_share": used[owner] / total,
            "chroot_bytes": fetched[owner],
        }
        for owner, w in sorted(waits.items())
    }
    report = {
        "policy": policy,
        "builds": len(uploads),
        "builders": sum(k.count for k in farm),
        "end": end,
        "chroot_bytes": sum(fetched.values()),
        "chroot_bytes_per_build": sum(fetched.values()) / max(1, len(uploads)),
        "wait_max": max((o["wait_max"] for o in owners.values()), default=0.0),
        "rules": dict(rules),
        "owners": owners,
    }
    if keep_waits:
        report["waits"] = dict(waits)
    if keep_runs:
        report["runs"] = runs
    return report


# -- generated traces -----------------------------------------------------------------------

DAY = 86400.0
#: 350 builders: (processor, virtualized, count)
FARM = [
    ("amd64", True, 160),
    ("amd64", False, 80),
    ("arm64", True, 50),
    ("arm64", False, 30),
    ("armhf", True, 20),
    ("armhf", False, 10),
]
SERIES = ("focal", "jammy", "noble", "oracular")
PPA_OWNERS = 40


def _build_seconds(rng: random.Random) -> float:
    """Log-normal: median 8 minutes, a few builds of hours (capped at 4 h)."""
    return float(min(4 * 3600, max(30, round(rng.lognormvariate(math.log(480), 1.0)))))


MEAN_SECONDS = 480 * math.exp(0.5)  # the log-normal's mean, before the cap


def generate(kind: str, seed: int, load: float = 0.5) -> Iterator[dict[str, Any]]:
    """A day of uploads to the 350 builders of :data:`FARM`: ``steady`` (the primary archive
    on the trusted builders, 40 PPA owners of unequal activity on the virtualized ones, a
    daily swing of +-50 % around ``load``), or ``flood`` (the same uploads plus one owner's
    2,000 builds on amd64 within an hour, at 6:00)."""
    if kind not in ("steady", "flood"):
        raise ValueError("kind is steady or flood")
    rng = random.Random(seed)
    # a virtualized builder's VM is reset to a clean image: it keeps no chroot
    yield {
        "farm": [
            {"processor": p, "virtualized": v, "count": c, "cache": 0 if v else 2}
            for p, v, c in FARM
        ]
    }
    lines: list[dict[str, Any]] = []
    activity = [1.0 / (i + 1) ** 0.8 for i in range(PPA_OWNERS)]  # a few busy PPAs, many quiet
    for processor, virtualized, count in FARM:
        rate = load * count / MEAN_SECONDS  # uploads per second on average
        t = 0.0
        while True:
            # a thinned Poisson process: rate * (1 + 0.5 sin) over the day
            t += rng.expovariate(rate * 1.5)
            if t >= DAY:
                break
            if rng.random() > (1 + 0.5 * math.sin(2 * math.pi * t / DAY)) / 1.5:
                continue
            series = rng.choices(SERIES, weights=(1, 2, 4, 2))[0]
            if virtualized:
                owner = f"ppa-{rng.choices(range(PPA_OWNERS), weights=activity)[0]:02d}"
                score = rng.choice((0, 250, 1000))
            else:
                owner = "primary"
                score = 1500 + rng.choice((0, 250, 1000)) + rng.choice((0, 0, 1500, 3000))
            lines.append(
                {
                    "t": round(t, 1),
                    "owner": owner,
                    "processor": processor,
                    "virtualized": virtualized,
                    "seconds": _build_seconds(rng),
                    "chroot": f"{series}-{processor}",
                    "chroot_bytes": {"amd64": 420, "arm64": 380, "armhf": 300}[processor] * 10**6,
                    "score": score,
                }
            )
    if kind == "flood":
        flood = random.Random(seed + 1)
        for _ in range(2000):
            lines.append(
                {
                    "t": round(6 * 3600 + flood.uniform(0, 3600), 1),
                    "owner": "flood",
                    "processor": "amd64",
                    "virtualized": True,
                    "seconds": float(flood.choice((120, 180, 240, 300))),
                    "chroot": f"{flood.choice(SERIES)}-amd64",
                    "chroot_bytes": 420 * 10**6,
                    "score": 1000,
                }
            )
    lines.sort(key=lambda line: line["t"])
    yield from lines


def main(argv: list[str] | None = None, out: IO[str] | None = None) -> int:
    out = out if out is not None else sys.stdout
    parser = argparse.ArgumentParser(
        prog="python -m buildmaster.simulate", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="replay a trace; print the report (JSON)")
    run.add_argument("trace", help="a trace file (JSON lines), '-' for standard input")
    run.add_argument("--policy", choices=POLICIES, default="fair")
    run.add_argument("--half-life", type=float, default=FairShareConfig().half_life)
    run.add_argument("--aging-bound", type=float, default=FairShareConfig().aging_bound)
    run.add_argument("--aging-slack", type=float, default=FairShareConfig().aging_slack)
    run.add_argument("--affinity-window", type=int, default=FairShareConfig().affinity_window)
    run.add_argument(
        "--reserve",
        type=float,
        default=FairShareConfig().reserve,
        help="the fraction of a kind's builders kept for owners under their share (0: none)",
    )
    gen = sub.add_parser("generate", help="write a generated trace (JSON lines)")
    gen.add_argument("kind", choices=("steady", "flood"))
    gen.add_argument("--seed", type=int, default=25)
    gen.add_argument("--load", type=float, default=0.5)
    args = parser.parse_args(argv)
    if args.command == "generate":
        for line in generate(args.kind, args.seed, args.load):
            out.write(json.dumps(line) + "\n")
        return 0
    try:
        config = FairShareConfig(
            half_life=args.half_life,
            aging_bound=args.aging_bound,
            aging_slack=args.aging_slack,
            affinity_window=args.affinity_window,
            reserve=args.reserve,
        )
        if args.trace == "-":
            farm, uploads = read_trace(sys.stdin)
        else:
            with open(args.trace, encoding="utf-8") as f:
                farm, uploads = read_trace(f)
    except (OSError, ValueError) as e:
        print(f"simulate: {e}", file=sys.stderr)
        return 2
    json.dump(simulate(farm, uploads, args.policy, config), out, indent=1)
    out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
