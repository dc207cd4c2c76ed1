"""The replay simulator (python -m buildmaster.simulate): its report on small traces worked
out by hand (the reserve's too), its queue against the pure rules, and bad traces."""

from __future__ import annotations

import collections
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest

from buildmaster.fairshare import FairShareConfig, Farm, choose
from buildmaster.simulate import KindQueue, TraceError, Upload, main, read_trace, simulate

FARM = {"farm": [{"processor": "amd64", "virtualized": True, "count": 2, "cache": 1}]}


def up(t: float, owner: str, seconds: float, chroot: str, size: int) -> dict[str, Any]:
    return {
        "t": t,
        "owner": owner,
        "processor": "amd64",
        "virtualized": True,
        "seconds": seconds,
        "chroot": chroot,
        "chroot_bytes": size,
    }


SMALL = [
    FARM,
    up(0, "a", 100, "X", 10),
    up(0, "a", 100, "X", 10),
    up(0, "a", 100, "X", 10),
    up(10, "b", 50, "Y", 20),
    up(10, "b", 50, "Y", 20),
]
#: without the reserve (the traces worked out before it; it has a trace of its own)
CONFIG = FairShareConfig(half_life=100, aging_bound=1000, aging_slack=100, reserve=0)


def replay(
    lines: list[dict[str, Any]], policy: str, config: FairShareConfig = CONFIG
) -> dict[str, Any]:
    farm, uploads = read_trace(json.dumps(line) for line in lines)
    return simulate(farm, uploads, policy, config)


def test_fair_shares_on_a_small_trace_worked_out_by_hand() -> None:
    """Two builders (B1, B2, one chroot cached each), half-life 100 s; uploads u1-u3 of
    owner a (100 s, chroot X, 10 bytes) at 0 s, u4-u5 of owner b (50 s, chroot Y, 20 bytes)
    at 10 s.

    - 0 s: u1 to B1, u2 to B2 (waits 0, 0); each fetches X (a: 20 bytes). a is charged
      100 + 100 = 200 builder-seconds at 0 s. u3 waits; u4, u5 arrive at 10 s and wait.
    - 100 s: B1 frees first. a's usage has halved to 100, b's is 0: deficits a = 1/2 -
      100/100 = -1/2, b = 1/2 - 0 = 1/2: b's u4 (wait 90), fetching Y (b: 20 bytes); b is
      charged 50. Then B2: a 100, b 50: a = 1/2 - 100/150 = -1/6, b = 1/2 - 50/150 = 1/6:
      b's u5 (wait 90), fetching Y (b: 40 bytes).
    - 150 s: B1 frees; only a waits: u3 (wait 150), B1 holds Y: fetches X (a: 30 bytes).
      B2 frees with nothing to do. 250 s: B1 ends u3; the end.

    a: waits 0, 0, 150: p50 (rank ceil(1.5) = 2) 0, p99 (rank ceil(2.97) = 3) 150, max
    150; 300 builder-seconds of 400: share 0.75; 30 bytes. b: waits 90, 90: p50 90, p99
    90, max 90; 100 of 400: 0.25; 40 bytes. All: 70 bytes, 14 per build."""
    report = replay(SMALL, "fair")
    assert report["owners"] == {
        "a": {
            "builds": 3,
            "wait_p50": 0.0,
            "wait_p99": 150.0,
            "wait_max": 150.0,
            "builder_share": 0.75,
            "chroot_bytes": 30,
        },
        "b": {
            "builds": 2,
            "wait_p50": 90.0,
            "wait_p99": 90.0,
            "wait_max": 90.0,
            "builder_share": 0.25,
            "chroot_bytes": 40,
        },
    }
    assert (report["end"], report["chroot_bytes"], report["chroot_bytes_per_build"]) == (
        250.0,
        70,
        14.0,
    )
    assert report["rules"] == {"fair share": 5} and report["wait_max"] == 150.0


def test_todays_scoring_on_the_same_trace_worked_out_by_hand() -> None:
    """The same trace by score (all 0: the oldest first). 0 s as above. 100 s: B1 takes u3
    (wait 100; it holds X: nothing fetched), B2 takes u4 (wait 90, fetches Y: 20 bytes).
    150 s: B2 ends u4 and takes u5 (wait 140, holds Y). 200 s: both end.

    a: waits 0, 0, 100: p50 0, p99 100; 20 bytes. b: waits 90, 140: p50 (rank 1) 90, p99
    (rank 2) 140; 20 bytes. b waits longer than with fair shares, a less."""
    report = replay(SMALL, "score")
    owners = report["owners"]
    assert [owners["a"][k] for k in ("wait_p50", "wait_p99", "wait_max", "chroot_bytes")] == [
        0.0,
        100.0,
        100.0,
        20,
    ]
    assert [owners["b"][k] for k in ("wait_p50", "wait_p99", "wait_max", "chroot_bytes")] == [
        90.0,
        140.0,
        140.0,
        20,
    ]
    assert report["end"] == 200.0 and report["rules"] == {"score": 5}


