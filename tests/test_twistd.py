"""``twistd -n buildmaster``: options, the embedded default, the demo, a clean Ctrl-C, and
start-up failures that end the process at once with one line saying what to fix."""

from __future__ import annotations

import configparser
import os
import resource
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import pytest_twisted
from twisted.python import usage

from buildmaster.store.cluster import PostgresCluster, free_port
from buildmaster.tap import Options

ROOT = Path(__file__).resolve().parent.parent
#: A failed start must end the process in seconds, not minutes (generous for a loaded CI).
QUICKLY = 30.0


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
    assert settings.master.stuck_timeout == 300.0
    assert (settings.master.fault_retry_initial, settings.master.fault_retry_max) == (15.0, 600.0)
    assert settings.master.session_lease == 10.0

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
            "--stuck-timeout",
            "900",
            "--fault-retry",
            "2",
            "--session-lease",
            "4",
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
    assert settings.master.stuck_timeout == 900.0
    assert settings.master.fault_retry_initial == 2.0
    assert settings.master.session_lease == 4.0

    for bad in (
        ["--scan-interval", "0"],
        ["--scan-interval", "soon"],
        ["--building-poll-max", "-1"],
        ["--max-collections", "-1"],
        ["--max-collections", "many"],
        ["--session-lease", "0"],
        ["--vm-resume-command", "reset %(nope)s"],
    ):
        with pytest.raises(usage.UsageError):
            Options().parseOptions(bad)


def _settings(*argv: str) -> Any:
    options = Options()
    options.parseOptions(list(argv))
    return options.settings()


def test_demo_changes_only_the_defaults_of_options_not_given() -> None:
    demo = _settings("--demo")
    assert demo.master.scan_interval == 5.0
    assert demo.master.vm_resume_command == "true %(vm_host)s"
    given = _settings(
        "--demo", "--scan-interval", "15", "--vm-resume-command", "/bin/reset %(vm_host)s"
    )
    assert given.master.scan_interval == 15.0
    assert given.master.vm_resume_command == "/bin/reset %(vm_host)s"
    assert _settings().master.vm_resume_command is None


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--librarian-url", "ftp://master/librarian/"], "not an http:// or https:// URL"),
        (["--librarian-url", "master:8000/librarian/"], "not an http:// or https:// URL"),
        (["--librarian-url", "http:///librarian/"], "not an http:// or https:// URL"),
        (["--librarian-url", "http://master:http/librarian/"], "Port could not be cast"),
        (["--build-url", "https://farm/builds/{id}"], "unknown field {id}"),
        (["--build-url", "https://farm/builds/"], "does not use {build_id}"),
        (["--primary-archive-url", "http://archive/{distro}"], "unknown field {distro}"),
        (["--primary-archive-url", "http://archive/{distribution"], "brace"),
        (["--primary-archive-url", "http://archive/{0}"], "unknown field {0}"),
        (["--ppa-url", "http://ppa/{owner}/{distribution}"], "does not use {name}"),
        (["--ppa-url", "http://ppa/{owner!r}/{name}"], "unknown field {owner}"),
        (["--private-ppa-url", "file:///srv/{owner}/{name}"], "not an http:// or https:// URL"),
        (["--private-ppa-url", "https://u:pw@ppa/{owner}/{name}"], "must not hold credentials"),
        (["--dsn", "host=db dbname"], "--dsn 'host=db dbname'"),
        (["--dsn", "nonsense=1"], 'invalid connection option "nonsense"'),
    ],
)
def test_bad_urls_and_connection_strings_are_usage_errors(argv: list[str], complaint: str) -> None:
    with pytest.raises(usage.UsageError) as info:
        Options().parseOptions(argv)
    assert complaint in str(info.value)


def test_good_urls_pass() -> None:
    settings = _settings(
        "--librarian-url",
        "https://master.example:8443/librarian/",
        "--build-url",
        "https://farm.example/builds/{build_id}?a={{b}}",
        "--primary-archive-url",
        "http://[2001:db8::1]/{distribution}",
        "--ppa-url",
        "http://ppa.example/{owner}/{name}/{distribution}",
        "--private-ppa-url",
        "https://private.example/{owner}/{name}",
    )
    assert settings.librarian_url == "https://master.example:8443/librarian/"
    assert settings.master.archive_urls.private_ppa == "https://private.example/{owner}/{name}"


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


