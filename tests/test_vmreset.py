"""The VM reset command: its template, the names it is given, its environment, and the
warning when virtualized builders have none."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import pytest_twisted
from twisted.python import usage

from buildmaster.config import MasterConfig
from buildmaster.names import InvalidName, check_builder_name, check_vm_host
from buildmaster.sampledata import load_sample_data
from buildmaster.store import ConstraintViolation, Database, Store
from buildmaster.store.schema import LATEST, load_migrations, migrate
from buildmaster.tap import Options
from buildmaster.vmreset import (
    COMMAND_PATH,
    VMResetFailed,
    check_template,
    reset_vm,
    resume_argv,
)

#: names a builder's row must never give the command: options, several words, shell syntax
HOSTILE = [
    "-rf",
    "--config=/etc/shadow",
    "-",
    "two words",
    "tab\there",
    "new\nline",
    "host;reboot",
    "$(id)",
    "`id`",
    "a|b",
    "a&b",
    "../../etc",
    "/abs/path",
    "quote'd",
    'quote"d',
    "*",
    "a>b",
    "",
    "x" * 300,
]


# -- the template ----------------------------------------------------------------------


def test_a_template_must_name_the_builder() -> None:
    for good in [
        "reset %(vm_host)s",
        "reset --host=%(vm_host)s --builder %(buildd_name)s",
        "reset %(vm_host)s.vms.example.com",
        "reset %(buildd_name)s",  # VMs named after their builders
        "/usr/local/bin/reset 100%% %(vm_host)s",
    ]:
        assert check_template(good)
    for bad, why in [
        ("", "empty"),
        ("   ", "empty"),
        ("reset-all-vms", "neither"),
        ("reset --host=everything", "neither"),
        ("%(vm_host)s-reset now", "program"),
        ("/opt/%(buildd_name)s/reset %(vm_host)s", "program"),
        ("reset %(nope)s", "nope"),
        ("reset 100% %(vm_host)s", "percent"),
        ("reset %(vm_host)d", "vm_host"),
        ("reset 'unclosed %(vm_host)s", "quotation"),
    ]:
        with pytest.raises(ValueError, match=why):
            check_template(bad)


def test_a_bad_template_is_refused_by_the_config_and_the_command_line() -> None:
    with pytest.raises(ValueError, match="neither"):
        MasterConfig(vm_resume_command="reset-all-vms")
    for bad in ["reset-all-vms", "reset %(nope)s", "%(vm_host)s"]:
        with pytest.raises(usage.UsageError):
            Options().parseOptions(["--vm-resume-command", bad])
    options = Options()
    options.parseOptions(["--vm-resume-command", "/bin/reset %(buildd_name)s"])
    assert options.settings().master.vm_resume_command == "/bin/reset %(buildd_name)s"


# -- the names -------------------------------------------------------------------------


def test_the_names_become_single_plain_arguments() -> None:
    template = "reset --host=%(vm_host)s %(vm_host)s %(buildd_name)s"
    assert resume_argv(template, "vm-7.example.com", "bob") == [
        "reset",
        "--host=vm-7.example.com",
        "vm-7.example.com",
        "bob",
    ]
    # no vm_host: the builder's name stands in
    assert resume_argv(template, None, "bob")[2] == "bob"
    assert resume_argv(template, "fe80::1", "x86-64.builder+1")[2:] == [
        "fe80::1",
        "x86-64.builder+1",
    ]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_name_that_could_change_the_command_is_refused(name: str) -> None:
    template = "reset %(vm_host)s %(buildd_name)s"
    if name:  # an empty vm_host means "none": the builder's name is used
        with pytest.raises(VMResetFailed, match="VM reset refused: bad VM host"):
            resume_argv(template, name, "bob")
    with pytest.raises(VMResetFailed, match="VM reset refused: bad builder name"):
        resume_argv(template, "vm.example.com", name)
    with pytest.raises(InvalidName):
        check_builder_name(name)
    with pytest.raises(InvalidName):
        check_vm_host(name)


@pytest_twisted.ensureDeferred
async def test_the_store_and_the_schema_refuse_such_names(store: Store) -> None:
    seeded = await load_sample_data(store)
    builder = await store.builders.new(
        "vm-builder", "http://vm:8221/", [seeded.processor_386], virtualized=True, vm_host="h1"
    )
    for name in HOSTILE:
        with pytest.raises(InvalidName):
            await store.builders.new(name, "http://x:8221/", [seeded.processor_386])
        if name:
            with pytest.raises(InvalidName):
                await store.builders.new(
                    "fine", "http://x:8221/", [seeded.processor_386], vm_host=name
                )
            with pytest.raises(InvalidName):
                await store.builders.set_vm_host(builder, name)
        # and whatever writes to the table by hand
        with pytest.raises(ConstraintViolation, match="builder_name"):
            await store.db.execute("UPDATE builder SET name = %s WHERE id = %s", (name, builder.id))
        with pytest.raises(ConstraintViolation, match="builder_vm_host_valid"):
            await store.db.execute(
                "UPDATE builder SET vm_host = %s WHERE id = %s", (name, builder.id)
            )
    assert (await store.builders.get(builder)).vm_host == "h1"
    assert (await store.builders.set_vm_host(builder, None)).vm_host is None


@pytest_twisted.ensureDeferred
async def test_the_migration_names_the_builders_to_fix(reactor: Any, empty_dsn: str) -> None:
    db = Database(reactor, empty_dsn, size=1)
    await db.connect()
    try:
        # a database as the previous version left it, with a builder whose vm_host would be
        # an option of the command, and one with an empty vm_host (that meant "none")
        migrations = load_migrations()
        index = next(i for i, m in enumerate(migrations) if m.name == "builder_names_are_arguments")
        await db.execute(
            "CREATE TABLE schema_version (version integer PRIMARY KEY, name text NOT NULL,"
            " applied timestamptz NOT NULL DEFAULT now())"
        )
        for m in migrations[:index]:
            await db.execute(m.sql)
            await db.execute(
                "INSERT INTO schema_version (version, name) VALUES (%s, %s)", (m.version, m.name)
            )
        await db.execute(
            "INSERT INTO builder (name, url, virtualized, vm_host) VALUES"
            " ('evil', 'http://e:8221/', true, '-oProxyCommand=x'),"
            " ('blank', 'http://b:8221/', true, '')"
        )
        with pytest.raises(psycopg2.Error, match=r"evil \(vm_host '-oProxyCommand=x'\)") as info:
            await migrate(db)
        assert "blank" not in str(info.value)
        # fixed by hand, it goes through; the empty vm_host became "none"
        await db.execute("UPDATE builder SET vm_host = 'evil.vm' WHERE name = 'evil'")
        assert await migrate(db) == list(range(index + 1, LATEST + 1))
        rows = await db.query("SELECT name, vm_host FROM builder ORDER BY name")
        assert rows == [("blank", None), ("evil", "evil.vm")]
    finally:
        await db.close()


# -- the command's environment ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_command_sees_only_its_documented_environment(
    reactor: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """A real command, run as the master runs it: it gets its arguments and PATH, LANG and
    HOME, and none of the master's own environment (its DSN, its secrets)."""
    monkeypatch.setenv("PGPASSWORD", "the database password")
    monkeypatch.setenv("BUILDMASTER_DSN", "host=db password=secret")
    monkeypatch.setenv("HOME", str(tmp_path))
    seen = tmp_path / "seen.json"
    script = tmp_path / "reset-vm"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'env': dict(os.environ)}}, open({str(seen)!r}, 'w'))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    argv = resume_argv(f"{script} --host=%(vm_host)s %(buildd_name)s", "vm1.example", "bob")
    await reset_vm(reactor, argv, timeout=60)
    got = json.loads(seen.read_text())
    assert got["argv"] == ["--host=vm1.example", "bob"]
    assert got["env"] == {"PATH": COMMAND_PATH, "LANG": "C.UTF-8", "HOME": str(tmp_path)}

    # without a HOME, there is none
    monkeypatch.delenv("HOME")
    await reset_vm(reactor, argv, timeout=60)
    assert json.loads(seen.read_text())["env"] == {"PATH": COMMAND_PATH, "LANG": "C.UTF-8"}
    assert os.environ["PGPASSWORD"] == "the database password"  # the master's is untouched


