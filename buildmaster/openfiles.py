"""How many files the master keeps open, and the process's limit on them.

Every builder costs the master up to :data:`PER_BUILDER` file descriptors at once: up to four
connections to it kept open between calls (``buildmaster.httpclient`` keeps four idle ones per
builder), the builder's own connection to the librarian while it downloads a file, and the
librarian file a collection from it is being written to. On top of those, :data:`BASE`
covers the process itself (standard streams, the reactor's descriptors, the listening web
server, log files, the private PostgreSQL cluster's pipes and the files the librarian's
threads have open), and each database connection takes one more. So::

    needed = BASE + database connections + PER_BUILDER x registered builders

With the common soft limit of 1,024 that is about 140 builders; the hard limit is usually far
higher, and :func:`raise_file_limit` (``twistd buildmaster`` calls it) raises the soft limit
to it. :func:`shortfall` says what to do when even that is too low.
"""

from __future__ import annotations

import resource

__all__ = ["BASE", "PER_BUILDER", "files_needed", "raise_file_limit", "shortfall"]

#: Descriptors of the process itself (see the module docstring).
BASE = 128
#: Descriptors one builder may hold at once (see the module docstring).
PER_BUILDER = 6


def files_needed(builders: int, database_connections: int) -> int:
    """The open files a master working ``builders`` builders may need at once."""
    return BASE + database_connections + PER_BUILDER * builders


def shortfall(builders: int, database_connections: int, soft: int, hard: int) -> str | None:
    """``None`` when a soft limit of ``soft`` open files is enough for ``builders``; otherwise
    one line saying what to raise (``hard`` is the hard limit, shown when it is the problem)."""
    needed = files_needed(builders, database_connections)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    if hard != resource.RLIM_INFINITY and hard < needed:
        how = (
            f"its hard limit is {hard}: raise it (LimitNOFILE={needed} in a systemd unit,"
            " nofile in /etc/security/limits.conf)"
        )
    else:
        how = f"raise its soft limit (`ulimit -n {needed}`)"
    return (
        f"{builders} registered builders need up to {needed} open files"
        f" ({BASE} + {database_connections} database connections + {PER_BUILDER} per builder),"
        f" but this process may open only {soft}: {how}"
    )


def raise_file_limit() -> None:
    """Raise this process's soft limit of open files to its hard limit (65,536 when the hard
    limit is unlimited); when the system refuses, the soft limit stays as it was (and
    :func:`shortfall` tells whether it is enough)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # pragma: no cover - refused: keep the soft limit
            pass
