"""What builders say, parsed and validated into value objects (builders are untrusted).

The parse functions take the Python values ``xmlrpc.client.loads`` produced and either
return a frozen value object or raise :class:`BuilderProtocolError` with a reason that can
go straight into ``failnotes``. :func:`check_filemap` applies the stricter rules for result
files, whose names end up on our disk and in the librarian.
"""

from __future__ import annotations

import re
import xmlrpc.client
from typing import Any

import attrs

from buildmaster.enums import BuilderResult, BuilderStatus

__all__ = [
    "BuilderError",
    "BuilderProtocolError",
    "ResultRefused",
    "BuilderInfo",
    "StatusReport",
    "EnsurePresentResult",
    "BuildStartResult",
    "parse_info",
    "parse_status",
    "parse_ensurepresent",
    "parse_build",
    "parse_state_reply",
    "check_filemap",
    "FilemapLimits",
    "PROTOCOL_VERSION",
    "LOGTAIL_LIMIT",
]

PROTOCOL_VERSION = "1.0"
#: The real daemon sends at most 2 KiB of log tail; we keep at most this much of what we get.
LOGTAIL_LIMIT = 16 * 1024
_SHORT_TEXT = 1024
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class BuilderError(Exception):
    """Talking to a builder failed; ``str()`` is a one-line reason for ``failnotes``."""


class BuilderProtocolError(BuilderError):
    """The builder answered something that does not follow the protocol."""


class ResultRefused(Exception):
    """A finished build's results cannot be accepted (the reason goes on the build)."""


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _describe(value: Any) -> str:
    return _clip(repr(value), 80)


def _text(value: Any, what: str, limit: int = _SHORT_TEXT) -> str:
    if not isinstance(value, str):
        raise BuilderProtocolError(f"{what} should be a string, got {_describe(value)}")
    if len(value) > limit:
        raise BuilderProtocolError(f"{what} is {len(value)} characters long (limit {limit})")
    return value


@attrs.frozen
class BuilderInfo:
    protocol_version: str
    arch_tag: str
    builder_types: tuple[str, ...]


@attrs.frozen
class StatusReport:
    """One answer to ``status()``."""

    builder_status: BuilderStatus
    builder_version: str | None = None
    build_id: str | None = None
    logtail: bytes | None = None
    build_status: BuilderResult | None = None
    #: (filename, sha1) pairs exactly as the builder listed them; see :func:`check_filemap`
    filemap: tuple[tuple[str, str], ...] = ()
    dependencies: str | None = None


#: what a builder that has a file says about it: launchpad-buildd answers ``[True, "Cache"]``
#: when it had the file in its cache, ``[True, "Download"]`` when it fetched it
_FETCHED = {"Download": True, "Cache": False}


@attrs.frozen
class EnsurePresentResult:
    present: bool
    #: the builder's words (its own, clipped; a description of what it sent when that was
    #: not a string)
    message: str

    @property
    def fetched(self) -> bool | None:
        """Whether the builder fetched the file (``True``) or had it in its cache
        (``False``); ``None`` when it does not have it or said something else."""
        return _FETCHED.get(self.message) if self.present else None


@attrs.frozen
class BuildStartResult:
    """The answer to ``build()``: ``BuilderStatus.BUILDING`` with the build id on success."""

    status: str
    info: str

    @property
    def started(self) -> bool:
        return self.status == BuilderStatus.BUILDING.value


def parse_info(value: Any) -> BuilderInfo:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise BuilderProtocolError(
            f"info() should return [version, arch, types], got {_describe(value)}"
        )
    version, arch, types = value
    if not isinstance(types, list | tuple):
        raise BuilderProtocolError(f"info() builder types should be a list, got {_describe(types)}")
    return BuilderInfo(
        _text(version, "protocol version", 50),
        _text(arch, "architecture tag", 100),
        tuple(_text(t, "builder type", 100) for t in types),
    )


def _logtail(value: Any) -> bytes:
    if isinstance(value, xmlrpc.client.Binary):
        data = bytes(value.data)
    elif isinstance(value, str):  # older daemons sent text
        data = value.encode("utf-8", "replace")
    elif isinstance(value, bytes):
        data = value
    else:
        raise BuilderProtocolError(f"logtail should be binary, got {_describe(value)}")
    return data[-LOGTAIL_LIMIT:]


