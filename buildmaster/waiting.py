"""Why a waiting build is not running yet, in words an operator can act on. Pure.

The reasons follow the dispatcher's rules (:mod:`buildmaster.policy`): a suspended job is
not a candidate; a job whose architecture has no chroot is suspended when it is tried; a
job is offered only to builders of its processor and virtualization that are ok, active
and not in manual mode; those take the best waiting job first.
"""

from __future__ import annotations

import datetime

import attrs

__all__ = ["KindBuilder", "WaitInputs", "WaitReason", "why_waiting"]


@attrs.frozen
class KindBuilder:
    """A builder of the build's kind, as far as the explanation needs it."""

    name: str
    builderok: bool
    failed_by_master: bool
    failnotes: str | None
    #: when it was last taken out of service (its latest "failed"/"disabled" event)
    out_of_service_since: datetime.datetime | None
    manual: bool
    busy: bool


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
    builders: tuple[KindBuilder, ...]
    #: waiting builds of its kind before it in dispatch order
    ahead: int


@attrs.frozen
class WaitReason:
    #: ``suspended``, ``no-chroot``, ``no-builder``, ``no-working-builder``, ``manual``,
    #: ``busy`` or ``next``
    code: str
    text: str


def _since(when: datetime.datetime | None) -> str:
    return f" since {when.strftime('%Y-%m-%d %H:%M')} UTC" if when is not None else ""


def _out_of_service(b: KindBuilder) -> str:
    how = "failed" if b.failed_by_master else "disabled"
    why = f": {b.failnotes}" if b.failnotes else ""
    return f"{b.name} is {how}{why}{_since(b.out_of_service_since)}"


def _chroot_hint(architecture: str) -> str:
    return f"upload one with PUT /api/v1/chroots/{architecture}"


def why_waiting(inputs: WaitInputs) -> WaitReason:
    """The first reason, in the dispatcher's order, that keeps the build waiting."""
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
    if not inputs.builders:
        return WaitReason(
            "no-builder",
            f"no builder takes {inputs.kind} builds; add one with POST /api/v1/builders",
        )
    working = [b for b in inputs.builders if b.builderok]
    if not working:
        details = "; ".join(_out_of_service(b) for b in inputs.builders)
        first = inputs.builders[0].name
        return WaitReason(
            "no-working-builder",
            f"no builder of its kind ({inputs.kind}) is working: {details}; enable one with"
            f' PATCH /api/v1/builders/{first} {{"enabled": true}}',
        )
    automatic = [b for b in working if not b.manual]
    if not automatic:
        names = ", ".join(b.name for b in working)
        return WaitReason(
            "manual",
            f"every working builder of its kind ({inputs.kind}) is in manual mode: {names};"
            f' take one out with PATCH /api/v1/builders/{working[0].name} {{"manual": false}}',
        )
    free = [b for b in automatic if not b.busy]
    if inputs.ahead > 0 or not free:
        busy = len(automatic) - len(free)
        ahead = f"{inputs.ahead} build{'s' if inputs.ahead != 1 else ''} of its kind before it"
        return WaitReason(
            "busy",
            f"{busy} of {len(automatic)} builder{'s' if len(automatic) != 1 else ''} of its kind"
            f" ({inputs.kind}) busy, {ahead}",
        )
    return WaitReason(
        "next",
        f"next in line: {free[0].name} or another idle builder of its kind takes it at its"
        " next scan",
    )
