"""``twistd -n buildmaster``: options, the embedded default, the demo, a clean Ctrl-C."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest
from twisted.python import usage

from buildmaster.tap import Options

ROOT = Path(__file__).resolve().parent.parent


def test_options_defaults_and_validation() -> None:
    options = Options()
    options.parseOptions([])
    settings = options.settings()
    assert settings.dsn is None  # the embedded private cluster
    assert settings.port == "tcp:8000:interface=127.0.0.1"
    assert settings.master.scan_interval == 15.0
    assert settings.master.socket_timeout == 40.0
    assert settings.master.virtualized_socket_timeout == 30.0
    assert settings.master.building_poll_max == 30.0
    assert settings.master.max_collections == 0  # no limit

    options = Options()
    options.parseOptions(
        [
            "--dsn",
            "host=db",
            "--port",
            "9000",
            "--scan-interval",
            "2",
            "--vm-resume-command",
            "/bin/reset %(vm_host)s",
            "--building-poll-max",
            "60",
            "--max-collections",
            "16",
        ]
    )
    settings = options.settings()
    assert (settings.dsn, settings.port, settings.master.scan_interval) == (
        "host=db",
        "tcp:9000:interface=127.0.0.1",
        2.0,
    )
    assert settings.master.vm_resume_command == "/bin/reset %(vm_host)s"
    assert settings.master.building_poll_max == 60.0
    assert settings.master.max_collections == 16

    for bad in (
        ["--scan-interval", "0"],
        ["--scan-interval", "soon"],
        ["--building-poll-max", "-1"],
        ["--max-collections", "-1"],
        ["--max-collections", "many"],
        ["--vm-resume-command", "reset %(nope)s"],
    ):
        with pytest.raises(usage.UsageError):
            Options().parseOptions(bad)


def _low_file_limit() -> None:
    """In the child: the common default soft limit of open files (the hard one untouched)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))


def _open_files_limits(pid: int) -> tuple[str, str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError("no open files limit")


def _twistd(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_low_file_limit,
    )


def _read_until(process: subprocess.Popen[bytes], needles: list[str], timeout: float) -> str:
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chunk = process.stdout.read()
        if chunk:
            seen += chunk.decode("utf-8", "replace")
        if all(n in seen for n in needles):
            return seen
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"did not see {needles} in:\n{seen[-4000:]}")


def test_twistd_demo_dispatches_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    state = tmp_path / "state"
    process = _twistd(
        [
            "-n",
            "--pidfile=",
            "buildmaster",
            "--demo",
            "--state-dir",
            str(state),
            "--port",
            "0",
            "--scan-interval",
            "1",
            "--demo-builders",
            "4",
        ],
        tmp_path,
    )
    try:
        output = _read_until(
            process,
            [
                "frog (http://localhost:9221/) marked as failed due to: (111, 'Connection refused')",
                "Dispatched PACKAGEBUILD-",
                "FULLYBUILT",
            ],
            90,
        )
        dsn_port = (state / "postgres" / "data" / "postmaster.pid").read_text().splitlines()[3]
        # started with a soft limit of 1,024 open files: raised to the hard limit (a few
        # connections kept open to every builder need more than that on a big farm)
        soft, hard = _open_files_limits(process.pid)
        assert soft == hard, (soft, hard)
        process.send_signal(signal.SIGINT)  # Ctrl-C
        assert process.stdout is not None
        os.set_blocking(process.stdout.fileno(), True)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    output += rest.decode("utf-8", "replace")
    # twistd shuts down cleanly, then re-raises the signal to report how it ended
    assert process.returncode in (0, -signal.SIGINT), output[-3000:]
    assert "buildmaster stopped" in output
    assert "Traceback" not in output
    # the start-up's objects are out of the garbage collector's passes (buildmaster.gctuning)
    assert "objects of the start-up frozen out of its passes" in output
    # the private cluster is down, and its data kept for the next start
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(
            f"host=127.0.0.1 port={dsn_port} user=postgres dbname=postgres", connect_timeout=2
        )
    assert (state / "postgres" / "data" / "PG_VERSION").exists()
    assert not (state / "postgres" / "data" / "postmaster.pid").exists()


def test_result_download_options() -> None:
    options = Options()
    options.parseOptions([])
    master = options.settings().master
    assert master.max_result_bytes == 8 * 1024**3
    assert master.max_result_files == 1000
    assert master.result_downloads == 4
    assert (master.download_idle_timeout, master.download_min_rate) == (60.0, 65536.0)

    options = Options()
    options.parseOptions(
        [
            "--max-result-bytes",
            "20G",
            "--max-result-files",
            "5000",
            "--result-downloads",
            "2",
            "--download-idle-timeout",
            "300",
            "--download-min-rate",
            "1024",
        ]
    )
    master = options.settings().master
    assert master.max_result_bytes == 20 * 1024**3
    assert master.max_result_files == 5000
    assert master.result_downloads == 2
    assert (master.download_idle_timeout, master.download_min_rate) == (300.0, 1024.0)
    options = Options()
    options.parseOptions(["--max-result-bytes", "512MiB"])
    assert options.settings().master.max_result_bytes == 512 * 1024**2

    for bad in (
        ["--max-result-bytes", "0"],
        ["--max-result-bytes", "lots"],
        ["--max-result-files", "0"],
        ["--result-downloads", "0"],
        ["--download-idle-timeout", "0"],
        ["--download-min-rate", "-5"],
    ):
        with pytest.raises(usage.UsageError):
            Options().parseOptions(bad)