# -- the warning -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_virtualized_builders_without_a_reset_command_are_warned_about(
    make_world: Any, captured_log: Any
) -> None:
    world = await make_world(MasterConfig(scan_interval=3600))
    await world.builder("ppa-one", virtualized=True)
    await world.builder("trusted-one")
    master = world.harness.master
    master.startService()
    await master.when_ready()
    warnings = [w for w in captured_log.warnings() if "No VM reset command" in w]
    assert warnings == [
        "No VM reset command is set (--vm-resume-command): the virtualized builders ppa-one"
        " will build without their VMs being reset between builds"
    ]


@pytest_twisted.ensureDeferred
async def test_no_warning_without_virtualized_builders(make_world: Any, captured_log: Any) -> None:
    world = await make_world(MasterConfig(scan_interval=3600))
    await world.builder("trusted-one")
    world.harness.master.startService()
    await world.harness.master.when_ready()
    assert not [w for w in captured_log.warnings() if "No VM reset command" in w]


@pytest_twisted.ensureDeferred
async def test_no_warning_with_a_reset_command(make_world: Any, captured_log: Any) -> None:
    world = await make_world(MasterConfig(scan_interval=3600, vm_resume_command="true %(vm_host)s"))
    await world.builder("ppa-two", virtualized=True)
    world.harness.master.startService()
    await world.harness.master.when_ready()
    assert not [w for w in captured_log.warnings() if "No VM reset command" in w]
