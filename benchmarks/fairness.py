"""Benchmark: today's scoring against fair shares + aging + affinity (+ the reserve), replayed
(issue 25).

Generates the two traces (``python -m buildmaster.simulate generate steady|flood --seed 25``:
a day of a 350-builder farm; the flood trace is the steady one plus one owner's 2,000 amd64
builds within an hour at 6:00) and replays each with the policies of
:mod:`buildmaster.simulate` (``score``: today's order; ``fair``: fair shares, aging, the
reserve and affinity; ``fair-no-affinity``), with the default settings of
:class:`buildmaster.fairshare.FairShareConfig`, and ``fair`` once more without the reserve
(``reserve`` 0: the rules before it, the baseline of the same run). Prints the tables of
benchmarks/results/fairness.md: the other owners' waits (every owner but ``flood``, pooled,
and per owner for the busiest), the longest wait against the aging bound, the chroot bytes
fetched per build, how long each replay took, and what the flood asks of the amd64
virtualized builders against what the others leave idle (why a farm may not absorb it).

    python benchmarks/fairness.py [--seed 25] [--load 0.5] [--reserve 0.03] [--sweep]

``--sweep`` prints instead, for reserves of 0 to 5 %, the other owners' p99 waits (pooled
and the five busiest PPAs, steady -> flood) and the flood's longest wait, policy ``fair``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from buildmaster.fairshare import FairShareConfig, reserve_size
from buildmaster.simulate import FARM, generate, percentile, read_trace, simulate

#: (label, policy, with the reserve)
VARIANTS = (
    ("score", "score", True),
    ("fair, no reserve", "fair", False),
    ("fair", "fair", True),
    ("fair-no-affinity", "fair-no-affinity", True),
)


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _ratio(x: float, y: float) -> str:
    return f"{x:.0f} -> {y:.0f}" + (f" ({y / x:.1f}x)" if x > 0 else "")


def _busy_seconds(runs: list[tuple[float, float, str, bool, str]], t0: float, t1: float) -> float:
    """Builder-seconds the amd64 virtualized builders were busy between t0 and t1."""
    return sum(
        max(0.0, min(end, t1) - max(start, t0))
        for start, end, processor, virtualized, _ in runs
        if processor == "amd64" and virtualized
    )


def sweep(seed: int, load: float, config: FairShareConfig) -> None:
    traces = {
        k: [json.dumps(line) for line in generate(k, seed, load)] for k in ("steady", "flood")
    }
    print(f"seed {seed}, mean load {load}, policy fair; load average {_loadavg()}")
    print()
    print(
        "| reserve (amd64 virtualized builders) | others pooled p99, s | ppa-00..04 p99, s |"
        " flood's longest wait, s | longest wait, s |"
    )
    print("|---|---|---|---|---|")
    amd64 = next(c for p, v, c in FARM if p == "amd64" and v)
    for reserve in (0.0, 0.01, 0.02, 0.03, 0.05):
        c = attrs.evolve(config, reserve=reserve)
        reports = {}
        for kind, lines in traces.items():
            farm, uploads = read_trace(lines)
            reports[kind] = simulate(farm, uploads, "fair", c, keep_waits=True)
        pooled = [
            percentile([w for o, ws in r["waits"].items() if o != "flood" for w in ws], 99)
            for r in (reports["steady"], reports["flood"])
        ]
        ppas = ", ".join(
            f"{reports['steady']['owners'][o]['wait_p99']:.0f}->"
            f"{reports['flood']['owners'][o]['wait_p99']:.0f}"
            for o in (f"ppa-{i:02d}" for i in range(5))
        )
        print(
            f"| {reserve} ({reserve_size(amd64, c)}) | {_ratio(*pooled)} | {ppas} |"
            f" {reports['flood']['owners']['flood']['wait_max']:.0f} |"
            f" {reports['flood']['wait_max']:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=25)
    parser.add_argument("--load", type=float, default=0.5, help="mean load (see generate)")
    parser.add_argument(
        "--reserve", type=float, default=FairShareConfig().reserve, help="the reserve's fraction"
    )
    parser.add_argument("--sweep", action="store_true", help="compare reserves of 0 to 5 %%")
    args = parser.parse_args()
    config = FairShareConfig(reserve=args.reserve)
    if args.sweep:
        sweep(args.seed, args.load, config)
        return
    results: dict[tuple[str, str], tuple[dict[str, Any], float]] = {}
    traces = {
        kind: [json.dumps(line) for line in generate(kind, args.seed, args.load)]
        for kind in ("steady", "flood")
    }
    for kind, lines in traces.items():
        for label, policy, reserve in VARIANTS:
            farm, uploads = read_trace(lines)
            t = time.perf_counter()
            report = simulate(
                farm,
                uploads,
                policy,
                config if reserve else attrs.evolve(config, reserve=0.0),
                keep_waits=True,
                keep_runs=True,
            )
            took = time.perf_counter() - t
            waits = report.pop("waits")
            report["others_p99"] = percentile(
                [w for owner, ws in waits.items() if owner != "flood" for w in ws], 99
            )
            results[(kind, label)] = (report, took)
    amd64 = next(c for p, v, c in FARM if p == "amd64" and v)
    print(f"seed {args.seed}, mean load {args.load}; load average {_loadavg()}")
    print(
        f"settings: half-life {config.half_life:.0f} s, aging bound {config.aging_bound:.0f} s"
        f" (aged after {config.aging_after:.0f} s), affinity window {config.affinity_window},"
        f" reserve {config.reserve} (amd64 virtualized: {reserve_size(amd64, config)} of"
        f" {amd64} builders)"
    )
    print()
    print(
        "| trace | policy | builds | replay s | other owners' p99 wait, s (pooled) |"
        " longest wait, s (bound 14,400) | chroot MB fetched per build |"
        " the same, trusted builders (the primary's builds) | claims decided by the reserve |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for (kind, label), (report, took) in results.items():
        primary = report["owners"]["primary"]
        print(
            f"| {kind} | {label} | {report['builds']} | {took:.1f} | {report['others_p99']:.0f} |"
            f" {report['wait_max']:.0f} | {report['chroot_bytes_per_build'] / 1e6:.0f} |"
            f" {primary['chroot_bytes'] / primary['builds'] / 1e6:.0f} |"
            f" {report['rules'].get('reserve', 0)} |"
        )
    print()
    print("Other owners' p99 wait, steady -> flood (same policy), s:")
    print()
    shown = ("score", "fair, no reserve", "fair")
    print("| owner | builds | " + " | ".join(shown) + " |")
    print("|---|---|" + "---|" * len(shown))
    steady = results[("steady", "fair")][0]["owners"]
    busiest = sorted((o for o in steady if o != "primary"), key=lambda o: -steady[o]["builds"])
    for owner in ["(all others, pooled)", "primary", *busiest[:5]]:
        cells = []
        for label in shown:
            a, b = results[("steady", label)][0], results[("flood", label)][0]
            if owner.startswith("("):
                x, y = a["others_p99"], b["others_p99"]
            else:
                x, y = a["owners"][owner]["wait_p99"], b["owners"][owner]["wait_p99"]
            cells.append(_ratio(x, y))
        builds = (
            steady[owner]["builds"]
            if owner in steady
            else sum(o["builds"] for o in steady.values())
        )
        print(f"| {owner} | {builds} | " + " | ".join(cells) + " |")
    worst = {}
    for label in shown:
        a, b = results[("steady", label)][0]["owners"], results[("flood", label)][0]["owners"]
        worst[label] = max(
            (b[o]["wait_p99"] - 2 * a[o]["wait_p99"], o) for o in a if o in b and o != "flood"
        )
    print()
    print(
        "the owner whose p99 rose most over 2x its steady p99 (flood p99 - 2 x steady p99, s): "
        + ", ".join(f"{label}: {w[1]} {w[0]:+.0f}" for label, w in worst.items())
    )
    print()
    print(
        "the flood's own waits, p50/p99/max s: "
        + ", ".join(
            f"{label} {f['wait_p50']:.0f}/{f['wait_p99']:.0f}/{f['wait_max']:.0f}"
            for label in shown
            for f in [results[("flood", label)][0]["owners"]["flood"]]
        )
    )
    # what the flood asks of the amd64 virtualized builders, against what the others leave
    _, uploads = read_trace(traces["flood"])
    flood = [u for u in uploads if u.owner == "flood"]
    first, last = min(u.t for u in flood), max(u.t for u in flood)
    need = sum(u.seconds for u in flood) / 3600
    runs = results[("steady", "fair")][0]["runs"]
    print()
    print(
        f"the flood: {len(flood)} builds, {need:.0f} builder-hours, uploaded"
        f" {first / 3600:.2f}-{last / 3600:.2f} h. Idle amd64 virtualized builder-hours the"
        " others leave (steady replay, fair):"
    )
    for label, until in (
        ("until the last flood upload ages", last + config.aging_after),
        ("until its aging bound", last + config.aging_bound),
    ):
        spare = (amd64 * (until - first) - _busy_seconds(runs, first, until)) / 3600
        print(
            f"  {label} ({first / 3600:.2f}-{until / 3600:.2f} h): {spare:.0f}"
            f" ({spare / need:.2f} of what the flood needs)"
        )


if __name__ == "__main__":
    main()
