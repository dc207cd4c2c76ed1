"""Reading a Debian source control file (``.dsc``) and checking an upload against it. Pure.

The fields are parsed with python-debian (``debian.deb822.Dsc``). Its reading of an
OpenPGP signature is lenient, so the signature's *format* is checked here first: a ``.dsc``
is either unsigned, or clearsigned (``-----BEGIN PGP SIGNED MESSAGE-----``, armor headers,
a blank line, the fields, then one ``-----BEGIN PGP SIGNATURE-----`` ...
``-----END PGP SIGNATURE-----`` block of base64, and nothing after it). Anything else with
an armor line in it is refused. The signature is not verified cryptographically: who may
upload to an archive is decided by the API token.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import attrs
from debian import deb822

from buildmaster.enums import SourcePackageFileType

__all__ = [
    "DscError",
    "ListedFile",
    "SourceControl",
    "parse_dsc",
    "check_files",
    "file_type",
    "StoredFile",
]

_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_VERSION = re.compile(r"(?:[0-9]+:)?[0-9A-Za-z.+~-]+")
_ARMOR = re.compile(rb"^-----(BEGIN|END) PGP ([A-Z ]+)-----\s*$")
_ARMOR_HEADER = re.compile(rb"^[A-Za-z-]+: .*$")
_BASE64 = re.compile(rb"^[A-Za-z0-9+/=]+$")
#: (field, python-debian's key, our name, hex digits)
_CHECKSUM_FIELDS = (
    ("Files", "md5sum", "md5", 32),
    ("Checksums-Sha1", "sha1", "sha1", 40),
    ("Checksums-Sha256", "sha256", "sha256", 64),
)


class DscError(ValueError):
    """The ``.dsc`` cannot be used; ``problems`` says every reason found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@attrs.frozen
class ListedFile:
    """A file the ``.dsc`` lists, with the size and checksums it gives for it."""

    name: str
    size: int
    checksums: Mapping[str, str]


@attrs.frozen
class SourceControl:
    source: str
    version: str
    architecture: str
    format: str
    signed: bool
    files: tuple[ListedFile, ...]

    @property
    def dsc_name(self) -> str:
        """The ``.dsc``'s expected filename: ``<source>_<version without epoch>.dsc``."""
        return f"{self.source}_{self.version.split(':', 1)[-1]}.dsc"


def _armor_kind(line: bytes) -> tuple[bytes, bytes]:
    match = _ARMOR.match(line)
    assert match is not None
    return match.group(1), match.group(2)


def _payload(data: bytes) -> tuple[bytes, bool]:
    """The fields of a ``.dsc``, and whether it was clearsigned.

    :raises DscError: for a malformed signature block.
    """
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    armor = [i for i, line in enumerate(lines) if _ARMOR.match(line)]
    if not armor:
        return data, False
    kinds = [_armor_kind(lines[i]) for i in armor]
    first = next(i for i, line in enumerate(lines) if line.strip())
    if first != armor[0] or kinds[0] != (b"BEGIN", b"SIGNED MESSAGE"):
        raise DscError(["a PGP armor line appears, but the file is not clearsigned"])
    expected = [(b"BEGIN", b"SIGNED MESSAGE"), (b"BEGIN", b"SIGNATURE"), (b"END", b"SIGNATURE")]
    if kinds != expected:
        raise DscError(
            [
                "malformed signature: a clearsigned .dsc has one signed message and one"
                " signature block (BEGIN PGP SIGNED MESSAGE, BEGIN PGP SIGNATURE,"
                " END PGP SIGNATURE)"
            ]
        )
    begin, sig_begin, sig_end = armor
    i = begin + 1
    while i < sig_begin and lines[i].strip():
        if not _ARMOR_HEADER.match(lines[i]):
            raise DscError([f"malformed signature: bad armor header {lines[i][:60]!r}"])
        i += 1
    payload = [line[2:] if line.startswith(b"- ") else line for line in lines[i + 1 : sig_begin]]
    j = sig_begin + 1
    while j < sig_end and lines[j].strip():
        if not _ARMOR_HEADER.match(lines[j]):
            break  # no armor headers in the signature block
        j += 1
    body = [line.strip() for line in lines[j:sig_end] if line.strip()]
    if not body or not all(_BASE64.match(line) for line in body):
        raise DscError(["malformed signature: the signature block is not base64"])
    if any(line.strip() for line in lines[sig_end + 1 :]):
        raise DscError(["malformed signature: text follows the signature block"])
    return b"\n".join(payload), True


