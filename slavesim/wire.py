"""The builder protocol's wire values, and the parsing of raw XML-RPC arguments.

Everything a master sends arrives here first. The functions below turn raw XML-RPC
arguments into frozen value objects or raise :class:`BadCall`; nothing raw travels further.
A :class:`BadCall` becomes ``Fault 8002 'error'`` on the wire, exactly what the real daemon
answers for any call it cannot process, and leaves the builder untouched.

No Twisted imports: this is pure policy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from attrs import field, frozen

__all__ = [
    "ABORTING",
    "BUILDING",
    "IDLE",
    "PROCEDURES",
    "PROTOCOL_VERSION",
    "REQUIRED_BUILD_ARGS",
    "UNKNOWNBUILDER",
    "UNKNOWNSUM",
    "WAITING",
    "BadCall",
    "BuildRequest",
    "EnsurePresentRequest",
    "WrongState",
    "expect_no_args",
    "is_sha1",
    "parse_build",
    "parse_ensurepresent",
    "split_dsc_name",
]

PROTOCOL_VERSION = "1.0"

IDLE = "BuilderStatus.IDLE"
BUILDING = "BuilderStatus.BUILDING"
ABORTING = "BuilderStatus.ABORTING"
WAITING = "BuilderStatus.WAITING"
UNKNOWNSUM = "BuilderStatus.UNKNOWNSUM"
UNKNOWNBUILDER = "BuilderStatus.UNKNOWNBUILDER"

#: The XML-RPC procedures a builder serves (anything else is ``Fault 8001``).
PROCEDURES = frozenset({"echo", "info", "status", "ensurepresent", "build", "abort", "clean"})

#: Keys of ``build``'s ``args`` without which a binarypackage build cannot start.
REQUIRED_BUILD_ARGS = ("distribution", "series", "suite", "ogrecomponent")

_SHA1 = re.compile(r"[0-9a-f]{40}\Z")
_MAX_NAME = 255
_MAX_BUILD_ID = 255


class BadCall(Exception):
    """A call the builder refuses: malformed arguments. Becomes ``Fault 8002``."""


class WrongState(BadCall):
    """A call made in a state that does not allow it. Becomes ``Fault 8002``."""


def is_sha1(value: object) -> bool:
    """Whether ``value`` is a SHA-1 as the cache names files: 40 lowercase hex digits."""
    return isinstance(value, str) and _SHA1.match(value) is not None


def _sha1(value: object, what: str) -> str:
    if not is_sha1(value):
        raise BadCall(f"{what} is not a SHA-1 (40 lowercase hex digits): {value!r:.80}")
    assert isinstance(value, str)
    return value


def _optional_str(value: object, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise BadCall(f"{what} must be a string or nil, not {type(value).__name__}")


def _arity(method: str, args: tuple[object, ...], count: int) -> None:
    if len(args) != count:
        raise BadCall(f"{method}() takes {count} arguments, got {len(args)}")


def expect_no_args(method: str, args: tuple[object, ...]) -> None:
    """Refuse arguments to a method that takes none (the real daemon raises TypeError)."""
    _arity(method, args, 0)


@frozen
class EnsurePresentRequest:
    """``ensurepresent(sha1, url, username, password)``, checked."""

    sha1: str
    url: str | None
    username: str | None
    password: str | None


def parse_ensurepresent(args: tuple[object, ...]) -> EnsurePresentRequest:
    """Check the arguments of ``ensurepresent``; raise :class:`BadCall` if malformed."""
    _arity("ensurepresent", args, 4)
    sha1, url, username, password = args
    return EnsurePresentRequest(
        sha1=_sha1(sha1, "sha1"),
        url=_optional_str(url, "url"),
        username=_optional_str(username, "username"),
        password=_optional_str(password, "password"),
    )


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


@frozen
class BuildRequest:
    """``build(build_id, builder_type, chroot_sha1, filemap, args)``, type-checked.

    ``dsc`` is the ``.dsc`` file name from the filemap, ``None`` when there is none (the
    builder refuses such a build, but only after the checks the real daemon makes first).
    ``package`` and ``version`` come from the ``.dsc`` name, ``<package>_<version>.dsc``.
    """

    build_id: str
    builder_type: str
    chroot: str
    filemap: Mapping[str, str] = field(converter=_frozen_mapping)
    args: Mapping[str, Any] = field(converter=_frozen_mapping)
    dsc: str | None
    package: str
    version: str

    @property
    def arch_tag(self) -> str | None:
        """``args["arch_tag"]`` when the master sent a usable one."""
        value = self.args.get("arch_tag")
        return value if isinstance(value, str) and value else None

    def missing_args(self) -> list[str]:
        """The required ``args`` keys that are absent or not strings."""
        return [k for k in REQUIRED_BUILD_ARGS if not isinstance(self.args.get(k), str)]


def _file_name(name: object) -> str:
    if (
        not isinstance(name, str)
        or not name
        or len(name) > _MAX_NAME
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
    ):
        raise BadCall(f"filemap has a file name that is not a plain file name: {name!r:.80}")
    return name


def split_dsc_name(dsc: str) -> tuple[str, str]:
    """``"hello_2.10-1.dsc"`` -> ``("hello", "2.10-1")``."""
    stem = dsc[: -len(".dsc")]
    package, _, version = stem.partition("_")
    return package, version or "0"


def parse_build(args: tuple[object, ...]) -> BuildRequest:
    """Check the types of ``build``'s arguments; raise :class:`BadCall` if malformed."""
    _arity("build", args, 5)
    build_id, builder_type, chroot, filemap, extra = args
    if not isinstance(build_id, str) or not build_id or len(build_id) > _MAX_BUILD_ID:
        raise BadCall(f"build_id must be a non-empty string: {build_id!r:.80}")
    if not isinstance(builder_type, str):
        raise BadCall(f"builder_type must be a string: {builder_type!r:.80}")
    if not isinstance(filemap, dict):
        raise BadCall(f"filemap must be a struct, not {type(filemap).__name__}")
    if not isinstance(extra, dict):
        raise BadCall(f"args must be a struct, not {type(extra).__name__}")
    files = {_file_name(name): _sha1(sha1, f"filemap[{name!r}]") for name, sha1 in filemap.items()}
    dscs = sorted(name for name in files if name.endswith(".dsc") and len(name) > len(".dsc"))
    dsc = dscs[0] if dscs else None
    package, version = split_dsc_name(dsc) if dsc else ("", "")
    return BuildRequest(
        build_id=build_id,
        builder_type=builder_type,
        chroot=_sha1(chroot, "chroot_sha1"),
        filemap=files,
        args=extra,
        dsc=dsc,
        package=package,
        version=version,
    )
