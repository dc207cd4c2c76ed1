"""Access tokens: per file (or for uploading), time-limited, unforgeable.

A token is ``<expiry>.<mac>``: the Unix time after which it is refused, and the hex
HMAC-SHA256, under the librarian's secret, of what it grants access to and that expiry. The
master hands a builder a download token as the basic-auth password of ``ensurepresent``;
operators use an upload token the same way. Nothing here does I/O except the secret file
functions, which are meant for start-up (they block briefly).

Run ``python -m buildmaster.librarian.tokens --state-dir DIR upload`` (or ``file ALIAS_ID``)
to print a token made with the secret in ``DIR``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import secrets
import stat
import time
from pathlib import Path

from buildmaster.librarian.errors import LibrarianError

__all__ = [
    "SECRET_FILENAME",
    "UPLOAD_SUBJECT",
    "file_subject",
    "make_token",
    "check_token",
    "load_or_create_secret",
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
    """The librarian's HMAC secret, kept in ``state_dir/librarian.secret`` (mode 0600).

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
    mode = path.stat().st_mode
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


def main(argv: list[str] | None = None) -> None:
    """``python -m buildmaster.librarian.tokens --state-dir DIR (upload | file ID)``."""
    parser = argparse.ArgumentParser(description="Print a librarian access token.")
    parser.add_argument("--state-dir", required=True, type=Path, help="the master's state dir")
    parser.add_argument("--lifetime", type=float, default=3600.0, help="seconds (default 3600)")
    parser.add_argument("what", choices=["upload", "file"], help="an upload or a download token")
    parser.add_argument("alias_id", nargs="?", type=int, help="the file, for a download token")
    options = parser.parse_args(argv)
    if options.what == "file" and options.alias_id is None:
        parser.error("a download token needs the file's alias id")
    subject = UPLOAD_SUBJECT if options.what == "upload" else file_subject(options.alias_id)
    secret = load_or_create_secret(options.state_dir)
    print(make_token(secret, subject, time.time() + options.lifetime))


if __name__ == "__main__":
    main()
