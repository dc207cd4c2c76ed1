"""Access tokens: per file (or for uploading), time-limited, unforgeable.

A token is ``<expiry>.<mac>``: the Unix time after which it is refused, and the hex
HMAC-SHA256, under the librarian's secret, of what it grants access to and that expiry. The
master hands a builder a download token as the basic-auth password of ``ensurepresent``;
operators use an upload token the same way. Nothing here does I/O except the secret file
functions, which are meant for start-up (they block briefly).

The secret is the farm's, in the database (see :mod:`buildmaster.librarian.farm`): every
master of the farm makes and accepts the same tokens. Run ``python -m
buildmaster.librarian.tokens --dsn DSN upload`` (or ``file ALIAS_ID``; ``--state-dir DIR``
for a master with its embedded database) to print a token.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import secrets
import stat
import sys
import time
from pathlib import Path
from typing import Any

from buildmaster.librarian.errors import LibrarianError

__all__ = [
    "SECRET_FILENAME",
    "UPLOAD_SUBJECT",
    "file_subject",
    "make_token",
    "check_token",
    "load_or_create_secret",
    "read_secret_file",
]

#: The name of the secret file in the state directory.
SECRET_FILENAME = "librarian.secret"
#: What an upload token grants.
UPLOAD_SUBJECT = "upload"
_SECRET_BYTES = 32
_MAX_TOKEN_LENGTH = 128


def file_subject(alias_id: int) -> str:
    """What a download token for the librarian file ``alias_id`` grants."""
    return f"file:{int(alias_id)}"


def _mac(secret: bytes, subject: str, expires: int) -> str:
    message = f"buildmaster-librarian\n{subject}\n{expires}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def make_token(secret: bytes, subject: str, expires: float) -> str:
    """A token granting ``subject`` until the Unix time ``expires`` (rounded down)."""
    if not secret:
        raise ValueError("an empty secret makes forgeable tokens")
    when = int(expires)
    return f"{when}.{_mac(secret, subject, when)}"


def check_token(secret: bytes, token: str | bytes | None, subject: str, now: float) -> bool:
    """Whether ``token`` grants ``subject`` at time ``now``.

    Anything malformed is simply refused; the comparison takes constant time.
    """
    if not token or not secret:
        return False
    if isinstance(token, bytes):
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            return False
    if len(token) > _MAX_TOKEN_LENGTH:
        return False
    when_text, dot, mac = token.partition(".")
    if not dot or not when_text.isdigit() or not when_text.isascii():
        return False
    when = int(when_text)
    if when <= now:
        return False
    return hmac.compare_digest(mac.encode("ascii"), _mac(secret, subject, when).encode("ascii"))


def load_or_create_secret(state_dir: Path) -> bytes:
    """A librarian HMAC secret kept in ``state_dir/librarian.secret`` (mode 0600): where a
    master kept it before the farm's secret moved into the database, and still the secret of
    a librarian used on its own (tests, benchmarks, embedders without a ``farm`` row).

    Created once (32 random bytes, hex) if missing; safe against two processes creating it at
    the same time (the file is written aside and linked into place). Blocking: call it at
    start-up, not from the reactor loop.

    :raises LibrarianError: when the file is readable by others or does not hold a secret.
    """
    state_dir = Path(state_dir)
    path = state_dir / SECRET_FILENAME
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        aside = state_dir / f".{SECRET_FILENAME}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, secrets.token_hex(_SECRET_BYTES).encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(aside, path)
        except FileExistsError:
            pass  # another process won the race: use its secret
        finally:
            aside.unlink()
    secret = read_secret_file(state_dir)
    assert secret is not None
    return secret


def read_secret_file(state_dir: Path) -> bytes | None:
    """The secret in ``state_dir/librarian.secret``; ``None`` when there is no such file.
    Blocking.

    :raises LibrarianError: when the file is readable by others or does not hold a secret.
    """
    path = Path(state_dir) / SECRET_FILENAME
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise LibrarianError(f"{path} is accessible to other users: chmod 600 it")
    text = path.read_bytes().strip()
    try:
        secret = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise LibrarianError(f"{path} does not hold a hex secret") from None
    if len(secret) < 16:
        raise LibrarianError(f"{path} holds a secret of only {len(secret)} bytes")
    return secret


def main(argv: list[str] | None = None) -> int:
    """``python -m buildmaster.librarian.tokens (--dsn DSN | --state-dir DIR) (upload | file
    ID)``: a token made with the farm's secret (the database's; made now if the farm has
    none yet, as a master would at start)."""
    from buildmaster.tokens import locate_database

    parser = argparse.ArgumentParser(description="Print a librarian access token.")
    parser.add_argument("--dsn", help="libpq connection string (default: $BUILDMASTER_DSN)")
    parser.add_argument(
        "--state-dir", type=Path, help="the master's state dir (its embedded database)"
    )
    parser.add_argument("--lifetime", type=float, default=3600.0, help="seconds (default 3600)")
    parser.add_argument("what", choices=["upload", "file"], help="an upload or a download token")
    parser.add_argument("alias_id", nargs="?", type=int, help="the file, for a download token")
    options = parser.parse_args(argv)
    if options.what == "file" and options.alias_id is None:
        parser.error("a download token needs the file's alias id")
    subject = UPLOAD_SUBJECT if options.what == "upload" else file_subject(options.alias_id)

    async def run(reactor: Any, dsn: str) -> int:
        from buildmaster.librarian.farm import farm_identity
        from buildmaster.store.database import Database
        from buildmaster.store.schema import migrate

        db = Database(reactor, dsn, size=1)
        await db.connect()
        try:
            await migrate(db)
            offer = read_secret_file(options.state_dir) if options.state_dir else None
            farm = await farm_identity(db, offer)
        finally:
            await db.close()
        print(make_token(farm.secret, subject, time.time() + options.lifetime))
        return 0

    return locate_database("buildmaster.librarian.tokens", options.dsn, options.state_dir, run)


if __name__ == "__main__":
    sys.exit(main())