def test_twistd_demo_dispatches_and_stops_cleanly_on_ctrl_c(reachable_tmp: Path) -> None:
    state = reachable_tmp / "state"
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
        reachable_tmp,
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
        # started with a soft limit of 1,024 open files: raised to the hard limit (a few
        # connections kept open to every builder need more than that on a big farm)
        soft, hard = _open_files_limits(process.pid)
        assert soft == hard, (soft, hard)
        # Ctrl-C in a terminal, and tox passing a signal on right after: both arrive before
        # the stop can be over (it stops the private cluster, among others)
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGTERM)
        assert process.stdout is not None
        os.set_blocking(process.stdout.fileno(), True)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    output += rest.decode("utf-8", "replace")
    # a stop that was asked for is a success
    assert process.returncode == 0, output[-3000:]
    assert "buildmaster stopped" in output, output[-3000:]
    assert "Received SIGINT, shutting down." in output, output[-3000:]
    assert "Received SIGTERM while stopping: still stopping" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    # downloads make HTTP client factories, one per connection: they say nothing about it
    assert "Starting factory" not in output and "Stopping factory" not in output
    # the start-up's objects are out of the garbage collector's passes (buildmaster.gctuning)
    assert "objects of the start-up frozen out of its passes" in output
    # the private cluster is down, and its data kept for the next start
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(
            f"host={state / 'postgres'} port=5432 user=postgres dbname=postgres",
            connect_timeout=2,
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


# -- start-up failures ------------------------------------------------------------------------


def _failed_start(
    args: Sequence[str],
    cwd: Path,
    prefix: Sequence[str] = (),
    preexec_fn: Callable[[], None] | None = _low_file_limit,
) -> str:
    """Run ``twistd -n --pidfile= buildmaster ARGS``; check that it ends in seconds with
    status 1 and no traceback; its output."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = [*prefix, sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    started = time.monotonic()
    try:
        done = subprocess.run(
            [*argv, "-n", "--pidfile=", "buildmaster", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
            timeout=120,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"still running after 120 s: {e.output!r}") from None
    took = time.monotonic() - started
    output = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 1, output[-3000:]
    assert took < QUICKLY, (took, output[-3000:])
    assert "Traceback" not in output, output[-3000:]
    return output


def _reason(output: str) -> str:
    """The one line that says why the master did not start."""
    lines = [line for line in output.splitlines() if "buildmaster cannot start: " in line]
    assert len(lines) == 1, output[-3000:]
    return lines[0].split("buildmaster cannot start: ", 1)[1]


@pytest.fixture
def listening() -> Iterator[int]:
    """A port of 127.0.0.1 that something listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def stranger_dsn(pg_cluster: PostgresCluster) -> Iterator[str]:
    """A role that exists but that the cluster does not let us log in as."""
    conn = psycopg2.connect(pg_cluster.dsn())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE ROLE intruder LOGIN")
    try:
        yield pg_cluster.dsn(user="intruder")
    finally:
        with conn.cursor() as cur:
            cur.execute("DROP ROLE intruder")
        conn.close()


def test_unresolvable_database_host(tmp_path: Path) -> None:
    dsn = "host=no-such-host.invalid dbname=buildmaster"
    output = _failed_start(["--dsn", dsn, "--state-dir", str(tmp_path / "s")], tmp_path)
    reason = _reason(output)
    assert reason.startswith("cannot connect to the database (dbname=buildmaster host=")
    assert 'could not translate host name "no-such-host.invalid"' in reason
    assert "check --dsn" in reason


def test_malformed_dsn(tmp_path: Path) -> None:
    output = _failed_start(["--dsn", "host=db dbname", "--state-dir", str(tmp_path)], tmp_path)
    assert output.splitlines()[-1].endswith(
        '--dsn \'host=db dbname\': invalid dsn: missing "=" after "dbname" in connection info'
        " string"
    ), output[-1000:]


def test_database_refuses_the_connection(tmp_path: Path) -> None:
    dsn = f"host=127.0.0.1 port={free_port()} dbname=buildmaster user=master password=secret"
    output = _failed_start(["--dsn", dsn, "--state-dir", str(tmp_path)], tmp_path)
    reason = _reason(output)
    assert "Connection refused" in reason
    assert "password=secret" not in output  # the connection string is shown without it
    assert "password=..." in reason


def test_database_does_not_let_us_in(tmp_path: Path, stranger_dsn: str) -> None:
    output = _failed_start(["--dsn", stranger_dsn, "--state-dir", str(tmp_path)], tmp_path)
    assert 'Peer authentication failed for user "intruder"' in _reason(output)


def test_state_dir_that_is_a_file(tmp_path: Path, dsn: str) -> None:
    (tmp_path / "state").write_text("")
    output = _failed_start(["--dsn", dsn, "--state-dir", str(tmp_path / "state")], tmp_path)
    assert _reason(output) == (
        f"the state directory {tmp_path / 'state'} is not a directory: fix --state-dir"
    )


def test_state_dir_that_is_read_only(tmp_path: Path, dsn: str) -> None:
    (tmp_path / "ro").mkdir(mode=0o500)
    # root may write anywhere: without CAP_DAC_OVERRIDE it keeps to the mode bits
    prefix = (
        ["setpriv", "--inh-caps=-dac_override", "--bounding-set=-dac_override"]
        if os.geteuid() == 0
        else []
    )
    for state in (tmp_path / "ro", tmp_path / "ro" / "state"):
        output = _failed_start(["--dsn", dsn, "--state-dir", str(state)], tmp_path, prefix)
        assert _reason(output) == (
            f"the state directory {state} is not usable (Permission denied): give --state-dir"
            " a directory this user may write to"
        )


def test_port_in_use(tmp_path: Path, dsn: str, listening: int) -> None:
    output = _failed_start(
        ["--dsn", dsn, "--state-dir", str(tmp_path), "--port", str(listening)], tmp_path
    )
    assert _reason(output) == (
        f"cannot listen on tcp:{listening}:interface=127.0.0.1 ([Errno 98] Address already in"
        " use): choose another --port, or stop what listens there"
    )


@pytest.mark.parametrize(
    ("port", "complaint"),
    [
        ("tcp:http", "--port 'tcp:http' is not a port number or an endpoint description"),
        ("nonsense:1", "--port 'nonsense:1' is not a port number or an endpoint description"),
        ("99999", "cannot listen on tcp:99999:interface=127.0.0.1: bind(): port must be 0-65535;"),
    ],
)
def test_bad_port(tmp_path: Path, dsn: str, port: str, complaint: str) -> None:
    output = _failed_start(["--dsn", dsn, "--state-dir", str(tmp_path), "--port", port], tmp_path)
    assert _reason(output).startswith(complaint), _reason(output)


def test_a_wildcard_address_needs_a_librarian_url(tmp_path: Path, dsn: str) -> None:
    output = _failed_start(
        ["--dsn", dsn, "--state-dir", str(tmp_path), "--port", "tcp:0"], tmp_path
    )
    reason = _reason(output)
    assert reason.startswith("--port tcp:0 listens on every address")
    assert "pass --librarian-url http://<this machine's name>:" in reason


def test_too_few_files_for_the_registered_builders(tmp_path: Path, dsn: str) -> None:
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO builder (name, title, url) VALUES (%s, '', %s)",
            [(f"b{i}", f"http://b{i}:8221/") for i in range(50)],
        )
    conn.close()

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))

    output = _failed_start(
        ["--dsn", dsn, "--state-dir", str(tmp_path), "--port", "0"], tmp_path, preexec_fn=limit
    )
    assert _reason(output) == (
        "50 registered builders need up to 437 open files (128 + 9 database connections + 6 per"
        " builder), but this process may open only 300: its hard limit is 300: raise it"
        " (LimitNOFILE=437 in a systemd unit, nofile in /etc/security/limits.conf)"
    )


