"""Files to and from the master: streamed in pieces, hashed on the way, with a progress bar
on a terminal (and none when standard error is not one)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import httpx

from buildmaster.cli.client import Api, CliError

__all__ = [
    "CHUNK",
    "digest_header",
    "download",
    "file_digests",
    "progress",
    "safe_target",
    "send_file",
]

CHUNK = 256 * 1024
#: files smaller than this go without a progress bar
BAR_THRESHOLD = 1024 * 1024


@contextlib.contextmanager
def progress(length: int, label: str) -> Iterator[Callable[[int], None]]:
    """A function that advances a progress bar on standard error by so many bytes; a bar
    only on a terminal, and only for a big file."""
    if length < BAR_THRESHOLD or not sys.stderr.isatty():
        yield lambda n: None
        return
    with click.progressbar(length=length, label=label, file=sys.stderr, width=30) as bar:
        yield bar.update


def file_digests(path: Path, label: str = "") -> dict[str, str]:
    """md5, sha1 and sha256 (hex) of a file, read in pieces."""
    hashes = {name: hashlib.new(name) for name in ("md5", "sha1", "sha256")}
    with (
        path.open("rb") as f,
        progress(path.stat().st_size, label or f"checking {path.name}") as bar,
    ):
        while chunk := f.read(CHUNK):
            for h in hashes.values():
                h.update(chunk)
            bar(len(chunk))
    return {name: h.hexdigest() for name, h in hashes.items()}


def digest_header(sha256_hex: str) -> str:
    """``Content-Digest`` (RFC 9530) for a SHA-256."""
    return "sha-256=:" + base64.b64encode(bytes.fromhex(sha256_hex)).decode() + ":"


def send_file(
    api: Api, path: str, file: Path, sha256: str, content_type: str = "application/octet-stream"
) -> Any:
    """PUT ``file`` to ``path`` in pieces, with its digest; the answer."""
    size = file.stat().st_size

    def chunks() -> Iterator[bytes]:
        with file.open("rb") as f, progress(size, f"sending {file.name}") as bar:
            while chunk := f.read(CHUNK):
                bar(len(chunk))
                yield chunk

    headers = {"Content-Digest": digest_header(sha256), "Content-Type": content_type}
    return api.put_stream(path, chunks(), size, headers)


def safe_target(directory: Path, filename: str) -> Path:
    """Where ``filename`` goes in ``directory``; refuses a name that would land elsewhere.

    :raises CliError: for an empty name, ``.``, ``..``, or one with a separator or NUL.
    """
    bad = (
        not filename
        or filename in (".", "..")
        or "/" in filename
        or "\\" in filename
        or "\0" in filename
        or os.path.basename(filename) != filename
    )
    target = directory / filename
    if bad or target.resolve().parent != directory.resolve():
        raise CliError(
            f"refusing the file name {filename!r}: it would be written outside {directory}"
        )
    return target


def download(api: Api, file: dict[str, Any], directory: Path) -> Path:
    """Fetch one of the API's files (``url``, ``size``, ``sha256``) into ``directory``,
    checking its size and SHA-256 before it takes its name.

    :raises CliError: when it cannot be fetched, or is not what the master says it is.
    """
    target = safe_target(directory, file["filename"])
    partial = target.with_name(f".{target.name}.part")
    sha256 = hashlib.sha256()
    size = 0
    try:
        with (
            api.download(file["url"], file.get("download_token")) as response,
            partial.open("wb") as out,
            progress(file["size"], f"fetching {target.name}") as bar,
        ):
            try:
                for chunk in response.iter_bytes(CHUNK):
                    out.write(chunk)
                    sha256.update(chunk)
                    size += len(chunk)
                    bar(len(chunk))
            except httpx.HTTPError as e:
                raise CliError(f"fetching {file['url']} failed: {e}") from None
        if size != file["size"] or sha256.hexdigest() != file["sha256"]:
            raise CliError(
                f"{target.name} is not what the master says: {size} bytes with SHA-256"
                f" {sha256.hexdigest()}, expected {file['size']} bytes with {file['sha256']}"
            )
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target
