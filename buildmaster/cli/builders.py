"""``buildmaster builders``: the farm's builders; add them, take them out of service and
back, put them in manual mode."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from buildmaster.cli.base import Context, json_option, pass_context
from buildmaster.cli.output import ago, emit_json, fields, span, table

__all__ = ["builders"]


def _current(builder: dict[str, Any]) -> str:
    build = builder.get("current_build")
    if build is None:
        return "(private build)" if builder.get("busy") else "-"
    words = f"{build['id']} {build['title']}"
    if build.get("duration") is not None:
        words += f" ({build['state'].lower()} for {span(build['duration'])})"
    return words


def _health(builder: dict[str, Any], ctx: Context) -> str:
    if builder["ok"] and builder["state"] != "disabled":
        return "ok"
    notes = builder.get("failnotes") or "out of service"
    since = builder.get("out_of_service_since")
    return f"{notes} (since {ago(since, ctx.now)})" if since else notes


def _kind(builder: dict[str, Any]) -> str:
    return "virtualized" if builder["virtualized"] else "trusted"


def _path(name: str) -> str:
    return f"/api/v1/builders/{quote(name, safe='')}"


@click.group(invoke_without_command=True)
@click.option("--processor", help="Only builders of this processor.")
@click.option("--state", help="Only builders in these states (comma-separated).")
@json_option
@pass_context
@click.pass_context
def builders(
    click_ctx: click.Context, ctx: Context, processor: str | None, state: str | None, as_json: bool
) -> None:
    """The builders: a table of them, or a command about one.

    The table: name, processors, trusted or virtualized, state, the current build and how
    long it has run, and whether it is ok (else why it is out of service).
    """
    if click_ctx.invoked_subcommand is not None:
        return
    found = list(
        ctx.api.pages("/api/v1/builders", "builders", None, processor=processor, state=state)
    )
    if as_json:
        emit_json(found)
        return
    rows = [
        (b["name"], ",".join(b["processors"]), _kind(b), b["state"], _current(b), _health(b, ctx))
        for b in found
    ]
    click.echo(table(("NAME", "PROCESSORS", "KIND", "STATE", "BUILD", "HEALTH"), rows))


@builders.command()
@click.argument("name")
@json_option
@pass_context
def show(ctx: Context, name: str, as_json: bool) -> None:
    """A builder in full: its current build and log tail, recent builds, history."""
    builder = ctx.api.get(_path(name))
    if as_json:
        emit_json(builder)
        return
    rows = [
        ("name", builder["name"]),
        ("url", builder["builder_url"]),
        ("processors", ", ".join(builder["processors"])),
        ("kind", _kind(builder) + (f" (VM {builder['vm_host']})" if builder["vm_host"] else "")),
        ("state", builder["state"] + (" (manual mode)" if builder["manual"] else "")),
        ("health", _health(builder, ctx)),
        ("build", _current(builder)),
    ]
    click.echo(fields(rows))
    if builder.get("logtail"):
        click.echo("\nlog tail:\n" + builder["logtail"].rstrip("\n"))
    if builder["recent_builds"]:
        click.echo("\nrecent builds:")
        click.echo(
            table(
                ("ID", "STATE", "TITLE", "FINISHED"),
                [
                    (b["id"], b["state"], b["title"], ago(b["finished"], ctx.now))
                    for b in builder["recent_builds"]
                ],
            )
        )
    if builder["events"]:
        click.echo("\nhistory:")
        click.echo(
            table(
                ("WHEN", "WHAT"),
                [(ago(e["date"], ctx.now), e["text"]) for e in builder["events"][:10]],
            )
        )


@builders.command()
@click.argument("name")
@click.argument("url")
@click.option(
    "--processor",
    "processors",
    multiple=True,
    required=True,
    help="A processor it builds for (repeatable), e.g. amd64 or 386.",
)
@click.option(
    "--virtualized", is_flag=True, help="It builds PPAs, in a VM reset before each build."
)
@click.option("--vm-host", help="The VM's name for the reset command (default: the builder's).")
@click.option("--title", help="A description.")
@click.option("--manual", is_flag=True, help="Start in manual mode (no jobs until switched off).")
@json_option
@pass_context
def add(
    ctx: Context,
    name: str,
    url: str,
    processors: tuple[str, ...],
    virtualized: bool,
    vm_host: str | None,
    title: str | None,
    manual: bool,
    as_json: bool,
) -> None:
    """Add builder NAME, whose daemon answers at URL; the master scans it from its next scan."""
    body: dict[str, Any] = {
        "name": name,
        "url": url,
        "processors": list(processors),
        "virtualized": virtualized,
        "manual": manual,
    }
    if vm_host is not None:
        body["vm_host"] = vm_host
    if title is not None:
        body["title"] = title
    builder = ctx.api.post("/api/v1/builders", body)
    if as_json:
        emit_json(builder)
    else:
        click.echo(f"added builder {builder['name']} ({_kind(builder)}, {url})")


def _update(ctx: Context, name: str, body: dict[str, Any], as_json: bool, said: str) -> None:
    builder = ctx.api.patch(_path(name), body)
    if as_json:
        emit_json(builder)
    else:
        click.echo(f"builder {builder['name']} {said} (state: {builder['state']})")


@builders.command()
@click.argument("name")
@json_option
@pass_context
def enable(ctx: Context, name: str, as_json: bool) -> None:
    """Bring builder NAME back into service."""
    _update(ctx, name, {"enabled": True}, as_json, "enabled")


@builders.command()
@click.argument("name")
@click.option("--reason", required=True, help="Why (shown as its failnotes).")
@json_option
@pass_context
def disable(ctx: Context, name: str, reason: str, as_json: bool) -> None:
    """Take builder NAME out of service; its build goes back to the queue."""
    _update(ctx, name, {"enabled": False, "reason": reason}, as_json, "disabled")


@builders.command()
@click.argument("name")
@click.argument("mode", type=click.Choice(["on", "off"]))
@json_option
@pass_context
def manual(ctx: Context, name: str, mode: str, as_json: bool) -> None:
    """Manual mode on (no new jobs; the current build is still collected) or off."""
    _update(ctx, name, {"manual": mode == "on"}, as_json, f"manual mode {mode}")


@builders.command()
@click.argument("name")
@pass_context
def remove(ctx: Context, name: str) -> None:
    """Remove builder NAME (only without a job; one that built something is kept inactive)."""
    ctx.api.delete(_path(name))
    click.echo(f"removed builder {name}")
