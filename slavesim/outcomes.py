"""Scripted build outcomes: which result a simulated build ends with, and when.

A build's outcome is decided when it starts, by the first matching :class:`OutcomeRule`:
first the builder's own rules, then the farm's; with no match the build succeeds after the
farm's default build time.

Rules are written on the command line (``--outcomes``) as a comma-separated list::

    RULE  := [BUILDER "/"] PACKAGE "=" OUTCOME ["[" DEPENDENCIES "]"] [":" SECONDS]

- ``BUILDER`` and ``PACKAGE`` are shell-style patterns (:func:`fnmatch.fnmatchcase`) on the
  builder name and the source package name (from the ``.dsc`` in the filemap); a missing
  ``BUILDER`` part matches every builder.
- ``OUTCOME`` is one of OK, PACKAGEFAIL, DEPFAIL, CHROOTFAIL, BUILDERFAIL, GIVENBACK
  (any case).
- ``[DEPENDENCIES]`` is the unmet-dependencies string a DEPFAIL reports (commas allowed).
- ``SECONDS`` is how long the build runs (default: the farm's build time).

Example: ``"bob*/*=BUILDERFAIL, hello*=DEPFAIL[libfoo (>= 1.0), libbar]:3, *=OK:2"``.

No Twisted imports: this is pure policy.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable
from fnmatch import fnmatchcase

from attrs import field, frozen

__all__ = [
    "DEFAULT_DEPENDENCIES",
    "RULES_SYNTAX",
    "Decision",
    "Outcome",
    "OutcomeRule",
    "RuleSyntaxError",
    "decide",
    "format_rules",
    "parse_rules",
]

#: What a DEPFAIL reports when its rule gives no dependencies.
DEFAULT_DEPENDENCIES = "slavesim-missing-dependency (>= 1.0)"

RULES_SYNTAX = "[BUILDER/]PACKAGE=OUTCOME[[DEPENDENCIES]][:SECONDS], ..."


class Outcome(enum.Enum):
    """How a scripted build ends; the value is the ``build_status`` it reports."""

    OK = "BuildStatus.OK"
    PACKAGEFAIL = "BuildStatus.PACKAGEFAIL"
    DEPFAIL = "BuildStatus.DEPFAIL"
    CHROOTFAIL = "BuildStatus.CHROOTFAIL"
    BUILDERFAIL = "BuildStatus.BUILDERFAIL"
    GIVENBACK = "BuildStatus.GIVENBACK"


def _check_duration(instance: object, attribute: object, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"duration must be a finite number of seconds >= 0, not {value!r}")


@frozen
class OutcomeRule:
    """Builds of packages matching ``package`` on builders matching ``builder`` end so.

    ``duration`` ``None`` means the farm's default build time. ``dependencies`` is only
    meaningful for DEPFAIL (``None``: :data:`DEFAULT_DEPENDENCIES`).
    """

    outcome: Outcome
    package: str = "*"
    builder: str | None = None
    duration: float | None = field(default=None, validator=_check_duration)
    dependencies: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.dependencies is not None and self.outcome is not Outcome.DEPFAIL:
            raise ValueError("only a DEPFAIL rule has dependencies")

    def matches(self, builder: str, package: str) -> bool:
        """Whether a build of ``package`` on ``builder`` falls under this rule."""
        return fnmatchcase(package, self.package) and (
            self.builder is None or fnmatchcase(builder, self.builder)
        )


@frozen
class Decision:
    """What a build will do: end with ``outcome`` after ``duration`` seconds."""

    outcome: Outcome
    duration: float
    dependencies: str = ""


def decide(
    rule_lists: Iterable[Iterable[OutcomeRule]],
    builder: str,
    package: str,
    default_duration: float,
) -> Decision:
    """The first rule matching ``builder``/``package`` in ``rule_lists`` decides; else OK."""
    for rules in rule_lists:
        for rule in rules:
            if rule.matches(builder, package):
                dependencies = ""
                if rule.outcome is Outcome.DEPFAIL:
                    dependencies = (
                        DEFAULT_DEPENDENCIES if rule.dependencies is None else rule.dependencies
                    )
                duration = default_duration if rule.duration is None else rule.duration
                return Decision(rule.outcome, duration, dependencies)
    return Decision(Outcome.OK, default_duration)


class RuleSyntaxError(ValueError):
    """An ``--outcomes`` string that does not follow :data:`RULES_SYNTAX`."""


_RHS = re.compile(r"(?P<outcome>[A-Za-z]+)(?:\[(?P<deps>.*)\])?(?::(?P<seconds>[^:\[\]]*))?\Z")
_PATTERN_FORBIDDEN = re.compile(r"[\s=,/:]")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``[...]``."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(0, depth - 1)
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return items


def _parse_rule(item: str) -> OutcomeRule:
    def fail(why: str) -> RuleSyntaxError:
        return RuleSyntaxError(
            f"bad outcome rule {item!r}: {why} (expected {RULES_SYNTAX}, "
            "e.g. 'hello*=DEPFAIL[libfoo (>= 1.0)]:3,*=OK:2')"
        )

    if not item:
        raise fail("empty rule (two commas in a row, or a trailing comma?)")
    lhs, eq, rhs = item.partition("=")
    if not eq:
        raise fail("no '='")
    builder: str | None
    if "/" in lhs:
        builder, _, package = lhs.partition("/")
        if not builder:
            raise fail("empty builder pattern")
    else:
        builder, package = None, lhs
    if not package:
        raise fail("empty package pattern")
    for pattern in (builder, package):
        if pattern is not None and _PATTERN_FORBIDDEN.search(pattern):
            raise fail(f"pattern {pattern!r} contains a space, '=', ',', '/' or ':'")
    match = _RHS.match(rhs)
    if match is None:
        raise fail("cannot read OUTCOME[[DEPENDENCIES]][:SECONDS]")
    name = match["outcome"].upper()
    try:
        outcome = Outcome[name]
    except KeyError:
        choices = ", ".join(o.name for o in Outcome)
        raise fail(f"unknown outcome {match['outcome']!r} (one of {choices})") from None
    duration = None
    if match["seconds"] is not None:
        try:
            duration = float(match["seconds"])
        except ValueError:
            raise fail(f"{match['seconds']!r} is not a number of seconds") from None
    try:
        return OutcomeRule(
            outcome=outcome,
            package=package,
            builder=builder,
            duration=duration,
            dependencies=match["deps"],
        )
    except ValueError as e:
        raise fail(str(e)) from None


def parse_rules(text: str) -> list[OutcomeRule]:
    """Parse an ``--outcomes`` string; raise :class:`RuleSyntaxError` if malformed.

    A blank string gives no rules (every build succeeds after the default time).
    """
    if not text.strip():
        return []
    return [_parse_rule(item.strip()) for item in _split_top_level(text)]


def format_rules(rules: Iterable[OutcomeRule]) -> str:
    """The ``--outcomes`` string for ``rules`` (:func:`parse_rules` reads it back)."""
    out = []
    for rule in rules:
        text = rule.package if rule.builder is None else f"{rule.builder}/{rule.package}"
        text += "=" + rule.outcome.name
        if rule.dependencies is not None:
            text += f"[{rule.dependencies}]"
        if rule.duration is not None:
            text += f":{rule.duration!r}"
        out.append(text)
    return ",".join(out)