def parse_status(value: Any) -> StatusReport:
    """Validate a ``status()`` answer.

    :raises BuilderProtocolError: unknown state, missing or mistyped fields.
    """
    if not isinstance(value, dict):
        raise BuilderProtocolError(f"status() should return a dict, got {_describe(value)}")
    raw_status = value.get("builder_status")
    try:
        builder_status = BuilderStatus(raw_status)
    except ValueError:
        raise BuilderProtocolError(f"unknown builder_status {_describe(raw_status)}") from None
    version = value.get("builder_version")
    fields: dict[str, Any] = {
        "builder_status": builder_status,
        "builder_version": None if version is None else _text(version, "builder_version", 200),
    }
    if builder_status is BuilderStatus.IDLE:
        return StatusReport(**fields)
    if "build_id" not in value:
        raise BuilderProtocolError(f"status() says {builder_status.name} without a build_id")
    fields["build_id"] = _text(value["build_id"], "build_id", 200)
    if builder_status is BuilderStatus.BUILDING:
        if "logtail" in value:
            fields["logtail"] = _logtail(value["logtail"])
        return StatusReport(**fields)
    if builder_status is BuilderStatus.ABORTING:
        return StatusReport(**fields)
    raw_result = value.get("build_status")
    try:
        fields["build_status"] = BuilderResult(raw_result)
    except ValueError:
        raise BuilderProtocolError(f"unknown build_status {_describe(raw_result)}") from None
    filemap = value.get("filemap")
    if filemap is not None:
        if not isinstance(filemap, dict):
            raise BuilderProtocolError(f"filemap should be a dict, got {_describe(filemap)}")
        pairs = []
        for name, sha1 in filemap.items():
            if not isinstance(name, str) or not isinstance(sha1, str):
                raise BuilderProtocolError(
                    f"filemap entry {_describe(name)}: {_describe(sha1)} is not text"
                )
            pairs.append((name, sha1))
        fields["filemap"] = tuple(pairs)
    dependencies = value.get("dependencies")
    if dependencies is not None:
        fields["dependencies"] = _text(dependencies, "dependencies", 64 * 1024)
    return StatusReport(**fields)


def parse_ensurepresent(value: Any) -> EnsurePresentResult:
    """``[present, message]``: ``present`` must be a bool; the message is only words (an
    unknown one, even one that is not a string, is kept as a description, not refused)."""
    if not isinstance(value, list | tuple) or len(value) != 2 or not isinstance(value[0], bool):
        raise BuilderProtocolError(
            f"ensurepresent() should return [bool, message], got {_describe(value)}"
        )
    message = value[1]
    return EnsurePresentResult(
        value[0], _clip(message, 1000) if isinstance(message, str) else _describe(message)
    )


def parse_build(value: Any) -> BuildStartResult:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise BuilderProtocolError(f"build() should return [status, info], got {_describe(value)}")
    status = _text(value[0], "build() status", 100)
    info = value[1]
    return BuildStartResult(status, _clip(info if isinstance(info, str) else repr(info), 1000))


def parse_state_reply(value: Any, call: str) -> BuilderStatus:
    """``abort()`` and ``clean()`` answer with the builder's new state."""
    try:
        return BuilderStatus(value)
    except ValueError:
        raise BuilderProtocolError(f"{call}() returned {_describe(value)}") from None


# -- result files -------------------------------------------------------------------------


@attrs.frozen
class FilemapLimits:
    max_files: int = 1000
    max_name: int = 255


def check_filemap(
    filemap: tuple[tuple[str, str], ...], limits: FilemapLimits = FilemapLimits()
) -> dict[str, str]:
    """The result files a build may deliver, or :class:`ResultRefused` with the reason.

    A name must be a plain file name (no directories, no ``..``, no control characters,
    not hidden) and a SHA-1 must be 40 lowercase hex digits.
    """
    if len(filemap) > limits.max_files:
        raise ResultRefused(
            f"the builder listed {len(filemap)} result files (limit {limits.max_files})"
        )
    accepted: dict[str, str] = {}
    for name, sha1 in filemap:
        if (
            not name
            or len(name) > limits.max_name
            or "/" in name
            or "\\" in name
            or name.startswith(".")
            or _CONTROL.search(name)
            or name == "buildlog"
        ):
            raise ResultRefused(f"unsafe result file name {_clip(repr(name), 100)}")
        if not _SHA1.match(sha1):
            raise ResultRefused(
                f"result file {name!r} has an invalid SHA-1 {_clip(repr(sha1), 60)}"
            )
        accepted[name] = sha1
    return accepted
