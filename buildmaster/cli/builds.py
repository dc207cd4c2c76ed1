"""``buildmaster builds`` (the list) and ``buildmaster build`` (one build: show, follow its
log, cancel, retry, rescore, fetch its files)."""

from __future__ import annotations

import sys
import time
import zlib
from pathlib import Path
from typing import Any

import click
import httpx

from buildmaster.cli.base import Context, json_option, pass_context
from buildmaster.cli.client import CliError
from buildmaster.cli.output import ago, emit_json, fields, span, table, until
from buildmaster.cli.transfer import CHUNK, download, safe_target

__all__ = ["BUILD_HEADERS", "build", "build_rows", "builds", "new_text", "when"]

#: how long to wait before following a log stream again after the master said it failed
RECONNECT_DELAY = 5.0


def when(build: dict[str, Any], ctx: Context) -> str:
    """What a build is doing, in time: ``building for 3 min``, ``finished 12 min ago``."""
    if build["finished"] is not None:
        took = f" (took {span(build['duration'])})" if build["duration"] is not None else ""
        return f"finished {ago(build['finished'], ctx.now)}{took}"
    if build["started"] is not None and build["duration"] is not None:
        return f"{build['state'].lower()} for {span(build['duration'])}"
    return f"queued {ago(build['created'], ctx.now)}"


def build_rows(found: list[dict[str, Any]], ctx: Context) -> list[tuple[Any, ...]]:
    return [
        (
            b["id"],
            b["state"],
            f"{b['source']['name']} {b['source']['version']}",
            b["architecture"]["tag"],
            b["archive"]["reference"],
            b["builder"],
            when(b, ctx),
        )
        for b in found
    ]


BUILD_HEADERS = ("ID", "STATE", "SOURCE", "ARCH", "ARCHIVE", "BUILDER", "WHEN")


@click.command()
@click.option("--state", help="Only these states (comma-separated), e.g. building,fullybuilt.")
@click.option("--archive", help="Only this archive: ubuntu, ubuntu/partner, ppa:OWNER/NAME.")
@click.option("--source", help="Only this source package.")
@click.option("--builder", help="Only builds on this builder.")
@click.option("--arch", help="Only this architecture (e.g. amd64).")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Show at most this many (newest first).",
)
@click.option(
    "--page-size",
    type=click.IntRange(1, 1000),
    default=100,
    show_default=True,
    help="Builds asked of the master per request (pages follow each other).",
)
@json_option
@pass_context
def builds(
    ctx: Context,
    state: str | None,
    archive: str | None,
    source: str | None,
    builder: str | None,
    arch: str | None,
    limit: int,
    page_size: int,
    as_json: bool,
) -> None:
    """The builds, newest first."""
    found = list(
        ctx.api.pages(
            "/api/v1/builds",
            "builds",
            limit,
            state=state,
            archive=archive,
            source=source,
            builder=builder,
            arch=arch,
            limit=min(page_size, limit),
        )
    )
    if as_json:
        emit_json(found)
    else:
        click.echo(table(BUILD_HEADERS, build_rows(found, ctx)))


@click.group()
def build() -> None:
    """One build: show, log, cancel, retry, rescore, fetch."""


def _path(build_id: int, *rest: str) -> str:
    return "/".join([f"/api/v1/builds/{build_id}", *rest])


BUILD_ID = click.argument("build_id", metavar="ID", type=click.IntRange(min=1))


def _waiting(standing: dict[str, Any], ctx: Context) -> list[tuple[str, Any]]:
    position = standing["position"]
    place = f"{position}" if standing["position_exact"] else f"more than {position - 1}"
    start = "unknown (no builder takes it)"
    if standing["estimated_start"] is not None:
        start = f"{until(standing['estimated_start'], ctx.now)}"
    return [
        ("position", place),
        ("estimated start", start),
        ("not running", standing["reason"]["text"]),
    ]


@build.command()
@BUILD_ID
@json_option
@pass_context
def show(ctx: Context, build_id: int, as_json: bool) -> None:
    """A build in full: state, times, builder, score, why it waits, files, history."""
    b = ctx.api.get(_path(build_id))
    if as_json:
        emit_json(b)
        return
    score = "-" if b["score"] is None else str(b["score"])
    if b["score"] is not None and b["score_parts"]:
        score += " (" + ", ".join(f"{p['reason']} {p['points']:+d}" for p in b["score_parts"]) + ")"
    elif b["manual_score"]:
        score += " (manual)"
    rows: list[tuple[str, Any]] = [
        ("build", f"{b['id']} {b['title']}"),
        ("state", b["state"] + (f": {b['failure_reason']}" if b["failure_reason"] else "")),
        ("archive", f"{b['archive']['reference']} ({b['pocket']})"),
        ("builder", b["builder"]),
        ("when", when(b, ctx)),
        ("created", ago(b["created"], ctx.now)),
        ("score", score),
        ("cookie", b["cookie"]),
    ]
    if b["dependencies"]:
        rows.append(("waits for", b["dependencies"]))
    if b["waiting"] is not None:
        rows.extend(_waiting(b["waiting"], ctx))
    click.echo(fields(rows))
    if b["logtail"]:
        click.echo("\nlog tail:\n" + b["logtail"].rstrip("\n"))
    files = ([b["log"]] if b["log"] else []) + b["files"]
    if files:
        click.echo("\nfiles:")
        click.echo(table(("FILE", "SIZE", "SHA-256"), [_file_row(f) for f in files]))
    if b["events"]:
        click.echo("\nhistory:")
        click.echo(
            table(("WHEN", "WHAT"), [(ago(e["date"], ctx.now), e["text"]) for e in b["events"]])
        )


