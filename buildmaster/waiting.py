"""Why a waiting build is not running yet, in words an operator can act on. Pure.

The reasons follow the dispatcher's rules (:mod:`buildmaster.policy`): a disabled archive's
jobs are suspended (``ArchiveSet.set_enabled``); a suspended job is not a candidate; a job
whose architecture has no chroot is suspended when it is tried; a job is offered only to
builders of its processor and virtualization that are ok, active and not in manual mode;
those take the best waiting job first.
"""

from __future__ import annotations

import datetime

import attrs

__all__ = ["KindBuilder", "KindBuilders", "WaitInputs", "WaitReason", "why_waiting"]


@attrs.frozen
class KindBuilder:
    """A builder of the build's kind that is out of service, to be named."""

    name: str
    failed_by_master: bool
    failnotes: str | None
    #: when it was last taken out of service (its latest "failed"/"disabled" event)
    out_of_service_since: datetime.datetime | None


@attrs.frozen
class KindBuilders:
    """The builders of the build's kind (its processor and virtualization), counted."""

    total: int = 0
    #: in service (ok)
    working: int = 0
    #: in service and not in manual mode: those that take jobs
    automatic: int = 0
    #: of those, without a job
    free: int = 0
    #: a few of those out of service, to be named
    out_of_service: tuple[KindBuilder, ...] = ()
    #: a few of those in manual mode, and one free one
    manual: tuple[str, ...] = ()
    a_free_one: str | None = None


@attrs.frozen
class WaitInputs:
    #: ``ubuntu/hoary/i386``
    architecture: str
    #: ``virtualized 386`` / ``trusted 386``
    kind: str
    suspended: bool
    #: the reason recorded when it was suspended
    suspended_reason: str | None
    chroot_missing: bool
    builders: KindBuilders
    #: waiting builds of its kind before it in dispatch order (at least this many when
    #: ``ahead_counted_to`` was reached)
    ahead: int
    ahead_counted_to: int | None = None
    #: its archive's reference (``~cprov/ubuntu/ppa``), and whether the archive is disabled
    archive: str = ""
    archive_disabled: bool = False


@attrs.frozen
class WaitReason:
    #: ``archive-disabled``, ``suspended``, ``no-chroot``, ``no-builder``,
    #: ``no-working-builder``, ``manual``, ``busy`` or ``next``
    code: str
    text: str


def _since(when: datetime.datetime | None) -> str:
    return f" since {when.strftime('%Y-%m-%d %H:%M')} UTC" if when is not None else ""


def _out_of_service(b: KindBuilder) -> str:
    how = "failed" if b.failed_by_master else "disabled"
    why = f": {b.failnotes}" if b.failnotes else ""
    return f"{b.name} is {how}{why}{_since(b.out_of_service_since)}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' if count != 1 else ''}"


def _chroot_hint(architecture: str) -> str:
    return f"upload one with PUT /api/v1/chroots/{architecture}"


def why_waiting(inputs: WaitInputs) -> WaitReason:
    """The first reason, in the dispatcher's order, that keeps the build waiting."""
    if inputs.archive_disabled:
        # (a job of a disabled archive that waits came back at the moment it was disabled)
        state = "suspended" if inputs.suspended else "to be suspended when a builder tries it"
        chroot = (
            f"; {inputs.architecture} has no chroot either: {_chroot_hint(inputs.architecture)}"
            if inputs.chroot_missing
            else ""
        )
        return WaitReason(
            "archive-disabled",
            f"{state}: its archive {inputs.archive} is disabled; enable it with"
            f' PATCH /api/v1/archives/{inputs.archive} {{"enabled": true}}{chroot}',
        )
    if inputs.suspended:
        why = inputs.suspended_reason or "suspended"
        hint = f"; {_chroot_hint(inputs.architecture)}" if inputs.chroot_missing else ""
        return WaitReason("suspended", f"suspended ({why}){hint}")
    if inputs.chroot_missing:
        return WaitReason(
            "no-chroot",
            f"{inputs.architecture} has no chroot: the build will be suspended when a builder"
            f" tries it; {_chroot_hint(inputs.architecture)}",
        )
    builders = inputs.builders
    if builders.total == 0:
        return WaitReason(
            "no-builder",
            f"no builder takes {inputs.kind} builds; add one with POST /api/v1/builders",
        )
    if builders.working == 0:
        named = builders.out_of_service
        details = "; ".join(_out_of_service(b) for b in named)
        more = builders.total - len(named)
        if more > 0:
            details += f"; and {more} more"
        first = named[0].name if named else "it"
        return WaitReason(
            "no-working-builder",
            f"no builder of its kind ({inputs.kind}) is working: {details}; enable one with"
            f' PATCH /api/v1/builders/{first} {{"enabled": true}}',
        )
    if builders.automatic == 0:
        names = ", ".join(builders.manual)
        more = builders.working - len(builders.manual)
        if more > 0:
            names += f" and {more} more"
        first = builders.manual[0] if builders.manual else "it"
        return WaitReason(
            "manual",
            f"every working builder of its kind ({inputs.kind}) is in manual mode: {names};"
            f' take one out with PATCH /api/v1/builders/{first} {{"manual": false}}',
        )
    if inputs.ahead > 0 or builders.free == 0:
        busy = builders.automatic - builders.free
        counted = inputs.ahead_counted_to
        ahead = (
            f"more than {counted:,} builds"
            if counted is not None and inputs.ahead >= counted
            else _plural(inputs.ahead, "build")
        )
        return WaitReason(
            "busy",
            f"{busy} of {_plural(builders.automatic, 'builder')} of its kind ({inputs.kind})"
            f" busy, {ahead} of its kind before it",
        )
    return WaitReason(
        "next",
        f"next in line: {builders.a_free_one or 'an idle builder'} or another idle builder of"
        " its kind takes it at its next scan",
    )
