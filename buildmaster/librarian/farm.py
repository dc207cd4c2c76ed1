"""What the masters of one farm share about files: the token secret, the farm's identity, and
the files directory marked with it.

Several masters on one database serve every file to any builder: a builder may be handed a
URL and a token by one master and fetch the file from another (a load balancer in front of
the masters, or a master that took the builder over). So

* the catalogue (``libraryfilecontent``, ``libraryfilealias``) is in the database already;
* the token secret is in the database too (table ``farm``, one row): the first master that
  starts creates it (``INSERT ... ON CONFLICT DO NOTHING``, then everybody reads the row),
  offering the ``librarian.secret`` of its state directory if it has one from before, so
  tokens handed out before the upgrade stay valid;
* the bytes are in one directory that every master mounts (``--files-dir``: NFS, CephFS,
  any POSIX filesystem where a rename within the directory is atomic). The directory holds
  a ``farm-id`` file with the farm's id (a UUID of the ``farm`` row): a master given the
  files directory of another farm is refused at start-up, and so is a master given an
  unmarked (local, empty) directory while the farm's is marked already.

Start-up only: :func:`check_files_dir` blocks (run it in a thread).
"""

from __future__ import annotations

import datetime
import errno
import os
import secrets
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer

from buildmaster.librarian.errors import LibrarianError
from buildmaster.librarian.storage import INCOMING, TEMP_SUFFIX
from buildmaster.store.database import Database, Transaction

__all__ = [
    "MARKER",
    "FarmIdentity",
    "FilesDirError",
    "farm_identity",
    "check_files_dir",
    "read_marker",
    "claim_files_dir",
]

#: The file in the files directory that names the farm it belongs to.
MARKER = "farm-id"
_SECRET_BYTES = 32


class FilesDirError(LibrarianError):
    """The files directory cannot be used; the message (one line) says why and what to do."""


@attrs.frozen
class FarmIdentity:
    """The ``farm`` row."""

    #: the farm's id (a UUID, as text)
    id: str
    #: the HMAC key of librarian tokens
    secret: bytes
    #: when a files directory was first marked with :attr:`id` (``None``: none yet)
    files_dir_marked: datetime.datetime | None


async def farm_identity(db: Database, offer: bytes | None = None) -> FarmIdentity:
    """The farm's row, made now if there is none: with the secret ``offer`` (an old
    state directory's) if given, else with a fresh random one. Two masters making it at once
    both get the row of the one that came first."""
    if offer is not None and len(offer) < 16:
        raise ValueError("a librarian secret has at least 16 bytes")
    await db.execute(
        "INSERT INTO farm (id, librarian_secret) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (str(uuid.uuid4()), offer if offer is not None else secrets.token_bytes(_SECRET_BYTES)),
    )
    rows = await db.query("SELECT id, librarian_secret, files_dir_marked FROM farm")
    [(farm_id, secret, marked)] = rows
    return FarmIdentity(str(farm_id), bytes(secret), marked)


def check_files_dir(root: Path) -> str | None:
    """Make sure ``root`` can hold the librarian's files: a directory (created if missing)
    this process may write to, where a file written in ``incoming/`` can be renamed into
    place and linked. Blocking.

    :returns: the farm id its :data:`MARKER` names, ``None`` when it has none.
    :raises FilesDirError: saying what is wrong.
    """
    if root.exists() and not root.is_dir():
        raise FilesDirError(f"the files directory {root} is not a directory: fix --files-dir")
    # named as an upload's temporary file: one left by a crash is swept as abandoned
    probe = root / INCOMING / f".probe-{secrets.token_hex(8)}{TEMP_SUFFIX}"
    placed = root / f".probe-{secrets.token_hex(8)}"
    step = "write"
    try:
        (root / INCOMING).mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        step = "rename"
        os.rename(probe, placed)
        step = "link"  # the collector and the marker link files into place
        os.link(placed, probe)
        os.unlink(probe)
        os.unlink(placed)
    except OSError as e:
        for leftover in (probe, placed):
            try:
                leftover.unlink()
            except OSError:
                pass
        if step == "rename" and e.errno == errno.EXDEV:
            raise FilesDirError(
                f"the files directory {root}: a file in {root / INCOMING} cannot be renamed"
                " into it (another filesystem is mounted there): incoming/ must be on the"
                " files directory's own filesystem"
            ) from None
        if step == "link":
            raise FilesDirError(
                f"the files directory {root} does not take hard links ({e.strerror}): give"
                " --files-dir a directory on a POSIX filesystem (NFS, CephFS, a local one)"
            ) from None
        raise FilesDirError(
            f"the files directory {root} is not usable ({e.strerror}): give --files-dir a"
            " directory this user may write to"
        ) from None
    return read_marker(root)


def read_marker(root: Path) -> str | None:
    """The farm id named by ``root``'s :data:`MARKER`; ``None`` when there is none.
    Blocking.

    :raises FilesDirError: when the marker cannot be read or holds no farm id.
    """
    try:
        text = (root / MARKER).read_text("ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise FilesDirError(f"cannot read {root / MARKER}: {e}") from None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise FilesDirError(
            f"{root / MARKER} does not hold a farm id ({text[:40]!r}): restore it from a"
            " backup, or give --files-dir the farm's files directory"
        ) from None


def _write_marker(root: Path, farm_id: str) -> str:
    """Write ``root``'s marker unless one is there already; the farm id it names. Blocking."""
    aside = root / f".{MARKER}.{secrets.token_hex(8)}"
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, f"{farm_id}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(aside, root / MARKER)  # never replaces one another process has put there
    except FileExistsError:
        pass
    finally:
        aside.unlink()
    found = read_marker(root)
    assert found is not None
    return found


async def claim_files_dir(
    db: Database,
    root: Path,
    farm_id: str,
    run: Callable[..., defer.Deferred[Any]],
) -> None:
    """Make sure ``root`` is this farm's files directory: its marker names ``farm_id``, or it
    has no marker and the farm has never marked one (then it is marked now). ``run`` calls a
    blocking function in a thread.

    Done under the lock of the farm row, so two masters starting at once with different
    unmarked directories cannot both mark theirs.

    :raises FilesDirError: when ``root`` belongs to another farm, or has no marker while
        the farm's files directory has one.
    """

    async def claim(tx: Transaction) -> None:
        row = await tx.query_one("SELECT id, files_dir_marked FROM farm FOR UPDATE")
        assert row is not None, "farm_identity() makes the row first"
        marked = row[1]
        found = await run(read_marker, root)
        if found is None:
            if marked is not None:
                when = marked.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M")
                raise FilesDirError(
                    f"the files directory {root} has no {MARKER} file, but this farm's"
                    f" files directory was marked on {when} UTC: give"
                    " --files-dir the directory the other masters of this database use"
                    f" (its {MARKER} holds {farm_id}); to start this farm's files over in"
                    f" this directory on purpose, write {farm_id} into {root / MARKER}"
                )
            found = await run(_write_marker, root, farm_id)
        if found != farm_id:
            raise FilesDirError(
                f"the files directory {root} belongs to another farm (its {MARKER} names"
                f" {found}; this database is farm {farm_id}): give --files-dir the files"
                " directory of this database's farm"
            )
        if marked is None:
            await tx.execute("UPDATE farm SET files_dir_marked = now()")

    await db.transaction(claim, retries=0)
