"""``buildmaster archive``: disable an archive (its waiting builds are suspended) and
enable it again (they go back in the queue)."""

from __future__ import annotations

from urllib.parse import quote

import click

from buildmaster.cli.base import Context, json_option, pass_context
from buildmaster.cli.output import emit_json

__all__ = ["archive"]


def _path(reference: str) -> str:
    return f"/api/v1/archives/{quote(reference, safe='/~:')}"


@click.group()
def archive() -> None:
    """Archives: disable one, enable it again."""


def _set(ctx: Context, reference: str, enabled: bool, as_json: bool) -> None:
    shown = ctx.api.patch(_path(reference), {"enabled": enabled})
    if as_json:
        emit_json(shown)
    elif enabled:
        click.echo(
            f"archive {shown['reference']} enabled: its suspended builds are back in the queue"
        )
    else:
        click.echo(
            f"archive {shown['reference']} disabled: its waiting builds are suspended, those"
            " on builders go on"
        )


@archive.command()
@click.argument("reference", metavar="REF")
@json_option
@pass_context
def disable(ctx: Context, reference: str, as_json: bool) -> None:
    """Disable archive REF (ubuntu, ubuntu/partner, ~OWNER/DIST/NAME or ppa:OWNER/NAME): its
    waiting builds are suspended until it is enabled; its builds on builders go on."""
    _set(ctx, reference, False, as_json)


@archive.command()
@click.argument("reference", metavar="REF")
@json_option
@pass_context
def enable(ctx: Context, reference: str, as_json: bool) -> None:
    """Enable archive REF again: its suspended builds go back in the queue."""
    _set(ctx, reference, True, as_json)