def test_the_demo_of_tox_fails_loudly_when_its_port_is_taken(
    reachable_tmp: Path, listening: int
) -> None:
    """``tox -e demo`` runs this command and no longer ignores its status."""
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    [command] = [c for c in tox["testenv:demo"]["commands"].splitlines() if c.strip()]
    argv = shlex.split(command)
    assert argv[:5] == ["twistd", "-n", "--pidfile=", "buildmaster", "--demo"], argv
    state = reachable_tmp / "state"
    output = _failed_start(
        ["--demo", "--state-dir", str(state), "--port", str(listening)], reachable_tmp
    )
    assert "Address already in use" in _reason(output)
    # what had started is stopped again: the private cluster too
    assert not (state / "postgres" / "data" / "postmaster.pid").exists()


# -- the librarian's files directory ----------------------------------------------------------


def test_files_dir_option() -> None:
    assert _settings().files_dir is None  # librarian/ in the state directory
    assert _settings("--files-dir", "shared/files").files_dir == Path("shared/files").absolute()


def test_files_dir_that_is_a_file(tmp_path: Path, dsn: str) -> None:
    (tmp_path / "files").write_text("")
    output = _failed_start(
        ["--dsn", dsn, "--state-dir", str(tmp_path / "s"), "--files-dir", str(tmp_path / "files")],
        tmp_path,
    )
    assert _reason(output) == (
        f"the files directory {tmp_path / 'files'} is not a directory: fix --files-dir"
    )