def test_aging_puts_the_longest_waiting_job_first() -> None:
    """One builder, busy 950 s with owner a's first build; a's second arrives at 0 s, b's
    at 1 s (b has used nothing: by fair shares it would go first). At 950 s a's second has
    waited 950 s >= 1000 - 100: aged, it goes first (wait 950), though b is owed the
    builder; at 960 s b's has waited 959 s, aged too (the first claim was by fair share,
    the other two by age)."""
    farm = {"farm": [{"processor": "amd64", "virtualized": True, "count": 1}]}
    report = replay(
        [farm, up(0, "a", 950, "X", 0), up(0, "a", 10, "X", 0), up(1, "b", 10, "X", 0)], "fair"
    )
    assert report["owners"]["a"]["wait_max"] == 950.0
    assert report["owners"]["b"]["wait_max"] == 959.0
    assert report["rules"] == {"fair share": 1, "aged": 2}


def test_the_reserve_on_a_small_trace_worked_out_by_hand() -> None:
    """Four builders, one of them the reserve (the default 3 %, at least 1), no chroots
    cached, half-life 100 s. Owner q uploads q1 (1000 s) at 0 s, f floods with f1-f5 (100 s)
    at 1 s, q uploads q2 (10 s) at 50 s.

    - 0 s: q1 to B1. 1 s: f1 to B2, f2 to B3 (3, then 2 idle: more than the reserve). f3:
      one idle builder, the reserve. Demands: q 1 (running), f 3 (2 running, f3); the 4 - 1
      builders beyond the reserve: q's 1 fits, f's share is 3 - 1 = 2 and f runs 2: held
      back. B4 stays idle, f3-f5 wait (f's demand grows, its share stays 2).
    - 50 s: q2. q's demand 2, f's 5: the level is 3 / 2; f runs 2 (over), q 1 (under). By
      deficit f's turn (q's 1000 builder-seconds, decayed, against f's 200), but B4 is the
      reserve: q2 (wait 0; the rule "reserve"). 60 s: q2 ends; B4 idle again (f held back).
    - 101 s: f1 ends: two idle, f3 to B2 (wait 100); f2 ends: f4 to B3 (wait 100); B4
      stays idle. 201 s: f3 ends: f5 to B2 (wait 200). 1000 s: q1 ends.

    Without the reserve f3 takes B4 at 1 s and q2 waits until 101 s (51 s)."""
    farm = {"farm": [{"processor": "amd64", "virtualized": True, "count": 4, "cache": 0}]}
    trace = [
        farm,
        up(0, "q", 1000, "X", 0),
        *[up(1, "f", 100, "X", 0) for _ in range(5)],
        up(50, "q", 10, "X", 0),
    ]
    with_reserve = replay(trace, "fair", FairShareConfig(half_life=100))
    waits = simulate_waits(trace, FairShareConfig(half_life=100))
    assert waits == {"q": [0.0, 0.0], "f": [0.0, 0.0, 100.0, 100.0, 200.0]}
    assert with_reserve["rules"] == {"fair share": 6, "reserve": 1}
    assert with_reserve["end"] == 1000.0
    without = simulate_waits(trace, CONFIG)
    assert without == {"q": [0.0, 51.0], "f": [0.0, 0.0, 0.0, 100.0, 100.0]}


def simulate_waits(lines: list[dict[str, Any]], config: FairShareConfig) -> dict[str, list[float]]:
    farm, uploads = read_trace(json.dumps(line) for line in lines)
    waits: dict[str, list[float]] = simulate(farm, uploads, "fair", config, keep_waits=True)[
        "waits"
    ]
    return waits


def test_a_job_held_back_by_the_reserve_starts_when_it_ages() -> None:
    """Three builders (one the reserve): q's long build on B1 at 0 s, f's on B2 at 1 s. f's
    second at 2 s: one idle builder, the reserve; of the two beyond it q's demand takes 1,
    f's share is 1 and f runs 1: held back. Nothing else happens: it starts when it ages
    (aged after 900 s: at 902 s), on the reserve."""
    farm = {"farm": [{"processor": "amd64", "virtualized": True, "count": 3, "cache": 0}]}
    trace = [farm, up(0, "q", 5000, "X", 0), up(1, "f", 5000, "X", 0), up(2, "f", 10, "X", 0)]
    config = FairShareConfig(half_life=100, aging_bound=1000, aging_slack=100)
    report = replay(trace, "fair", config)
    assert report["owners"]["f"]["wait_max"] == 900.0
    assert report["rules"] == {"fair share": 2, "aged": 1}
    assert replay(trace, "fair")["owners"]["f"]["wait_max"] == 0.0  # without the reserve


