"""The replay simulator (python -m buildmaster.simulate): its report on a small trace worked
out by hand, its queue against the pure rules, and bad traces."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import pytest

from buildmaster.fairshare import FairShareConfig, choose
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
CONFIG = FairShareConfig(half_life=100, aging_bound=1000, aging_slack=100)


def replay(lines: list[dict[str, Any]], policy: str) -> dict[str, Any]:
    farm, uploads = read_trace(json.dumps(line) for line in lines)
    return simulate(farm, uploads, policy, CONFIG)


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


def test_the_simulators_queue_chooses_what_the_pure_rules_choose() -> None:
    """Random queues (owners, scores, chroots, arrival times, earlier usage): the fast
    queue the simulator runs takes, step after step, the job that
    :func:`buildmaster.fairshare.choose` takes."""
    rng = random.Random(25)
    config = FairShareConfig(half_life=300, aging_bound=2000, aging_slack=500, affinity_window=4)
    for _ in range(40):
        queue = KindQueue(config, "fair")
        now = 0.0
        next_id = 1
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
            else:
                held = set(rng.sample("XYZ", rng.randint(0, 2)))
                usage = {o: queue.usage_at(o, now) for o in "abcde"}
                expected = choose(queue.as_waiting(), usage, now, config, held)
                taken = queue.take(now, held)
                if expected is None:
                    assert taken is None
                else:
                    assert taken is not None
                    assert (taken[0].id, taken[1]) == (expected.job.id, expected.rule)
                    queue.charge(taken[0].owner, now, rng.choice((50.0, 500.0)))
            now += rng.choice((0.0, 10.0, 100.0))


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
