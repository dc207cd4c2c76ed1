"""``buildmaster queue``: how many builds wait, per processor and kind, and how long until
the last of them starts; ``--list`` the waiting builds in dispatch order."""

from __future__ import annotations

from typing import Any

import click

from buildmaster.cli.base import Context, json_option, pass_context
from buildmaster.cli.output import ago, emit_json, span, table

__all__ = ["queue"]


def _drain(kind: dict[str, Any]) -> str:
    if kind["waiting"] == 0:
        return "-"
    if kind["estimated_drain_seconds"] is None:
        return "never: no builder takes them"
    return f"~{span(kind['estimated_drain_seconds'])}"


@click.command()
@click.option("--list", "listing", is_flag=True, help="The waiting builds, in dispatch order.")
@click.option("--processor", help="With --list: only this processor.")
@click.option(
    "--virtualized/--trusted",
    default=None,
    help="With --list: only virtualized (PPA) or trusted builds.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="With --list: at most this many.",
)
@json_option
@pass_context
def queue(
    ctx: Context,
    listing: bool,
    processor: str | None,
    virtualized: bool | None,
    limit: int,
    as_json: bool,
) -> None:
    """The queue per processor x trusted/virtualized: waiting, oldest, estimated drain.

    The estimated drain is the time until the last waiting build starts, from the
    estimated durations of the builds (a rough guide).
    """
    if listing:
        _jobs(ctx, processor, virtualized, limit, as_json)
        return
    answer = ctx.api.get("/api/v1/queue")
    if as_json:
        emit_json(answer)
        return
    rows = [
        (
            k["processor"],
            "virtualized" if k["virtualized"] else "trusted",
            k["waiting"],
            k["suspended"],
            k["running"],
            ago(k["oldest_waiting"], ctx.now),
            f"{k['usable_builders']}/{k['builders']}",
            _drain(k),
        )
        for k in answer["kinds"]
    ]
    click.echo(
        table(
            ("PROCESSOR", "KIND", "WAITING", "SUSPENDED", "RUNNING", "OLDEST", "BUILDERS", "DRAIN"),
            rows,
        )
    )


def _jobs(
    ctx: Context, processor: str | None, virtualized: bool | None, limit: int, as_json: bool
) -> None:
    virtual = None if virtualized is None else str(virtualized).lower()
    jobs = list(
        ctx.api.pages(
            "/api/v1/queue/jobs",
            "jobs",
            limit,
            processor=processor,
            virtualized=virtual,
            limit=min(limit, 1000),
        )
    )
    if as_json:
        emit_json(jobs)
        return
    rows = []
    for job in jobs:
        build = job["build"]
        rows.append(
            (
                job["position"] if job["position"] is not None else "-",
                job["score"] if not job["manual_score"] else f"{job['score']} (manual)",
                build["id"] if build else "-",
                build["title"] if build else "(a private archive's build)",
                f"{job['processor']} {'virtualized' if job['virtualized'] else 'trusted'}",
                ago(job["queued"], ctx.now),
                f"~{span(job['estimated_duration'])}",
            )
        )
    click.echo(table(("POS", "SCORE", "BUILD", "TITLE", "KIND", "QUEUED", "ESTIMATE"), rows))