def test_the_simulators_queue_chooses_what_the_pure_rules_choose() -> None:
    """Random queues (owners, scores, chroots, arrival times, earlier usage, builders busy
    and idle): the fast queue the simulator runs takes, step after step, the job that
    :func:`buildmaster.fairshare.choose` takes, the reserve included (a quarter of 8
    builders)."""
    rng = random.Random(25)
    config = FairShareConfig(
        half_life=300, aging_bound=2000, aging_slack=500, affinity_window=4, reserve=0.25
    )
    rules: collections.Counter[str] = collections.Counter()
    for _ in range(40):
        queue = KindQueue(config, "fair", 8)
        now = 0.0
        next_id = 1
        running: list[Upload] = []
        for _ in range(60):
            if rng.random() < 0.6:
                owner = rng.choice("abcde")
                queue.add(
                    Upload(
                        next_id,
                        now,
                        owner,
                        "amd64",
                        True,
                        100.0,
                        rng.choice("XYZ"),
                        0,
                        rng.choice((0, 0, 100)),
                    )
                )
                next_id += 1
            elif running and rng.random() < 0.3:
                queue.finish(running.pop(rng.randrange(len(running))))
            elif len(running) < 8:
                held = set(rng.sample("XYZ", rng.randint(0, 2)))
                usage = {o: queue.usage_at(o, now) for o in "abcde"}
                farm = Farm(8, 8 - len(running), dict(queue.running))
                expected = choose(queue.as_waiting(), usage, now, config, held, farm)
                taken = queue.take(now, held, farm.idle)
                if expected is None:
                    assert taken is None
                    rules["none"] += 1
                else:
                    assert taken is not None
                    assert (taken[0].id, taken[1]) == (expected.job.id, expected.rule)
                    rules[expected.rule] += 1
                    running.append(taken[0])
                    queue.charge(taken[0].owner, now, rng.choice((50.0, 500.0)))
            now += rng.choice((0.0, 10.0, 100.0))
    assert min(rules["fair share"], rules["aged"], rules["reserve"]) >= 5, rules


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["not json"], "line 1: not JSON"),
        ([json.dumps(up(0, "a", 1, "X", 0))], "no farm line"),
        (
            [json.dumps(FARM), json.dumps({**up(0, "a", 1, "X", 0), "seconds": -5})],
            "line 2: t >= 0 and seconds > 0",
        ),
        (
            [json.dumps(FARM), json.dumps({**up(0, "a", 1, "X", 0), "owner": 7})],
            "line 2: 'owner' must be str",
        ),
        (
            [json.dumps(FARM), json.dumps({**up(0, "a", 1, "X", 0), "processor": "riscv64"})],
            "line 2: no builder for riscv64",
        ),
        ([json.dumps({"farm": []})], "line 1: the farm is one non-empty list"),
        ([json.dumps(FARM), "[1, 2]"], "line 2: not a JSON object"),
    ],
)
def test_a_bad_trace_is_refused_naming_the_line(lines: list[str], message: str) -> None:
    with pytest.raises(TraceError, match=message):
        read_trace(lines)


def test_the_command_generates_and_replays_and_refuses_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "small.jsonl"
    trace.write_text("".join(json.dumps(line) + "\n" for line in SMALL))
    out = io.StringIO()
    assert (
        main(
            [
                "run",
                str(trace),
                "--policy",
                "fair",
                "--half-life",
                "100",
                "--aging-bound",
                "1000",
                "--aging-slack",
                "100",
                "--reserve",
                "0",
            ],
            out,
        )
        == 0
    )
    assert json.loads(out.getvalue())["owners"]["b"]["wait_p99"] == 90.0
    generated = io.StringIO()
    assert main(["generate", "flood", "--seed", "3"], generated) == 0
    lines = generated.getvalue().splitlines()
    farm, uploads = read_trace(lines)
    assert sum(k.count for k in farm) == 350
    assert sum(1 for u in uploads if u.owner == "flood") == 2000
    assert generated.getvalue() == (
        lambda o: (main(["generate", "flood", "--seed", "3"], o), o.getvalue())[1]
    )(io.StringIO())  # seeded: the same trace
    trace.write_text(json.dumps(FARM) + "\n{\n")
    assert main(["run", str(trace)], io.StringIO()) == 2
    assert "line 2: not JSON" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.jsonl")], io.StringIO()) == 2
