"""What a builder fetched for a dispatch, in words for the build's "dispatched" event. Pure.

A dispatch has the builder ``ensurepresent`` the chroot and the sources; launchpad-buildd
answers whether it fetched each file (``"Download"``) or had it in its cache (``"Cache"``).
Said per build, an operator sees chroot affinity work: a trusted builder given a build of
the series it built last has the chroot already.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

__all__ = ["FileFetch", "fetch_note", "size_text"]


@attrs.frozen
class FileFetch:
    #: ``chroot`` or ``source``
    kind: str
    #: its size in the librarian (ours: not the builder's word)
    size: int
    #: fetched (``True``), from the builder's cache (``False``), or not said (``None``)
    fetched: bool | None
    #: what the builder said
    message: str


def size_text(size: int) -> str:
    """``312 MB``, ``1.2 kB``, ``512 bytes`` (decimal units)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{size} byte{'s' if size != 1 else ''}"


def _files(count: int) -> str:
    return f"{count} file{'s' if count != 1 else ''}"


def _said(message: str) -> str:
    return repr(message if len(message) <= 40 else message[:40] + "...")


def fetch_note(files: Sequence[FileFetch]) -> str:
    """``chroot fetched: 312 MB; sources fetched: 2 files, 1.2 kB``, ``chroot from the
    builder's cache; ...``; empty for no files."""
    parts = []
    for f in files:
        if f.kind != "chroot":
            continue
        if f.fetched is None:
            parts.append(f"chroot present, the builder said {_said(f.message)}")
        elif f.fetched:
            parts.append(f"chroot fetched: {size_text(f.size)}")
        else:
            parts.append("chroot from the builder's cache")
    sources = [f for f in files if f.kind == "source"]
    fetched = [f for f in sources if f.fetched]
    cached = [f for f in sources if f.fetched is False]
    unknown = [f for f in sources if f.fetched is None]
    size = size_text(sum(f.size for f in fetched))
    if sources and len(fetched) == len(sources):
        parts.append(f"sources fetched: {_files(len(sources))}, {size}")
    elif sources and len(cached) == len(sources):
        parts.append("sources from the builder's cache")
    elif sources:
        said = []
        if fetched:
            said.append(f"{_files(len(fetched))} fetched, {size}")
        if cached:
            said.append(f"{len(cached)} from the builder's cache")
        if unknown:
            said.append(f"{len(unknown)} present, the builder said {_said(unknown[0].message)}")
        parts.append(f"sources: {', '.join(said)}")
    return "; ".join(parts)
