"""The systemd units of packaging/systemd: systemd finds nothing wrong with them, and their
command lines, with the example options, start a master, a web-only process and a farm of
simulated builders that stop cleanly on SIGTERM (what ``systemctl stop`` sends)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "packaging" / "systemd"
#: where the units expect buildmaster's virtualenv
INSTALLED = "/opt/buildmaster"
VENV = Path(sys.executable).parent.parent


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_finds_nothing_wrong_with_the_units(tmp_path: Path) -> None:
    for unit in ("buildmaster.service", "buildmaster-web.service", "slavesim.service"):
        # this test's virtualenv where the units expect buildmaster's
        text = (UNITS / unit).read_text().replace(INSTALLED, str(VENV))
        (tmp_path / unit).write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", *(str(p) for p in sorted(tmp_path.iterdir()))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def _command(unit: str, env_file: str, variable: str, example: int) -> list[str]:
    """The unit's ExecStart with ``$variable`` set as in the ``example``-th (0: the first)
    setting of it in ``env_file``, commented out or not."""
    [line] = [
        line for line in (UNITS / unit).read_text().splitlines() if line.startswith("ExecStart=")
    ]
    settings = [
        line.lstrip("#").removeprefix(f"{variable}=")
        for line in (UNITS / env_file).read_text().splitlines()
        if line.lstrip("#").startswith(f"{variable}=")
    ]
    argv: list[str] = []
    for word in shlex.split(line.removeprefix("ExecStart=")):
        argv += shlex.split(settings[example]) if word == f"${variable}" else [word]
    assert argv[0] == f"{INSTALLED}/bin/twistd"
    return argv


def _replace(argv: list[str], values: dict[str, str], paths: dict[str, Path]) -> list[str]:
    """``argv`` with the values of the options ``values`` replaced and ``paths`` moved."""
    out = [str(VENV / "bin" / "twistd")]
    for i, word in enumerate(argv[1:], start=1):
        if argv[i - 1] in values:
            word = values[argv[i - 1]]
        for old, new in paths.items():
            word = word.replace(old, str(new))
        out.append(word)
    return out


def _run_until(
    argv: list[str], cwd: Path, ready: Callable[[str], bool], clean: frozenset[int]
) -> str:
    """Start ``argv``; once ``ready(output)``, SIGTERM it; it must end with a status of
    ``clean`` (a negative one: the signal that ended it). Its output."""
    process = subprocess.Popen(
        argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ)
    )
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    output = ""
    try:
        deadline = time.monotonic() + 90
        while not ready(output):
            assert process.poll() is None, output[-3000:]
            assert time.monotonic() < deadline, output[-3000:]
            output += (process.stdout.read() or b"").decode("utf-8", "replace")
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        os.set_blocking(process.stdout.fileno(), True)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    output += rest.decode("utf-8", "replace")
    assert process.returncode in clean, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    return output


def test_the_master_units_command_line_starts_a_master_of_several(tmp_path: Path, dsn: str) -> None:
    """The example for several masters: a database, a shared files directory."""
    argv = _replace(
        _command("buildmaster.service", "master.env.example", "BUILDMASTER_OPTIONS", 1),
        {"--dsn": dsn, "--port": "tcp:0:interface=127.0.0.1"},
        {"/var/lib/buildmaster": tmp_path / "state", "/srv/buildmaster/files": tmp_path / "f"},
    )
    assert "--files-dir" in argv and "--logfile=-" in argv
    # the master ends its process with status 0 after a SIGTERM
    output = _run_until(
        argv, tmp_path, lambda seen: "buildmaster is running" in seen, frozenset({0})
    )
    assert f"Librarian files in {tmp_path / 'f'} (farm " in output
    assert "librarian at http://farm.example.com:8000/librarian/" in output
    assert "buildmaster stopped" in output
    assert (tmp_path / "f" / "farm-id").exists()


def test_the_web_units_command_line_serves_the_farm_of_a_master(tmp_path: Path, dsn: str) -> None:
    """The web unit's example beside the master unit's example for several masters: the
    same database and files directory; it answers the API and stops on SIGTERM."""
    paths = {"/var/lib/buildmaster": tmp_path / "state", "/srv/buildmaster/files": tmp_path / "f"}
    master = _replace(
        _command("buildmaster.service", "master.env.example", "BUILDMASTER_OPTIONS", 1),
        {"--dsn": dsn, "--port": "tcp:0:interface=127.0.0.1"},
        paths,
    )
    _run_until(master, tmp_path, lambda seen: "buildmaster is running" in seen, frozenset({0}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    web = _replace(
        _command("buildmaster-web.service", "web.env.example", "BUILDMASTER_OPTIONS", 0),
        {"--dsn": dsn, "--port": f"tcp:{port}:interface=127.0.0.1"},
        paths,
    )
    assert "--web-only" in web and web[web.index("--state-dir") + 1] == str(tmp_path / "state-web")
    # the web unit's state directory, which systemd makes
    (tmp_path / "state-web").mkdir(mode=0o700)
    answers: list[bytes] = []

    def serving(seen: str) -> bool:
        if "buildmaster is running, web only" not in seen:
            return False
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"GET /api/v1/builders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answers.append(b"".join(iter(lambda: c.recv(65536), b"")))
        return True

    output = _run_until(web, tmp_path, serving, frozenset({0}))
    assert answers[0].startswith(b"HTTP/1.1 200 "), answers[0][:300]
    assert b'"builders":[]' in answers[0]
    assert "librarian at http://api.example.com:8080/librarian/" in output


def test_the_slavesim_units_command_line_starts_builders(tmp_path: Path) -> None:
    argv = _replace(
        _command("slavesim.service", "slavesim.env.example", "SLAVESIM_OPTIONS", 0),
        {"--count": "2", "--port": "0", "--interface": "127.0.0.1", "--url-host": "127.0.0.1"},
        {"/var/lib/slavesim": tmp_path / "state", "/var/cache/slavesim": tmp_path / "cache"},
    )
    (tmp_path / "state").mkdir()  # systemd makes StateDirectory= and CacheDirectory=
    (tmp_path / "cache").mkdir()
    listing = tmp_path / "state" / "builders.jsonl"

    def listed() -> bool:
        return listing.exists() and len(listing.read_text().splitlines()) == 2

    def answers(seen: str) -> bool:
        if not listed():
            return False
        for line in listing.read_text().splitlines():
            url = json.loads(line)["url"]
            host, port = url.split("//")[1].strip("/").split(":")
            socket.create_connection((host, int(port)), timeout=5).close()
        return True

    # twistd ends by the signal itself, which systemd counts as a clean exit for SIGTERM
    output = _run_until(argv, tmp_path, answers, frozenset({0, -signal.SIGTERM}))
    assert "Received SIGTERM, shutting down." in output
