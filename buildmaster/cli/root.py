"""The ``buildmaster`` command: its options, and its commands."""

from __future__ import annotations

from pathlib import Path

import click

from buildmaster.cli.archives import archive
from buildmaster.cli.base import Context
from buildmaster.cli.builders import builders
from buildmaster.cli.builds import build, builds
from buildmaster.cli.chroots import chroot
from buildmaster.cli.queue import queue
from buildmaster.cli.tokens import migrate, token
from buildmaster.cli.upload import upload

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    metavar="URL",
    help="The master: http://HOST:PORT. [env: BUILDMASTER_URL; config: url;"
    " default: http://127.0.0.1:8000]",
)
@click.option(
    "--token",
    metavar="SECRET",
    help="The API token (bm_...); reading needs none. [env: BUILDMASTER_TOKEN; config: token]",
)
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The config file. [env: BUILDMASTER_CONFIG; default:"
    " $XDG_CONFIG_HOME/buildmaster/client.toml, else ~/.config/buildmaster/client.toml]",
)
@click.pass_context
def main(ctx: click.Context, url: str | None, token: str | None, config: Path | None) -> None:
    """The build farm from the command line, through the master's operator API.

    Where the master is and which token to use come from the options, else the environment
    (BUILDMASTER_URL, BUILDMASTER_TOKEN), else the config file, a TOML file with the keys
    url and token (keep it mode 0600 if it holds a token).

    Tables for people by default; --json (after the command) for scripts. Exit status: 0
    done; 1 the master refused or failed (its reason on standard error, one line), or a
    local check failed; 2 a usage error; 3 the master could not be reached.
    """
    ctx.obj = Context(url, token, config)


for command in (builders, queue, builds, build, upload, chroot, archive, token, migrate):
    main.add_command(command)
