"""``buildmaster chroot``: the chroot tarballs builders build in, per series and
architecture."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from urllib.parse import quote

import click

from buildmaster.cli.base import Context, json_option, pass_context
from buildmaster.cli.client import CliError
from buildmaster.cli.output import emit_json, table
from buildmaster.cli.transfer import file_digests, send_file

__all__ = ["chroot"]

#: a chroot tarball's type, by its compression (``mimetypes``' encoding of its name)
COMPRESSED = {
    "gzip": "application/gzip",
    "xz": "application/x-xz",
    "bzip2": "application/x-bzip2",
    "br": "application/octet-stream",
}


@click.group()
def chroot() -> None:
    """Chroots: list them, upload one."""


@chroot.command("list")
@json_option
@pass_context
def list_(ctx: Context, as_json: bool) -> None:
    """Every architecture of every series, with its chroot's file, size and SHA-256."""
    chroots = ctx.api.get("/api/v1/chroots")["chroots"]
    if as_json:
        emit_json(chroots)
        return
    rows = []
    for c in chroots:
        file = c["chroot"]
        rows.append(
            (
                f"{c['distribution']}/{c['series']}",
                c["architecture"],
                c["processor"],
                "yes" if c["enabled"] else "no",
                file["filename"] if file else "(none)",
                file["size"] if file else "-",
                file["sha256"] if file else "-",
            )
        )
    click.echo(table(("SERIES", "ARCH", "PROCESSOR", "ENABLED", "CHROOT", "SIZE", "SHA-256"), rows))


def _distribution(ctx: Context, series: str) -> str:
    """The distribution of the only series called ``series``."""
    found = [
        s["distribution"] for s in ctx.api.get("/api/v1/series")["series"] if s["name"] == series
    ]
    if not found:
        raise CliError(f"no series {series} (buildmaster chroot list shows the series)")
    if len(found) > 1:
        raise CliError(f"several distributions have a series {series}: say --distribution")
    return str(found[0])


@chroot.command("upload")
@click.argument("series")
@click.argument("arch")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--distribution", help="The series' distribution (needed only when ambiguous).")
@json_option
@pass_context
def upload(
    ctx: Context, series: str, arch: str, file: Path, distribution: str | None, as_json: bool
) -> None:
    """Upload (or replace) the chroot of SERIES/ARCH from FILE (a tarball); builds waiting
    for it go back to the queue."""
    distribution = distribution or _distribution(ctx, series)
    sha256 = file_digests(file)["sha256"]
    content_type = COMPRESSED.get(mimetypes.guess_type(file.name)[1] or "", "application/x-tar")
    path = "/".join(
        quote(p, safe="") for p in ("", "api", "v1", "chroots", distribution, series, arch)
    )
    query = f"?filename={quote(file.name, safe='')}"
    answer = send_file(ctx.api, path + query, file, sha256, content_type)
    if as_json:
        emit_json(answer)
        return
    stored = answer["chroot"]
    click.echo(
        f"chroot of {distribution}/{series}/{arch}: {stored['filename']}"
        f" ({stored['size']} bytes, SHA-256 {stored['sha256']})"
    )
