"""Benchmark: memory of N idle simulated builders, and status calls per second.

Runs, several times over, in this order:

1. ``twistd -n slavesim --count N --port 0`` pinned to one core (``taskset``); once its
   builder list is written, its RSS is read from ``/proc/<pid>/status``;
2. a client process pinned to another core keeps ``--connections`` persistent HTTP/1.1
   connections busy with ``status`` calls (one in flight per connection), spread over the
   builders, and counts the answers that are a well-formed IDLE status;
3. the same with ``slavesim --no-fast-path`` (every request through twisted.web);
4. the same client against a bare ``twisted.web.xmlrpc`` server (a trivial ``xmlrpc_status``
   returning a one-key dict, no access log) on the same core: the baseline;
5. the same again with that Site's form parsing off (``parsePOSTFormSubmission=False``, as
   slavesim has it): the bare minimum twisted.web costs.

Besides calls per second of wall-clock time, it reports calls per second of *server CPU
time* (from ``/proc/<pid>/stat``), which holds up better on a machine shared with others.
It prints each run, then the medians and ratios as a Markdown table.

    python benchmarks/slavesim_bench.py --count 1000 --runs 5

Internal modes: ``baseline-server`` and ``client`` (the script runs itself for those).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STATUS_BODY = xmlrpc.client.dumps((), "status").encode()


# -- the client ---------------------------------------------------------------------------


def _request(port: int) -> bytes:
    return (
        b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: slavesim-bench\r\n"
        b"Content-Type: text/xml\r\nContent-Length: %d\r\n\r\n" % (port, len(STATUS_BODY))
    ) + STATUS_BODY


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_client(
    ports: list[int], connections: int, warmup: float, seconds: float, server_pid: int
) -> None:
    """Drive status calls; print a JSON summary on stdout."""
    selector = selectors.DefaultSelector()
    state: dict[socket.socket, list[Any]] = {}
    for i in range(connections):
        port = ports[(i * len(ports)) // connections]
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        request = _request(port)
        state[sock] = [b"", request]
        selector.register(sock, selectors.EVENT_READ)
        sock.sendall(request)
    good = bad = 0
    start = time.monotonic()
    measure_from = start + warmup
    end = measure_from + seconds
    counted_good = counted_bad = 0
    cpu_at_start = time.process_time()
    server_cpu_at_start = cpu_seconds(server_pid)
    measuring = False
    while True:
        now = time.monotonic()
        if not measuring and now >= measure_from:
            measuring = True
            counted_good, counted_bad = good, bad
            cpu_at_start = time.process_time()
            server_cpu_at_start = cpu_seconds(server_pid)
            measure_from = now
        if now >= end:
            break
        for key, _ in selector.select(0.5):
            ready: Any = key.fileobj
            data = ready.recv(262144)
            if not data:
                raise SystemExit("the server closed a connection")
            entry = state[ready]
            buffer = entry[0] + data
            while True:
                head_end = buffer.find(b"\r\n\r\n")
                if head_end < 0:
                    break
                head = buffer[:head_end].lower()
                at = head.find(b"content-length:")
                line_end = head.find(b"\r\n", at)
                length = int(head[at + 15 : line_end if line_end >= 0 else len(head)])
                if len(buffer) < head_end + 4 + length:
                    break
                body = buffer[head_end + 4 : head_end + 4 + length]
                buffer = buffer[head_end + 4 + length :]
                if head.startswith(b"http/1.1 200") and b"BuilderStatus.IDLE" in body:
                    good += 1
                else:
                    bad += 1
                ready.sendall(entry[1])
            entry[0] = buffer
    elapsed = time.monotonic() - measure_from
    cpu = time.process_time() - cpu_at_start
    server_cpu = cpu_seconds(server_pid) - server_cpu_at_start
    for sock in state:
        sock.close()
    print(
        json.dumps(
            {
                "calls": good - counted_good,
                "errors": bad - counted_bad,
                "seconds": elapsed,
                "rate": (good - counted_good) / elapsed,
                "client_cpu": cpu / elapsed,
                "server_cpu": server_cpu / elapsed,
                "rate_per_cpu": (good - counted_good) / server_cpu if server_cpu else 0.0,
                "loadavg": Path("/proc/loadavg").read_text().split()[0],
            }
        )
    )


# -- the baseline server ------------------------------------------------------------------


def run_baseline_server(port_file: str, form_parsing: bool) -> None:
    """A bare twisted.web.xmlrpc server: one trivial status method, no access log.

    ``form_parsing``: Site's default ``parsePOSTFormSubmission=True`` (slavesim turns it off:
    it parses every POST's Content-Type with the email package).
    """
    from twisted.internet import reactor as the_reactor
    from twisted.web import server, xmlrpc

    reactor: Any = the_reactor

    class Bare(xmlrpc.XMLRPC):
        def xmlrpc_status(self) -> dict[str, str]:
            return {"builder_status": "BuilderStatus.IDLE"}

    class QuietSite(server.Site):
        def log(self, request: Any) -> None:
            pass

    site = QuietSite(Bare(allowNone=True), parsePOSTFormSubmission=form_parsing)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    Path(port_file + ".tmp").write_text(str(port.getHost().port))
    os.replace(port_file + ".tmp", port_file)
    reactor.run()


# -- the driver ---------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def wait_for_file(path: Path, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} did not appear")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def client(ports: list[int], server_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    ports_file = Path(tempfile.mkstemp(prefix="slavesim-bench-ports-")[1])
    ports_file.write_text(json.dumps(ports))
    try:
        output = subprocess.run(
            ["taskset", "-c", args.client_cpu, sys.executable, __file__, "client"]
            + ["--ports-file", str(ports_file), "--connections", str(args.connections)]
            + ["--warmup", str(args.warmup), "--seconds", str(args.seconds)]
            + ["--server-pid", str(server_pid)],
            check=True,
            stdout=subprocess.PIPE,
        ).stdout
    finally:
        ports_file.unlink()
    result: dict[str, Any] = json.loads(output)
    return result


def one_slavesim_run(
    args: argparse.Namespace, workdir: Path, fast_path: bool = True
) -> dict[str, Any]:
    listing = workdir / "builders.jsonl"
    listing.unlink(missing_ok=True)
    twistd = Path(sys.executable).parent / "twistd"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        ["taskset", "-c", args.server_cpu, str(twistd), "-n", "--pidfile=", "slavesim"]
        + ["--count", str(args.count), "--port", "0", "--list", str(listing)]
        + ["--cache-dir", str(workdir / "caches")]
        + ([] if fast_path else ["--no-fast-path"]),
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_file(listing, process)
        time.sleep(args.settle)
        idle_rss = rss_mib(process.pid)
        ports = [
            int(json.loads(line)["url"].rsplit(":", 1)[1].strip("/"))
            for line in listing.read_text().splitlines()
        ]
        result = client(ports, process.pid, args)
        result["idle_rss_mib"] = idle_rss
        result["loaded_rss_mib"] = rss_mib(process.pid)
        return result
    finally:
        stop(process)


def one_baseline_run(
    args: argparse.Namespace, workdir: Path, form_parsing: bool = True
) -> dict[str, Any]:
    port_file = workdir / "baseline.port"
    port_file.unlink(missing_ok=True)
    process = subprocess.Popen(
        ["taskset", "-c", args.server_cpu, sys.executable, __file__, "baseline-server"]
        + ["--port-file", str(port_file)]
        + ([] if form_parsing else ["--no-form-parsing"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_file(port_file, process)
        time.sleep(args.settle)
        idle_rss = rss_mib(process.pid)
        result = client([int(port_file.read_text())], process.pid, args)
        result["idle_rss_mib"] = idle_rss
        return result
    finally:
        stop(process)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode")
    run = sub.add_parser("run", help="the benchmark (default)")
    for p in (parser, run):
        p.add_argument("--count", type=int, default=1000)
        p.add_argument("--runs", type=int, default=5)
        p.add_argument("--seconds", type=float, default=5.0)
        p.add_argument("--warmup", type=float, default=1.0)
        p.add_argument("--settle", type=float, default=2.0)
        p.add_argument("--connections", type=int, default=50)
        p.add_argument("--server-cpu", default="0")
        p.add_argument("--client-cpu", default="1")
    client_parser = sub.add_parser("client")
    client_parser.add_argument("--ports-file", required=True)
    client_parser.add_argument("--connections", type=int, required=True)
    client_parser.add_argument("--warmup", type=float, required=True)
    client_parser.add_argument("--seconds", type=float, required=True)
    client_parser.add_argument("--server-pid", type=int, required=True)
    server_parser = sub.add_parser("baseline-server")
    server_parser.add_argument("--port-file", required=True)
    server_parser.add_argument("--no-form-parsing", action="store_true")
    args = parser.parse_args()

    if args.mode == "client":
        run_client(
            json.loads(Path(args.ports_file).read_text()),
            args.connections,
            args.warmup,
            args.seconds,
            args.server_pid,
        )
        return
    if args.mode == "baseline-server":
        run_baseline_server(args.port_file, not args.no_form_parsing)
        return

    print(
        f"machine: nproc={os.cpu_count()}, CPU: {cpu_model()}, Python {platform.python_version()}"
    )
    print(
        f"slavesim --count {args.count}; {args.runs} runs; {args.connections} connections; "
        f"{args.seconds}s measured after {args.warmup}s warm-up; server on CPU {args.server_cpu}, "
        f"client on CPU {args.client_cpu}"
    )
    slavesim_runs: list[dict[str, Any]] = []
    general_runs: list[dict[str, Any]] = []
    baseline_runs: list[dict[str, Any]] = []
    tuned_runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="slavesim-bench-") as tmp:
        workdir = Path(tmp)
        for i in range(args.runs):
            s = one_slavesim_run(args, workdir)
            g = one_slavesim_run(args, workdir, fast_path=False)
            general_runs.append(g)
            b = one_baseline_run(args, workdir)
            t = one_baseline_run(args, workdir, form_parsing=False)
            slavesim_runs.append(s)
            baseline_runs.append(b)
            tuned_runs.append(t)
            print(
                f"run {i + 1}: slavesim {s['rate']:.0f}/s, {s['rate_per_cpu']:.0f}/server-CPU-s "
                f"(server CPU {s['server_cpu']:.0%}, client CPU {s['client_cpu']:.0%}, "
                f"{s['errors']} errors, idle RSS {s['idle_rss_mib']:.1f} MiB, loaded "
                f"{s['loaded_rss_mib']:.1f} MiB, load {s['loadavg']}); slavesim --no-fast-path "
                f"{g['rate']:.0f}/s, {g['rate_per_cpu']:.0f}/server-CPU-s "
                f"(server CPU {g['server_cpu']:.0%}, {g['errors']} errors); baseline {b['rate']:.0f}/s, "
                f"{b['rate_per_cpu']:.0f}/server-CPU-s (server CPU {b['server_cpu']:.0%}, "
                f"{b['errors']} errors, RSS {b['idle_rss_mib']:.1f} MiB, load {b['loadavg']}); "
                f"baseline without form parsing {t['rate']:.0f}/s, "
                f"{t['rate_per_cpu']:.0f}/server-CPU-s (server CPU {t['server_cpu']:.0%})",
                flush=True,
            )

    def median(runs: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    rate, base = median(slavesim_runs, "rate"), median(baseline_runs, "rate")
    per_cpu, base_per_cpu = (
        median(slavesim_runs, "rate_per_cpu"),
        median(baseline_runs, "rate_per_cpu"),
    )
    idle, loaded = median(slavesim_runs, "idle_rss_mib"), median(slavesim_runs, "loaded_rss_mib")
    tuned, tuned_per_cpu = median(tuned_runs, "rate"), median(tuned_runs, "rate_per_cpu")
    general, general_per_cpu = median(general_runs, "rate"), median(general_runs, "rate_per_cpu")
    errors = sum(r["errors"] for r in slavesim_runs + general_runs + baseline_runs + tuned_runs)
    print()
    print(
        f"| median of {args.runs} runs | slavesim ({args.count} builders) | baseline (1 server) | ratio |"
    )
    print("|---|---|---|---|")
    print(f"| status calls/s (wall clock) | {rate:.0f} | {base:.0f} | {rate / base:.2f} |")
    print(
        f"| status calls per server CPU-second | {per_cpu:.0f} | {base_per_cpu:.0f} "
        f"| {per_cpu / base_per_cpu:.2f} |"
    )
    print(
        f"| status calls/s, slavesim --no-fast-path (all through twisted.web) | | {general:.0f}"
        f" | {rate / general:.2f} |"
    )
    print(
        f"| status calls per server CPU-second, slavesim --no-fast-path | | {general_per_cpu:.0f}"
        f" | {per_cpu / general_per_cpu:.2f} |"
    )
    print(f"| status calls/s, baseline without form parsing | | {tuned:.0f} | {rate / tuned:.2f} |")
    print(
        f"| status calls per server CPU-second, baseline without form parsing | "
        f"| {tuned_per_cpu:.0f} | {per_cpu / tuned_per_cpu:.2f} |"
    )
    print(f"| RSS idle | {idle:.1f} MiB | {median(baseline_runs, 'idle_rss_mib'):.1f} MiB | |")
    print(f"| RSS after the load | {loaded:.1f} MiB | | |")
    print(f"| bad answers (all runs) | {errors} | | |")


if __name__ == "__main__":
    main()
