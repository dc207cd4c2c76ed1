"""``buildmaster token``: API tokens, through the API (with an admin token), or straight in
the database (``--dsn``/``--state-dir``: how the first admin token is made); and
``buildmaster migrate``, the schema's migrations. These two are the only commands that
reach the database rather than the API (:mod:`buildmaster.tokens`,
:mod:`buildmaster.store.schema`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from buildmaster.cli.base import Context, json_option, pass_context
from buildmaster.cli.client import EXIT_ERROR, CliError
from buildmaster.cli.output import ago, emit_json, table

__all__ = ["migrate", "token"]

F = TypeVar("F", bound=Callable[..., Any])


def database_options(f: F) -> F:
    """``--dsn`` and ``--state-dir``: work in the database instead of through the API."""
    f = click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="In the embedded database of this master's state directory (bootstrap).",
    )(f)
    return click.option(
        "--dsn", help="In this database (libpq connection string) instead of the API (bootstrap)."
    )(f)


def _in_database(command: str, dsn: str | None, state_dir: Path | None, *args: str) -> None:
    from buildmaster import tokens

    where = [
        *(["--dsn", dsn] if dsn else []),
        *(["--state-dir", str(state_dir)] if state_dir else []),
    ]
    if tokens.main([command, *args, *where]):  # it said why on standard error
        raise SystemExit(EXIT_ERROR)


@click.group()
def token() -> None:
    """API tokens: create, list, revoke.

    Through the API they need an admin token. The first admin token is made in the
    database: buildmaster token create --admin --state-dir STATE (the master's embedded
    database) or --dsn DSN.
    """


@token.command()
@click.option("--admin", is_flag=True, help="A token that may do anything.")
@click.option(
    "--uploader",
    "archives",
    multiple=True,
    metavar="ARCHIVE",
    help="A token that uploads to this archive (repeatable): ppa:OWNER/NAME, ~OWNER/DIST/NAME.",
)
@click.option("--description", default="", help="What the token is for.")
@database_options
@json_option
@pass_context
def create(
    ctx: Context,
    admin: bool,
    archives: tuple[str, ...],
    description: str,
    dsn: str | None,
    state_dir: Path | None,
    as_json: bool,
) -> None:
    """Make a token (--admin, or --uploader ARCHIVE); its secret is printed on standard
    output, alone on its line, this once."""
    if admin == bool(archives):
        raise click.UsageError("say either --admin or --uploader ARCHIVE")
    if dsn or state_dir:
        flags = ["--admin"] if admin else [f for a in archives for f in ("--uploader", a)]
        _in_database("create", dsn, state_dir, *flags, "--description", description)
        return
    body: dict[str, Any] = {"scope": "admin" if admin else "uploader", "description": description}
    if archives:
        body["archives"] = list(archives)
    new = ctx.api.post("/api/v1/tokens", body)
    if as_json:
        emit_json(new)
        return
    scope = "admin" if admin else "uploader to " + ", ".join(new["archives"])
    click.echo(f"made token {new['id']} ({scope}); its secret is shown only now:", err=True)
    click.echo(new["secret"])


@token.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Revoked tokens too.")
@database_options
@json_option
@pass_context
def list_(
    ctx: Context, include_revoked: bool, dsn: str | None, state_dir: Path | None, as_json: bool
) -> None:
    """The tokens (never their secrets)."""
    if dsn or state_dir:
        _in_database("list", dsn, state_dir, *(["--all"] if include_revoked else []))
        return
    tokens = ctx.api.get("/api/v1/tokens", include_revoked="true" if include_revoked else None)
    if as_json:
        emit_json(tokens["tokens"])
        return
    rows = [
        (
            t["id"],
            f"{t['prefix']}...",
            t["scope"] if t["scope"] == "admin" else "uploader to " + ", ".join(t["archives"]),
            ago(t["created"], ctx.now),
            ago(t["revoked"], ctx.now) if t["revoked"] else "-",
            t["description"],
        )
        for t in tokens["tokens"]
    ]
    click.echo(table(("ID", "PREFIX", "SCOPE", "CREATED", "REVOKED", "DESCRIPTION"), rows))


@token.command()
@click.argument("token_id", metavar="ID", type=click.IntRange(min=1))
@database_options
@pass_context
def revoke(ctx: Context, token_id: int, dsn: str | None, state_dir: Path | None) -> None:
    """Revoke token ID: it is refused from its next request on."""
    if dsn or state_dir:
        _in_database("revoke", dsn, state_dir, str(token_id))
        return
    ctx.api.delete(f"/api/v1/tokens/{token_id}")
    click.echo(f"token {token_id} revoked")


@click.command()
@click.option("--dsn", required=True, help="The database (libpq connection string), as its owner.")
def migrate(dsn: str) -> None:
    """Apply the schema's migrations to a database (a master given its owner's DSN, or
    its embedded database, does it at start)."""
    from buildmaster.store import schema

    try:
        schema.main(["--dsn", dsn])
    except SystemExit as e:
        if e.code not in (0, None):
            raise CliError(f"the migrations could not be applied to {dsn!r}") from None
