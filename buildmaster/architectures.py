"""Which architectures a source package is built on. Pure.

A ``.dsc``'s ``Architecture`` field lists Debian architecture names and wildcards:

* ``any``: every architecture of the series; ``linux-any``, ``any-<cpu>`` and
  ``linux-<cpu>``: those of the series that match (every architecture here runs Linux;
  ``<os>-any`` for any other OS matches none);
* ``all``: architecture-independent packages, built once: on the architecture-independent
  build architecture of the series (amd64, else i386, else the first by name) when nothing
  else is built; otherwise along with that architecture's build;
* a plain name: that architecture.

Disabled architectures are never chosen. A caller may narrow the choice to some of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs

__all__ = ["ArchitectureChoice", "choose_architectures", "ARCH_INDEP_PREFERENCE"]

#: the architectures, in order, that build architecture-independent packages
ARCH_INDEP_PREFERENCE = ("amd64", "i386")

#: Debian's CPU name of architectures whose CPU is named otherwise
_CPU = {"armel": "arm", "armhf": "arm", "x32": "amd64", "lpia": "i386"}


def _cpu(arch: str) -> str:
    return _CPU.get(arch, arch)


def _matches(wildcard: str, arch: str) -> bool:
    if wildcard in ("any", "linux-any", arch):
        return True
    if "-" not in wildcard:
        return False
    os_name, cpu = wildcard.split("-", 1)
    return os_name in ("any", "linux") and cpu == _cpu(arch)


@attrs.frozen
class ArchitectureChoice:
    #: the architecture tags to build on, in the series' order
    tags: tuple[str, ...]
    #: why nothing (or less than asked) is built, for the uploader
    problem: str | None = None


def arch_indep_tag(available: Sequence[str]) -> str | None:
    """The architecture that builds ``all`` packages, of those ``available``."""
    for tag in ARCH_INDEP_PREFERENCE:
        if tag in available:
            return tag
    return min(available) if available else None


def choose_architectures(
    field: str, available: Sequence[str], requested: Iterable[str] | None = None
) -> ArchitectureChoice:
    """The architectures of ``available`` (the series' enabled ones) that the ``.dsc``'s
    ``Architecture`` ``field`` asks for, narrowed to ``requested`` when given.

    A choice without tags has a ``problem`` saying why; so has one that leaves out some of
    ``requested``.
    """
    words = field.split()
    if not words:
        return ArchitectureChoice((), "the .dsc's Architecture field is empty")
    wanted = [a for a in available if any(_matches(w, a) for w in words if w != "all")]
    if not wanted and "all" in words:
        indep = arch_indep_tag(available)
        wanted = [indep] if indep is not None else []
    if not wanted:
        return ArchitectureChoice(
            (),
            f"the .dsc asks for {field!r}, which the series does not have"
            f" (it has {', '.join(available) or 'no enabled architecture'})",
        )
    if requested is None:
        return ArchitectureChoice(tuple(wanted))
    asked = list(dict.fromkeys(requested))
    chosen = tuple(a for a in wanted if a in asked)
    missing = [a for a in asked if a not in wanted]
    problem = None
    if missing:
        problem = (
            f"not built on {', '.join(missing)}: the .dsc asks for {field!r}, which gives"
            f" {', '.join(wanted)} in this series"
        )
    return ArchitectureChoice(chosen, problem)