def parse_dsc(data: bytes) -> SourceControl:
    """The fields of a ``.dsc`` that an upload needs.

    :raises DscError: for a malformed signature, missing or malformed fields, or file
        lists that do not agree.
    """
    payload, signed = _payload(data)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise DscError(["the .dsc is not UTF-8"]) from None
    try:
        fields = deb822.Dsc(text)
    except (ValueError, EOFError) as e:
        raise DscError([f"the .dsc cannot be parsed: {e}"]) from None
    problems = []
    source = str(fields.get("Source", "")).strip()
    version = str(fields.get("Version", "")).strip()
    if not _NAME.fullmatch(source):
        problems.append(f"Source {source!r} is not a source package name")
    if not _VERSION.fullmatch(version):
        problems.append(f"Version {version!r} is not a Debian version")
    for required in ("Format", "Architecture", "Files"):
        if not str(fields.get(required, "")).strip():
            problems.append(f"the .dsc has no {required} field")
    sizes: dict[str, int] = {}
    checksums: dict[str, dict[str, str]] = {}
    for field, key, algorithm, length in _CHECKSUM_FIELDS:
        if field not in fields:
            continue
        try:
            for entry in fields[field]:
                name, size, digest = entry["name"], int(entry["size"]), str(entry[key])
                if not re.fullmatch(rf"[0-9a-f]{{{length}}}", digest):
                    problems.append(f"{field}: {digest!r} is not an {algorithm} checksum")
                    continue
                if "/" in name or name in (".", ".."):
                    problems.append(f"{field}: {name!r} is not a file name")
                    continue
                if sizes.setdefault(name, size) != size:
                    problems.append(f"{field} gives {name} another size ({size})")
                checksums.setdefault(name, {})[algorithm] = digest
        except (KeyError, ValueError, TypeError):
            problems.append(f"the .dsc's {field} field is malformed")
    for name, found in checksums.items():
        missing = [f for f, _, a, _ in _CHECKSUM_FIELDS if f in fields and a not in found]
        if missing:
            problems.append(f"{name} is not listed in {', '.join(missing)}")
    if problems:
        raise DscError(problems)
    return SourceControl(
        source=source,
        version=version,
        architecture=str(fields["Architecture"]).strip(),
        format=str(fields["Format"]).strip(),
        signed=signed,
        files=tuple(ListedFile(name, sizes[name], found) for name, found in checksums.items()),
    )


@attrs.frozen
class StoredFile:
    """A file of the upload as stored: its size and checksums."""

    size: int
    md5: str
    sha1: str
    sha256: str


def check_files(dsc: SourceControl, stored: Mapping[str, StoredFile | None]) -> list[str]:
    """Every way the uploaded files differ from what the ``.dsc`` lists (empty: none).

    ``stored`` maps the upload's filenames to their stored form (``None``: it expired).
    """
    problems = []
    for listed in dsc.files:
        have = stored.get(listed.name)
        if listed.name not in stored:
            problems.append(f"{listed.name} is listed in the .dsc but was not uploaded")
            continue
        if have is None:
            problems.append(f"{listed.name} expired before the submit: upload it again")
            continue
        if have.size != listed.size:
            problems.append(f"{listed.name} has {have.size} bytes; the .dsc says {listed.size}")
            continue
        for algorithm, digest in sorted(listed.checksums.items()):
            actual = getattr(have, algorithm)
            if actual != digest:
                problems.append(f"{listed.name} has {algorithm} {actual}; the .dsc says {digest}")
    return problems


def file_type(name: str) -> SourcePackageFileType | None:
    """What a source package's file is, by its name (``None``: not a source file)."""
    if name.endswith(".dsc"):
        return SourcePackageFileType.DSC
    if re.search(r"\.orig-[a-z0-9-]+\.tar\.[a-z0-9]+$", name):
        return SourcePackageFileType.COMPONENT_ORIG_TARBALL
    if re.search(r"\.orig\.tar\.[a-z0-9]+\.asc$", name):
        return SourcePackageFileType.ORIG_TARBALL_SIGNATURE
    if re.search(r"\.orig\.tar\.[a-z0-9]+$", name):
        return SourcePackageFileType.ORIG_TARBALL
    if re.search(r"\.debian\.tar\.[a-z0-9]+$", name):
        return SourcePackageFileType.DEBIAN_TARBALL
    if name.endswith(".diff.gz"):
        return SourcePackageFileType.DIFF
    if re.search(r"\.tar\.[a-z0-9]+$", name):
        return SourcePackageFileType.NATIVE_TARBALL
    return None
