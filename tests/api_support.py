"""Talking to the operator API over real HTTP in tests, and making Debian sources to upload."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
from typing import Any

import attrs

from buildmaster.httpclient import HTTPClient

__all__ = ["ApiClient", "Answer", "SourcePackage", "make_source", "digest_header"]


@attrs.frozen
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        value = self.headers.get(name.lower().encode())
        return value.decode() if value is not None else None

    @property
    def is_problem(self) -> bool:
        return self.header("content-type") == "application/problem+json"


class ApiClient:
    """JSON requests to ``base_url``, with a bearer token when given one."""

    def __init__(self, reactor: Any, base_url: str, token: str | None = None) -> None:
        self.reactor = reactor
        self.base_url = base_url
        self.token = token
        self.http = HTTPClient(reactor)

    def with_token(self, token: str | None) -> ApiClient:
        other = ApiClient(self.reactor, self.base_url, token)
        other.http = self.http
        return other

    async def call(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> Answer:
        sent = {k.lower().encode(): v.encode() for k, v in (headers or {}).items()}
        if self.token is not None:
            sent.setdefault(b"authorization", f"Bearer {self.token}".encode())
        if json_body is not None:
            body = json.dumps(json_body).encode()
            sent.setdefault(b"content-type", b"application/json")
        response = await self.http.request(
            method.encode(),
            self.base_url + path,
            body=body or b"",
            headers=sent,
            timeout=timeout,
            max_body=64 * 1024 * 1024,
        )
        return Answer(response.status, response.headers, response.body or b"")

    async def get(self, path: str, **kw: Any) -> Answer:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, json_body: Any = None, **kw: Any) -> Answer:
        return await self.call(
            "POST", path, json_body=json_body if json_body is not None else {}, **kw
        )

    async def patch(self, path: str, json_body: Any, **kw: Any) -> Answer:
        return await self.call("PATCH", path, json_body=json_body, **kw)

    async def put(self, path: str, body: bytes, **kw: Any) -> Answer:
        return await self.call("PUT", path, body=body, **kw)

    async def delete(self, path: str, **kw: Any) -> Answer:
        return await self.call("DELETE", path, **kw)

    def close(self) -> None:
        self.http.close_idle()


def digest_header(data: bytes) -> dict[str, str]:
    """``Content-Digest`` (RFC 9530) of ``data``."""
    value = base64.b64encode(hashlib.sha256(data).digest()).decode()
    return {"Content-Digest": f"sha-256=:{value}:"}


@attrs.frozen
class SourcePackage:
    name: str
    version: str
    files: dict[str, bytes]

    @property
    def dsc_name(self) -> str:
        return f"{self.name}_{self.version.split(':')[-1]}.dsc"

    @property
    def dsc(self) -> bytes:
        return self.files[self.dsc_name]


def _tarball(member: str, content: bytes) -> bytes:
    """A gzipped tarball of one file, the same bytes every time (no time stamps)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(content)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))
    return gzip.compress(buffer.getvalue(), mtime=0)


def make_source(
    name: str = "hello",
    upstream: str = "2.10",
    revision: str = "1",
    architecture: str = "any",
    sign: bool = False,
    orig_size: int = 0,
    tamper: dict[str, Any] | None = None,
) -> SourcePackage:
    """A 3.0 (quilt) source package: ``.dsc``, ``.orig.tar.gz`` and ``.debian.tar.xz``.

    ``orig_size`` pads the orig tarball with that many bytes; ``tamper`` makes the ``.dsc``
    lie about a file: ``{"file": name, "size": n}`` or ``{"file": name, "sha256": hex}``.
    """
    version = f"{upstream}-{revision}"
    orig = _tarball(f"{name}-{upstream}/README", b"hello\n" + b"x" * orig_size)
    debian = _tarball("debian/control", f"Source: {name}\n".encode())
    files = {
        f"{name}_{upstream}.orig.tar.gz": orig,
        f"{name}_{version}.debian.tar.xz": debian,
    }

    def lines(algorithm: str, field: str) -> str:
        out = [f"{field}:"]
        for filename, data in files.items():
            size = len(data)
            digest = hashlib.new(algorithm, data).hexdigest()
            if tamper and tamper.get("file") == filename:
                size = tamper.get("size", size)
                digest = tamper.get(algorithm, digest)
            out.append(f" {digest} {size} {filename}")
        return "\n".join(out)

    text = (
        "\n".join(
            [
                "Format: 3.0 (quilt)",
                f"Source: {name}",
                f"Binary: {name}",
                f"Architecture: {architecture}",
                f"Version: {version}",
                "Maintainer: Sample Maintainer <sample@example.com>",
                "Standards-Version: 4.6.0",
                lines("sha1", "Checksums-Sha1"),
                lines("sha256", "Checksums-Sha256"),
                lines("md5", "Files"),
            ]
        )
        + "\n"
    )
    if sign:
        text = (
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n"
            + text
            + "\n-----BEGIN PGP SIGNATURE-----\n\niQIzBAEBCAAdFiEEexampleexample\n=AbCd\n"
            "-----END PGP SIGNATURE-----\n"
        )
    files[f"{name}_{version}.dsc"] = text.encode()
    return SourcePackage(name, version, files)
