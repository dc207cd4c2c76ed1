"""Librarian benchmark: serving a 1 GiB file to 20 concurrent clients, and storing it.

    python benchmarks/librarian_bench.py [--runs 5] [--clients 20] [--size-mib 1024]

Starts a throwaway PostgreSQL cluster, writes a random file of ``--size-mib`` MiB, and starts
``librarian_server.py`` (the "master"): it stores the file through ``Librarian.addFile``
``--uploads`` times (MB/s, and its RSS growth during each upload) and then serves it. Then, per
run, ``--clients`` concurrent ``curl`` processes download the whole file from each server in
turn, and the aggregate throughput is total bytes / wall time:

* nginx (Debian package; one worker, sendfile on, started here on 127.0.0.1, stopped after);
* stock ``twisted.web.static.File`` (in the master process);
* the librarian's resource (sendfile rounds), and the same with sendfile off (threaded reads).

The master's RSS is sampled every 20 ms during each of its download rounds. Results are
printed as a Markdown table (medians and per-run ratios to nginx) and as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg2

from buildmaster.store.cluster import PostgresCluster, free_port

HERE = Path(__file__).resolve().parent


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class RssSampler(threading.Thread):
    """Samples a process's RSS every 20 ms until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.before = rss_bytes(pid)
        self.peak = self.before
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.02):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak - self.before


def download_all(url: str, clients: int, size: int, timeout: float) -> float:
    """Start ``clients`` curls at once; the aggregate bytes per second over the wall time."""
    argv = ["curl", "-s", "-S", "-o", "/dev/null", "-w", "%{size_download}", "--max-time"]
    argv += [str(timeout), url]
    start = time.perf_counter()
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(clients)]
    outputs = [p.communicate()[0] for p in procs]
    elapsed = time.perf_counter() - start
    for p, out in zip(procs, outputs, strict=True):
        if p.returncode != 0 or int(out or 0) != size:
            raise RuntimeError(f"{url}: curl exited {p.returncode} after {out} bytes of {size}")
    return clients * size / elapsed


def make_source(path: Path, size_mib: int) -> None:
    block = os.urandom(1024 * 1024)
    with path.open("wb") as f:
        for i in range(size_mib):
            # distinct blocks, cheaply: vary the first 8 bytes
            f.write(i.to_bytes(8, "big") + block[8:])


def start_nginx(workdir: Path, docroot: Path) -> tuple[subprocess.Popen[bytes], int]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise SystemExit("nginx is missing: apt-get install nginx-light (or nginx)")
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
master_process on;
user root;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    sendfile on;
    tcp_nopush on;
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {docroot};
    }}
}}
"""
    )
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(workdir)])
    for _ in range(100):
        try:
            subprocess.run(
                ["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/"],
                check=True,
                timeout=1,
            )
            return proc, port
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit("nginx did not start; see " + str(workdir / "nginx-error.log"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--uploads", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    options = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="librarian-bench-"))
    os.chmod(workdir, 0o755)
    docroot = workdir / "docroot"
    docroot.mkdir()
    source = docroot / "chroot.tar"
    make_source(source, options.size_mib)
    size = source.stat().st_size

    cluster = PostgresCluster.throwaway_cluster(fsync=False)
    cluster.start()
    server: subprocess.Popen[str] | None = None
    nginx: subprocess.Popen[bytes] | None = None
    try:
        conn = psycopg2.connect(cluster.dsn("postgres"))
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE bench")
        conn.close()
        dsn = cluster.dsn("bench")
        subprocess.run(
            [sys.executable, "-m", "buildmaster.store.schema", "--dsn", dsn],
            check=True,
            capture_output=True,
            cwd=HERE.parent,
        )
        server = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "librarian_server.py"),
                "--dsn",
                dsn,
                "--root",
                str(workdir / "librarian"),
                "--source",
                str(source),
                "--uploads",
                str(options.uploads),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=HERE.parent,
            env={**os.environ, "PYTHONPATH": str(HERE.parent)},
        )
        assert server.stdout is not None
        uploads: list[dict[str, Any]] = []
        serving: dict[str, Any] = {}
        for line in server.stdout:
            event = json.loads(line)
            print(json.dumps(event), file=sys.stderr)
            if event["kind"] == "upload":
                uploads.append(event)
            elif event["kind"] == "serving":
                serving = event
                break
        if not serving:
            raise SystemExit("the master process did not start serving")
        if options.runs == 0:  # uploads only
            report(options, {}, {}, uploads, size)
            return
        nginx, nginx_port = start_nginx(workdir, docroot)
        urls = {
            "nginx": f"http://127.0.0.1:{nginx_port}/{source.name}",
            "static.File": serving["static"],
            "librarian": serving["librarian"],
            "librarian (no sendfile)": serving["plain"],
        }
        for url in urls.values():  # warm up: every file in the page cache, as in production
            download_all(url, 1, size, options.timeout)
        results: dict[str, list[float]] = {name: [] for name in urls}
        rss: dict[str, list[int]] = {name: [] for name in urls if name != "nginx"}
        names = list(urls)
        for run in range(options.runs):
            # a different order each run: load from elsewhere on the machine hits each alike
            order = names[run % len(names) :] + names[: run % len(names)]
            for name in order:
                url = urls[name]
                sampler = RssSampler(serving["pid"]) if name != "nginx" else None
                if sampler:
                    sampler.start()
                rate = download_all(url, options.clients, size, options.timeout)
                if sampler:
                    rss[name].append(sampler.stop())
                results[name].append(rate)
                print(f"run {run}: {name}: {rate / 1e9:.2f} GB/s", file=sys.stderr)
    finally:
        if nginx is not None:
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(timeout=30)
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    report(options, results, rss, uploads, size)
    if options.json:
        options.json.write_text(
            json.dumps({"downloads": results, "rss_growth": rss, "uploads": uploads}, indent=2)
        )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def report(
    options: argparse.Namespace,
    results: dict[str, list[float]],
    rss: dict[str, list[int]],
    uploads: list[dict[str, Any]],
    size: int,
) -> None:
    mib = 1024 * 1024
    print(f"\nMachine: {os.cpu_count()} CPUs, {cpu_model()}; Python {platform.python_version()}")
    print(
        f"{options.clients} concurrent curl clients, {size // mib} MiB file,"
        f" {options.runs} runs (medians; ratios per run to nginx, then their median)\n"
    )
    if results:
        print("| server | median GB/s | runs GB/s | ratio to nginx (median) | master RSS growth |")
        print("|---|---|---|---|---|")
    for name, rates in results.items():
        nginx = results["nginx"]
        ratios = [r / n for r, n in zip(rates, nginx, strict=True)]
        growth = f"{max(rss[name]) / mib:.1f} MiB max" if name in rss else "-"
        print(
            f"| {name} | {statistics.median(rates) / 1e9:.2f} |"
            f" {' '.join(f'{r / 1e9:.2f}' for r in rates)} |"
            f" {statistics.median(ratios):.2f} | {growth} |"
        )
    rates = [u["mb_per_s"] for u in uploads]
    upload_growth = [u["rss_growth"] / mib for u in uploads]
    cpu = [u["cpu_seconds"] / (size / 1024**3) for u in uploads]
    print(
        f"\nUpload (addFile of the {size // mib} MiB file, hash + write + fsync + rename + rows):"
        f" median {statistics.median(rates):.0f} MB/s (runs: {', '.join(f'{r:.0f}' for r in rates)});"
        f" master CPU {statistics.median(cpu):.2f} s per GiB (all threads);"
        f" master RSS growth max {max(upload_growth):.1f} MiB"
    )


if __name__ == "__main__":
    main()
