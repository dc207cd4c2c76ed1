"""Benchmark: today's scoring against fair shares + aging + affinity, replayed (issue 25).

Generates the two traces (``python -m buildmaster.simulate generate steady|flood --seed 25``:
a day of a 350-builder farm; the flood trace is the steady one plus one owner's 2,000 amd64
builds within an hour at 6:00) and replays each with the three policies of
:mod:`buildmaster.simulate` (``score``: today's order; ``fair``: fair shares, aging and
affinity; ``fair-no-affinity``), with the default settings of
:class:`buildmaster.fairshare.FairShareConfig`. Prints the tables of
benchmarks/results/fairness.md: the other owners' waits (every owner but ``flood``, pooled,
and per owner for the busiest), the longest wait against the aging bound, the chroot bytes
fetched per build, and how long each replay took.

    python benchmarks/fairness.py [--seed 25] [--load 0.5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from buildmaster.fairshare import FairShareConfig
from buildmaster.simulate import generate, percentile, read_trace, simulate

POLICIES = ("score", "fair", "fair-no-affinity")


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=25)
    parser.add_argument("--load", type=float, default=0.5, help="mean load (see generate)")
    args = parser.parse_args()
    config = FairShareConfig()
    results: dict[tuple[str, str], tuple[dict[str, Any], float]] = {}
    for kind in ("steady", "flood"):
        for policy in POLICIES:
            farm, uploads = read_trace(
                json.dumps(line) for line in generate(kind, args.seed, args.load)
            )
            t = time.perf_counter()
            report = simulate(farm, uploads, policy, config, keep_waits=True)
            took = time.perf_counter() - t
            waits = report.pop("waits")
            report["others_p99"] = percentile(
                [w for owner, ws in waits.items() if owner != "flood" for w in ws], 99
            )
            results[(kind, policy)] = (report, took)
    print(f"seed {args.seed}, mean load {args.load}; load average {_loadavg()}")
    print(
        f"settings: half-life {config.half_life:.0f} s, aging bound {config.aging_bound:.0f} s"
        f" (aged after {config.aging_after:.0f} s), affinity window {config.affinity_window}"
    )
    print()
    print(
        "| trace | policy | builds | replay s | other owners' p99 wait, s (pooled) |"
        " longest wait, s (bound 14,400) | chroot MB fetched per build |"
        " the same, trusted builders (the primary's builds) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (kind, policy), (report, took) in results.items():
        pooled = report["others_p99"]
        primary = report["owners"]["primary"]
        print(
            f"| {kind} | {policy} | {report['builds']} | {took:.1f} | {pooled:.0f} |"
            f" {report['wait_max']:.0f} | {report['chroot_bytes_per_build'] / 1e6:.0f} |"
            f" {primary['chroot_bytes'] / primary['builds'] / 1e6:.0f} |"
        )
    print()
    print("Other owners' p99 wait, flood / steady (same policy):")
    print()
    print("| owner | builds | score: steady -> flood, s | fair: steady -> flood, s |")
    print("|---|---|---|---|")
    steady = results[("steady", "fair")][0]["owners"]
    busiest = sorted(steady, key=lambda o: -steady[o]["builds"])[:6]
    for owner in ["(all others, pooled)", *busiest]:
        cells = []
        for policy in ("score", "fair"):
            a, b = results[("steady", policy)][0], results[("flood", policy)][0]
            if owner.startswith("("):
                x, y = a["others_p99"], b["others_p99"]
            else:
                x, y = a["owners"][owner]["wait_p99"], b["owners"][owner]["wait_p99"]
            ratio = f" ({y / x:.1f}x)" if x > 0 else ""
            cells.append(f"{x:.0f} -> {y:.0f}{ratio}")
        builds = (
            steady[owner]["builds"]
            if owner in steady
            else sum(o["builds"] for o in steady.values())
        )
        print(f"| {owner} | {builds} | {cells[0]} | {cells[1]} |")
    flood = {p: results[("flood", p)][0]["owners"]["flood"] for p in ("score", "fair")}
    print()
    print(
        "the flood's own waits, p50/p99/max s: score"
        f" {flood['score']['wait_p50']:.0f}/{flood['score']['wait_p99']:.0f}/{flood['score']['wait_max']:.0f},"
        f" fair {flood['fair']['wait_p50']:.0f}/{flood['fair']['wait_p99']:.0f}/{flood['fair']['wait_max']:.0f}"
    )


if __name__ == "__main__":
    main()