def _file_row(file: dict[str, Any]) -> tuple[Any, ...]:
    return (file["filename"], file["size"], file["sha256"])


def new_text(shown: str, tail: str) -> str:
    """The part of a log tail not shown yet: ``tail`` less its longest beginning that
    ``shown`` ends with (a tail is the end of the log as it was; it moves on)."""
    if tail.startswith(shown):
        return tail[len(shown) :]
    for k in range(min(len(shown), len(tail)), 0, -1):
        if shown.endswith(tail[:k]):
            return tail[k:]
    return tail


def _print_log(ctx: Context, log: dict[str, Any] | None, tail: str | None) -> None:
    """The collected log (gunzipped as it comes) on standard output; else the tail."""
    if log is None:
        if tail:
            click.echo(tail, nl=not tail.endswith("\n"))
        return
    gzipped = log["filename"].endswith(".gz")
    inflate = zlib.decompressobj(wbits=31) if gzipped else None
    out = sys.stdout.buffer
    with ctx.api.download(log["url"], log.get("download_token")) as response:
        try:
            for chunk in response.iter_bytes(CHUNK):
                out.write(inflate.decompress(chunk) if inflate else chunk)
        except httpx.HTTPError as e:
            raise CliError(f"fetching the log {log['url']} failed: {e}") from None
        except zlib.error as e:
            raise CliError(f"the log {log['filename']} is not gzip: {e}") from None
    if inflate:
        out.write(inflate.flush())
    out.flush()


@build.command()
@BUILD_ID
@click.option("--follow", "-f", is_flag=True, help="Follow the live log tail until the build ends.")
@pass_context
def log(ctx: Context, build_id: int, follow: bool) -> None:
    """The build's log on standard output.

    With --follow, the state and the live log tail are shown on standard error as the build
    goes on; when it ends, its collected log is printed on standard output. Without it, a
    build still running shows the tail it has so far.
    """
    if not follow:
        answer = ctx.api.get(_path(build_id, "log"))
        if answer["log"] is None and answer["live"]:
            click.echo(
                f"build {build_id} is {answer['state']}: its log tail so far"
                " (--follow waits for the whole log)",
                err=True,
            )
        _print_log(ctx, answer["log"], answer["logtail"])
        return
    end = _follow(ctx, build_id)
    click.echo(f"build {build_id} ended {end['state']}", err=True)
    _print_log(ctx, end["log"], end["logtail"])


def _follow(ctx: Context, build_id: int) -> dict[str, Any]:
    """Show the state and tail as they change; what the stream's ``end`` event carries."""
    state, shown = None, ""
    while True:
        for event, data in ctx.api.events(_path(build_id, "log", "stream")):
            if event == "end":
                return dict(data)
            if event == "error":
                click.echo(f"buildmaster: {data.get('detail')}", err=True)
                time.sleep(RECONNECT_DELAY)
                break
            if event != "logtail":
                continue
            if data["state"] != state:
                state = data["state"]
                click.echo(f"build {build_id}: {state}", err=True)
            tail = data["logtail"] or ""
            text = new_text(shown, tail)
            if text:
                click.echo(text, nl=False, err=True)
                shown = tail
        # the stream ended without an end (it lasts an hour at most): follow it again


@build.command()
@BUILD_ID
@json_option
@pass_context
def cancel(ctx: Context, build_id: int, as_json: bool) -> None:
    """Cancel a build: a waiting one at once, a running one once its builder aborts it."""
    _act(ctx, build_id, "cancel", None, as_json)


@build.command()
@BUILD_ID
@json_option
@pass_context
def retry(ctx: Context, build_id: int, as_json: bool) -> None:
    """Queue a failed or cancelled build again, with a fresh score."""
    _act(ctx, build_id, "retry", None, as_json)


@build.command()
@BUILD_ID
@click.argument("score", type=click.IntRange(-(2**31), 2**31 - 1))
@json_option
@pass_context
def rescore(ctx: Context, build_id: int, score: int, as_json: bool) -> None:
    """Give a waiting build a manual score (admin)."""
    _act(ctx, build_id, "rescore", {"score": score}, as_json)


def _act(ctx: Context, build_id: int, action: str, body: Any, as_json: bool) -> None:
    b = ctx.api.post(_path(build_id, action), body)
    if as_json:
        emit_json(b)
        return
    score = f", score {b['score']}" if action == "rescore" else ""
    click.echo(f"build {b['id']} {b['title']}: {b['state']}{score}")


@build.command()
@BUILD_ID
@click.argument(
    "directory", metavar="[DIR]", default=".", type=click.Path(file_okay=False, path_type=Path)
)
@pass_context
def fetch(ctx: Context, build_id: int, directory: Path) -> None:
    """Fetch the build's log and result files into DIR (default: here), each checked
    against the size and SHA-256 the master recorded."""
    b = ctx.api.get(_path(build_id))
    files = ([b["log"]] if b["log"] else []) + b["files"]
    if not files:
        raise CliError(f"build {build_id} is {b['state']}: it has no files (yet)")
    for file in files:  # every name is checked before anything is written
        safe_target(directory, file["filename"])
    directory.mkdir(parents=True, exist_ok=True)
    for file in files:
        target = download(ctx.api, file, directory)
        click.echo(f"{target} ({file['size']} bytes, SHA-256 verified)")
