"""A farm of simulated builders that records who called each of them, and when.

Run as a script (a process of its own, as a real farm is)::

    python tests/failover_farm.py --count 300 --build-time 5 --list farm.jsonl \\
        --record calls.jsonl --cache-dir cache

Every XML-RPC call a builder receives is written, as it arrives (before the builder acts
on it), as one JSON line: ``{"b": builder, "m": method, "ua": the caller's User-Agent,
"t": time.time(), "id": the build id of a build() call}``. Each master names itself in its
User-Agent (host and pid), so the record tells which master worked which builder when.
The calls take the general path (twisted.web), where the request's headers are at hand.

With ``--runs``, each build that starts on a builder and each that ends there (finished or
aborted) is written to that file too: ``{"b": builder, "id": build id, "start": t}`` and
``{"b": builder, "id": build id, "end": t, "files": the SHA-1s of its result files}``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs


@attrs.frozen
class Call:
    builder: str
    method: str
    master: str
    t: float
    build_id: str | None


def read_calls(record: Path) -> list[Call]:
    """The calls recorded so far, in the order they arrived (a torn last line is skipped)."""
    calls = []
    if record.exists():
        for line in record.read_text().splitlines():
            try:
                c = json.loads(line)
            except ValueError:
                continue
            calls.append(Call(c["b"], c["m"], c["ua"], c["t"], c.get("id")))
    return calls


def runs(calls: list[Call]) -> Iterator[tuple[str, str, float, float]]:
    """Per builder, the stretches of consecutive calls from one master: (builder, master,
    first call, last call)."""
    by_builder: dict[str, list[Call]] = {}
    for c in calls:
        by_builder.setdefault(c.builder, []).append(c)
    for builder, seq in by_builder.items():
        seq.sort(key=lambda c: c.t)
        start = 0
        for i in range(1, len(seq) + 1):
            if i == len(seq) or seq[i].master != seq[start].master:
                yield builder, seq[start].master, seq[start].t, seq[i - 1].t
                start = i


def build_runs(path: Path) -> dict[str, list[tuple[str, float, float]]]:
    """Per build id, where and when it ran: (builder, start, end; ``inf`` while running)."""
    runs: dict[str, list[tuple[str, float, float]]] = {}
    open_runs: dict[str, tuple[str, float]] = {}  # builder -> (build id, start)
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if "start" in r:
                open_runs[r["b"]] = (r["id"], r["start"])
            elif r["b"] in open_runs:
                build_id, start = open_runs.pop(r["b"])
                runs.setdefault(build_id, []).append((r["b"], start, r["end"]))
    for builder, (build_id, start) in open_runs.items():
        runs.setdefault(build_id, []).append((builder, start, float("inf")))
    return runs


def built_files(path: Path) -> dict[str, str]:
    """Which build made each result file (by its SHA-1: each build's files name the build,
    so no two builds make the same bytes)."""
    made: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            for sha1 in r.get("files", ()):
                made[sha1] = r["id"]
    return made


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--build-time", type=float, required=True)
    parser.add_argument("--list", required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--runs")
    args = parser.parse_args()

    from twisted.internet import defer
    from twisted.internet import reactor as the_reactor

    from slavesim import Farm
    from slavesim.web import BuilderRPC

    reactor: Any = the_reactor
    record = open(args.record, "a", buffering=1)
    general = BuilderRPC.render_POST

    def render_recorded(self: BuilderRPC, request: Any) -> Any:
        assert request.content is not None
        request.content.seek(0)
        try:
            params, method = xmlrpc.client.loads(request.content.read())
        except Exception:
            params, method = (), "?"
        request.content.seek(0)
        line = {
            "b": self._builder.name,
            "m": method,
            "ua": (request.getHeader(b"user-agent") or b"").decode("ascii", "replace"),
            "t": time.time(),
        }
        if method == "build" and params:
            line["id"] = str(params[0])
        record.write(json.dumps(line) + "\n")
        return general(self, request)

    BuilderRPC.render_POST = render_recorded  # type: ignore[method-assign]
    runs = open(args.runs, "a", buffering=1) if args.runs else None
    farm = Farm(reactor, Path(args.cache_dir), build_time=args.build_time, history_size=10)

    async def start() -> None:
        sims = await farm.start_builders(args.count, ("i386",))
        for sim in sims:
            sim.fast_path = False  # the general path, where the headers are
            if runs is not None:
                _record_runs(sim.state, sim.name, runs)
        lines = "".join(json.dumps(listing.to_json()) + "\n" for listing in farm.listings())
        Path(f"{args.list}.tmp").write_text(lines)
        os.replace(f"{args.list}.tmp", args.list)

    def failed(failure: Any) -> None:
        failure.printTraceback()
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(start()).addErrback(failed))
    reactor.addSystemEventTrigger("before", "shutdown", farm.stop)
    reactor.run()


def _record_runs(state: Any, name: str, out: Any) -> None:
    """Write when each build starts on the builder ``state`` and when it ends there."""
    build, to_waiting, aborted = state.build, state._to_waiting, state._aborted

    def started(request: Any) -> Any:
        result = build(request)
        if result and result[0] == "BuilderStatus.BUILDING":
            out.write(json.dumps({"b": name, "id": request.build_id, "start": time.time()}) + "\n")
        return result

    def ended(original: Any) -> Any:
        def end(*args: Any) -> Any:
            files = sorted(set(state._build.filemap.values())) if state._build else []
            line = {"b": name, "id": state._build_id, "end": time.time(), "files": files}
            out.write(json.dumps(line) + "\n")
            return original(*args)

        return end

    state.build = started
    state._to_waiting = ended(to_waiting)
    state._aborted = ended(aborted)


if __name__ == "__main__":
    main()
