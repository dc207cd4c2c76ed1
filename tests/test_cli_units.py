"""The command line's pure parts: where its settings come from, what its tables and times
look like, which file names it refuses, what of a log tail is new."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from buildmaster.cli.builds import new_text
from buildmaster.cli.client import CliError
from buildmaster.cli.output import ago, span, table, until
from buildmaster.cli.settings import ConfigError, config_path, resolve
from buildmaster.cli.transfer import safe_target


def test_options_come_before_the_environment_before_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "buildmaster" / "client.toml"
    config.parent.mkdir()
    config.write_text('url = "http://file:1/"\ntoken = "bm_file"\n')
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert config_path(env) == config
    from_file = resolve(None, None, None, env)
    assert (from_file.url, from_file.token, from_file.url_from) == (
        "http://file:1",
        "bm_file",
        str(config),
    )
    env_too = {**env, "BUILDMASTER_URL": "http://env:2/api/v1", "BUILDMASTER_TOKEN": "bm_env"}
    from_env = resolve(None, None, None, env_too)
    assert (from_env.url, from_env.token, from_env.url_from) == (
        "http://env:2",
        "bm_env",
        "$BUILDMASTER_URL",
    )
    given = resolve("https://opt:3", "bm_opt", None, env_too)
    assert (given.url, given.token, given.url_from) == ("https://opt:3", "bm_opt", "--url")
    nothing = resolve(None, None, None, {"HOME": str(tmp_path / "nobody")})
    assert (nothing.url, nothing.token) == ("http://127.0.0.1:8000", None)


def test_a_bad_config_file_or_url_is_refused_with_its_reason(tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text("url = [\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        resolve(None, None, config, {})
    config.write_text('url = "http://a:1"\npassword = "x"\n')
    with pytest.raises(ConfigError, match="unknown setting password"):
        resolve(None, None, config, {})
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(None, None, tmp_path / "missing.toml", {})
    with pytest.raises(ConfigError, match="is not a master's URL"):
        resolve("127.0.0.1:8000", None, None, {"HOME": str(tmp_path)})


def test_times_in_words() -> None:
    now = datetime.datetime(2026, 1, 2, 12, 0, tzinfo=datetime.UTC)
    assert [span(s) for s in (0.4, 45, 179, 3600, 3660 * 2, 3 * 86400)] == [
        "0 s",
        "45 s",
        "2 min",
        "1 h",
        "2 h 2 min",
        "3 days",
    ]
    assert ago("2026-01-02T11:48:00Z", now) == "12 min ago"
    assert ago("2026-01-02T12:00:00+00:00", now) == "just now"
    assert ago(None, now) == "-"
    assert until("2026-01-02T12:25:00Z", now) == "in 25 min"
    assert until("2026-01-02T11:00:00Z", now) == "now"


def test_tables_align_their_columns() -> None:
    assert table(("ID", "STATE", "TITLE"), [(7, "BUILDING", "hello"), (1234, None, "x")]) == (
        "ID    STATE     TITLE\n7     BUILDING  hello\n1234  -         x"
    )


def test_a_moving_log_tail_is_shown_once() -> None:
    assert new_text("", "abc\n") == "abc\n"
    assert new_text("abc\n", "abc\ndef\n") == "def\n"
    # the tail moved on: its start was cut, its end is new
    assert new_text("line1\nline2\n", "line2\nline3\n") == "line3\n"
    # nothing in common: all of it is new
    assert new_text("old\n", "new\n") == "new\n"
    assert new_text("same\n", "same\n") == ""


@pytest.mark.parametrize("name", ["../x", "..", ".", "", "a/b", "/etc/passwd", "a\\b", "a\0b"])
def test_names_that_would_escape_the_directory_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(CliError, match="would be written outside"):
        safe_target(tmp_path, name)


def test_plain_names_land_in_the_directory(tmp_path: Path) -> None:
    assert safe_target(tmp_path, "hello_1.0_i386.deb") == tmp_path / "hello_1.0_i386.deb"
    assert safe_target(tmp_path, "..hidden") == tmp_path / "..hidden"
