"""What a simulated build produces: its log, chunk by chunk, and its result files.

Everything here is deterministic: the same build (build id, package, version, arch, time)
gives the same bytes. The result files are small but well-formed: the ``.deb`` is a real
``ar`` archive with ``debian-binary``, ``control.tar.gz`` and ``data.tar.gz`` members, the
``.changes`` lists it with correct sizes and checksums.

No Twisted imports: this is pure.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import time

from attrs import frozen

from slavesim.wire import BuildRequest

__all__ = [
    "BuildFacts",
    "log_footer",
    "log_header",
    "log_progress",
    "result_files",
]

_PHASES = (
    "unpacking the chroot",
    "mounting the chroot",
    "updating the chroot",
    "installing build dependencies",
    "unpacking the source",
    "configuring",
    "compiling",
    "running the test suite",
    "installing into debian/tmp",
    "building the binary package",
)


@frozen
class BuildFacts:
    """The facts about one build the log and the result files are made from."""

    builder: str
    request: BuildRequest
    arch: str

    @property
    def package(self) -> str:
        return self.request.package

    @property
    def version(self) -> str:
        return self.request.version

    @property
    def suite(self) -> str:
        suite = self.request.args.get("suite")
        return suite if isinstance(suite, str) else "unknown"


def log_header(facts: BuildFacts, started: float) -> bytes:
    """The first lines of a build log, written when the build starts."""
    request = facts.request
    lines = [
        f"slavesim build log for {request.build_id} on {facts.builder}",
    ]
    build_url = request.args.get("build_url")
    if isinstance(build_url, str):
        lines.append(f"Build URL: {build_url}")
    lines += [
        f"Started: {_rfc2822(started)}",
        f"Source: {facts.package} {facts.version} ({request.dsc})",
        f"Architecture: {facts.arch}",
        f"Suite: {facts.suite}",
        f"Chroot: {request.chroot}",
        "",
    ]
    return "\n".join(lines).encode() + b"\n"


def log_progress(facts: BuildFacts, step: int, fraction: float) -> bytes:
    """The log chunk written at ``step``, ``fraction`` (0..1) of the way through the build."""
    phase = _PHASES[min(len(_PHASES) - 1, int(fraction * len(_PHASES)))]
    percent = int(fraction * 100)
    lines = [
        f"[{percent:3d}%] {facts.package} {facts.version}: {phase} (step {step})",
        f"  slavesim: {facts.package}/{facts.arch} step {step} output line 1 of 2",
        f"  slavesim: {facts.package}/{facts.arch} step {step} output line 2 of 2",
    ]
    return "\n".join(lines).encode() + b"\n"


def log_footer(build_status: str, finished: float, dependencies: str = "") -> bytes:
    """The last lines of a build log."""
    lines = [""]
    if dependencies:
        lines.append(f"Unmet build dependencies: {dependencies}")
    lines += [
        f"Finished: {_rfc2822(finished)}",
        f"Build status: {build_status}",
    ]
    return "\n".join(lines).encode() + b"\n"


def result_files(facts: BuildFacts, finished: float) -> dict[str, bytes]:
    """The result files of a successful build, ``{file name: content}``: a .deb and .changes."""
    base = f"{facts.package}_{facts.version}_{facts.arch}"
    deb_name = f"{base}.deb"
    deb = _deb(facts)
    changes = _changes(facts, finished, deb_name, deb)
    return {deb_name: deb, f"{base}.changes": changes}


def _rfc2822(when: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(when))


def _tar_gz(members: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def _ar_member(name: str, data: bytes) -> bytes:
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
    assert len(header) == 60
    return header + data + (b"\n" if len(data) % 2 else b"")


def _deb(facts: BuildFacts) -> bytes:
    control = (
        f"Package: {facts.package}\n"
        f"Version: {facts.version}\n"
        f"Architecture: {facts.arch}\n"
        "Maintainer: slavesim <slavesim@localhost>\n"
        f"Description: {facts.package} as built by slavesim\n"
        f" Simulated binary package, build {facts.request.build_id}.\n"
    ).encode()
    doc = f"{facts.package} {facts.version} built for {facts.arch} by {facts.builder}\n"
    return (
        b"!<arch>\n"
        + _ar_member("debian-binary", b"2.0\n")
        + _ar_member("control.tar.gz", _tar_gz({"./control": control}))
        + _ar_member(
            "data.tar.gz",
            _tar_gz({f"./usr/share/doc/{facts.package}/slavesim-build.txt": doc.encode()}),
        )
    )


def _changes(facts: BuildFacts, finished: float, deb_name: str, deb: bytes) -> bytes:
    section, priority = "misc", "optional"
    size = len(deb)
    text = (
        "Format: 1.8\n"
        f"Date: {_rfc2822(finished)}\n"
        f"Source: {facts.package}\n"
        f"Binary: {facts.package}\n"
        f"Architecture: {facts.arch}\n"
        f"Version: {facts.version}\n"
        f"Distribution: {facts.suite}\n"
        "Urgency: low\n"
        "Maintainer: slavesim <slavesim@localhost>\n"
        "Changed-By: slavesim <slavesim@localhost>\n"
        "Description:\n"
        f" {facts.package} - {facts.package} as built by slavesim\n"
        "Changes:\n"
        f" {facts.package} ({facts.version}) {facts.suite}; urgency=low\n"
        " .\n"
        f"   * Simulated build {facts.request.build_id}.\n"
        "Checksums-Sha1:\n"
        f" {hashlib.sha1(deb).hexdigest()} {size} {deb_name}\n"
        "Checksums-Sha256:\n"
        f" {hashlib.sha256(deb).hexdigest()} {size} {deb_name}\n"
        "Files:\n"
        f" {hashlib.md5(deb).hexdigest()} {size} {section} {priority} {deb_name}\n"
    )
    return text.encode()


#: The SHA-1 a ``bad_sha1`` builder promises; the bytes it serves under it hash differently.
BAD_SHA1 = hashlib.sha1(b"the bytes this builder promises").hexdigest()
#: What it serves under :data:`BAD_SHA1` instead.
BAD_SHA1_BYTES = b"not the bytes the filemap promised\n" * 100


#: How many files a ``many_files`` builder lists: more than the master's default limit of
#: 1,000, fewer than the 2,000 its status answer's budget allows for.
MANY_FILES = 1_500


def hostile_filemap(kind: str, filemap: dict[str, str]) -> dict[str, str]:
    """The filemap a builder with ``hostile_results = kind`` reports instead of ``filemap``."""
    some_sha1 = next(iter(filemap.values()))
    if kind == "traversal":
        return {**filemap, "../../../etc/passwd": some_sha1}
    if kind == "bad_sha1":
        return {**filemap, "evil_1.0_all.deb": BAD_SHA1}
    if kind == "many_files":
        return {f"file{i:06d}_1.0_all.deb": some_sha1 for i in range(MANY_FILES)}
    return filemap
