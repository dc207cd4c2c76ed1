"""``buildmaster upload FILE.dsc --archive REF``: a source package, checked here first, then
sent through an upload session of the API; prints the builds it made."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import click

from buildmaster.cli.base import Context, json_option, pass_context
from buildmaster.cli.builds import BUILD_HEADERS, build_rows
from buildmaster.cli.client import CliError
from buildmaster.cli.output import emit_json, table
from buildmaster.cli.transfer import file_digests, send_file
from buildmaster.dsc import DscError, StoredFile, check_files, parse_dsc
from buildmaster.enums import PackagePublishingPocket

__all__ = ["checked_files", "upload"]

#: the most a .dsc may be (it is a small text file; the API reads it whole too)
MAX_DSC = 1024 * 1024
POCKETS = [p.name.lower() for p in PackagePublishingPocket]


def checked_files(dsc_path: Path) -> list[tuple[Path, str]]:
    """The files to send (the ``.dsc`` first) with their SHA-256, once every file the
    ``.dsc`` lists is found beside it with the size and checksums it gives.

    :raises CliError: for an unreadable or malformed ``.dsc``, a missing file, or one that
        is not what the ``.dsc`` says (every problem, in one line).
    """
    try:
        if dsc_path.stat().st_size > MAX_DSC:
            raise CliError(f"{dsc_path} is over {MAX_DSC} bytes: it is not a .dsc")
        data = dsc_path.read_bytes()
    except OSError as e:
        raise CliError(f"cannot read {dsc_path}: {e.strerror}") from None
    try:
        control = parse_dsc(data)
    except DscError as e:
        raise CliError(f"{dsc_path} cannot be uploaded: {e}") from None
    if dsc_path.name != control.dsc_name:
        raise CliError(f"{dsc_path} must be called {control.dsc_name} (Source_Version.dsc)")
    stored: dict[str, StoredFile | None] = {}
    sha256: dict[str, str] = {}
    for listed in control.files:
        path = dsc_path.parent / listed.name
        if not path.is_file():
            continue  # check_files says it is missing
        digests = file_digests(path)
        sha256[listed.name] = digests["sha256"]
        stored[listed.name] = StoredFile(size=path.stat().st_size, **digests)
    problems = [
        p.replace("was not uploaded", f"is not in {dsc_path.parent}")
        for p in check_files(control, stored)
    ]
    if problems:
        raise CliError(f"{dsc_path} cannot be uploaded: {'; '.join(problems)}")
    files = [(dsc_path, file_digests(dsc_path)["sha256"])]
    files += [(dsc_path.parent / f.name, sha256[f.name]) for f in control.files]
    return files


@click.command()
@click.argument("dsc", metavar="FILE.dsc", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--archive",
    required=True,
    help="The archive: ppa:OWNER/NAME, ~OWNER/DISTRIBUTION/NAME, or DISTRIBUTION.",
)
@click.option("--pocket", type=click.Choice(POCKETS), help="The pocket (release by default).")
@click.option(
    "--arch",
    "architectures",
    multiple=True,
    help="Build only on this architecture (repeatable; of those the .dsc asks for).",
)
@click.option("--series", help="The series (by default the distribution's newest).")
@json_option
@pass_context
def upload(
    ctx: Context,
    dsc: Path,
    archive: str,
    pocket: str | None,
    architectures: tuple[str, ...],
    series: str | None,
    as_json: bool,
) -> None:
    """Upload a source package: FILE.dsc and the files it lists (found beside it).

    Every file is checked against the sizes and checksums the .dsc gives before anything
    is sent; the files go in pieces, each with its digest. Prints the builds made.
    """
    files = checked_files(dsc)
    session = ctx.api.post("/api/v1/uploads", {"archive": archive})
    for path, sha256 in files:
        send_file(ctx.api, f"{session['url']}/files/{quote(path.name, safe='')}", path, sha256)
    submit: dict[str, object] = {"dsc": dsc.name}
    if pocket is not None:
        submit["pocket"] = pocket
    if architectures:
        submit["architectures"] = list(architectures)
    if series is not None:
        submit["series"] = series
    answer = ctx.api.post(f"{session['url']}/submit", submit)
    if as_json:
        emit_json(answer)
        return
    source = answer["source"]
    click.echo(
        f"uploaded {source['name']} {source['version']} to {session['archive']['reference']}"
        f" ({source['series']}): {len(answer['builds'])} builds"
    )
    if answer["builds"]:
        click.echo(table(BUILD_HEADERS, build_rows(answer["builds"], ctx)))