def test_files_dir_that_cannot_be_made_or_written(tmp_path: Path, dsn: str) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "ro").mkdir(mode=0o500)
    prefix = (
        ["setpriv", "--inh-caps=-dac_override", "--bounding-set=-dac_override"]
        if os.geteuid() == 0
        else []
    )
    for files, why in [
        (tmp_path / "file" / "files", "Not a directory"),
        (tmp_path / "ro", "Permission denied"),
        (tmp_path / "ro" / "files", "Permission denied"),
    ]:
        output = _failed_start(
            ["--dsn", dsn, "--state-dir", str(tmp_path / "s"), "--files-dir", str(files)],
            tmp_path,
            prefix,
        )
        assert _reason(output) == (
            f"the files directory {files} is not usable ({why}): give --files-dir a directory"
            " this user may write to"
        )


def test_files_dir_of_another_farm(tmp_path: Path, dsn: str) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "farm-id").write_text("0b3cb2a4-54a2-4d57-8d0e-36b7c8e1a0f2\n")
    output = _failed_start(
        ["--dsn", dsn, "--state-dir", str(tmp_path / "s"), "--files-dir", str(files)], tmp_path
    )
    reason = _reason(output)
    assert reason.startswith(
        f"the files directory {files} belongs to another farm (its farm-id names"
        " 0b3cb2a4-54a2-4d57-8d0e-36b7c8e1a0f2; this database is farm "
    ), reason
    assert (files / "farm-id").read_text() == "0b3cb2a4-54a2-4d57-8d0e-36b7c8e1a0f2\n"


@pytest_twisted.ensureDeferred
async def test_a_files_dir_of_its_own_while_the_farm_shares_one(
    tmp_path: Path, dsn: str, db: Any
) -> None:
    """The farm's masters use a shared directory (marked); a master given a fresh local one
    does not start, and says where the farm's files are."""
    from twisted.internet import defer

    from buildmaster.librarian.farm import claim_files_dir, farm_identity

    shared = tmp_path / "shared"
    shared.mkdir()
    farm = await farm_identity(db)
    await claim_files_dir(db, shared, farm.id, defer.maybeDeferred)
    local = tmp_path / "local"
    output = _failed_start(
        ["--dsn", dsn, "--state-dir", str(tmp_path / "s"), "--files-dir", str(local)], tmp_path
    )
    reason = _reason(output)
    assert reason.startswith(f"the files directory {local} has no farm-id file"), reason
    assert "give --files-dir the directory the other masters of this database use" in reason
    assert not (local / "farm-id").exists()
