"""The pure rules behind the operator API: .dsc checks, architectures, why a build waits,
estimates, who may do what, builder states, event sentences, the parts of a score."""

from __future__ import annotations

import datetime
from typing import Any

import attrs
import pytest
from api_support import make_source

from buildmaster.access import ANONYMOUS, Grant, may_operate, may_read, may_upload
from buildmaster.architectures import choose_architectures
from buildmaster.builderstate import BuilderState, builder_state
from buildmaster.dsc import DscError, StoredFile, check_files, file_type, parse_dsc
from buildmaster.enums import (
    ArchivePurpose,
    BuilderCleanStatus,
    BuildQueueStatus,
    PackagePublishingPocket,
    SourcePackageFileType,
    SourcePackageUrgency,
)
from buildmaster.estimates import KindLoad, drain_seconds, start_in_seconds
from buildmaster.eventtext import describe_event
from buildmaster.model import Archive, Builder, BuildQueue
from buildmaster.scoring import ScoreInputs, score_build, score_parts
from buildmaster.waiting import KindBuilder, KindBuilders, WaitInputs, why_waiting

# -- .dsc ----------------------------------------------------------------------------------


def test_an_unsigned_and_a_clearsigned_dsc_are_read() -> None:
    for sign in (False, True):
        source = make_source(sign=sign)
        dsc = parse_dsc(source.dsc)
        assert (dsc.source, dsc.version, dsc.architecture, dsc.signed) == (
            "hello",
            "2.10-1",
            "any",
            sign,
        )
        assert dsc.dsc_name == source.dsc_name
        assert {f.name for f in dsc.files} == set(source.files) - {source.dsc_name}
        assert all(set(f.checksums) == {"md5", "sha1", "sha256"} for f in dsc.files)


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (lambda d: d.replace(b"-----END PGP SIGNATURE-----\n", b""), "one signature block"),
        (lambda d: d + b"more text\n", "text follows the signature block"),
        (lambda d: d.replace(b"iQIzBAEBCAAdFiEEexampleexample", b"not base64!"), "not base64"),
        (lambda d: d.replace(b"Hash: SHA256", b"Hash SHA256"), "bad armor header"),
        (lambda d: d.split(b"\n", 3)[3], "not clearsigned"),
    ],
)
def test_a_malformed_signature_is_refused(change: object, complaint: str) -> None:
    data = change(make_source(sign=True).dsc)  # type: ignore[operator]
    with pytest.raises(DscError, match=complaint):
        parse_dsc(data)


def test_missing_and_malformed_fields_are_all_reported() -> None:
    dsc = (
        make_source()
        .dsc.replace(b"Source: hello", b"Source: Hello!")
        .replace(b"Architecture: any\n", b"")
    )
    with pytest.raises(DscError) as refused:
        parse_dsc(dsc)
    assert any("Hello!" in p for p in refused.value.problems)
    assert any("no Architecture field" in p for p in refused.value.problems)
    source = make_source()
    sha256_line = next(
        line
        for line in source.dsc.split(b"\n")
        if line.endswith(b"orig.tar.gz") and len(line.split()[0]) == 64
    )
    with pytest.raises(DscError, match="orig.tar.gz is not listed in Checksums-Sha256"):
        parse_dsc(source.dsc.replace(sha256_line + b"\n", b""))
    with pytest.raises(DscError, match="not UTF-8"):
        parse_dsc(b"Source: h\xff\n")


def test_uploaded_files_are_checked_against_every_listed_checksum() -> None:
    source = make_source()
    dsc = parse_dsc(source.dsc)
    import hashlib

    def stored(data: bytes) -> StoredFile:
        return StoredFile(
            len(data),
            hashlib.md5(data).hexdigest(),
            hashlib.sha1(data).hexdigest(),
            hashlib.sha256(data).hexdigest(),
        )

    good = {name: stored(data) for name, data in source.files.items()}
    assert check_files(dsc, good) == []
    orig = "hello_2.10.orig.tar.gz"
    assert check_files(dsc, {**good, orig: attrs.evolve(good[orig], sha1="0" * 40)}) == [
        f"{orig} has sha1 {'0' * 40}; the .dsc says {hashlib.sha1(source.files[orig]).hexdigest()}"
    ]
    assert "has 1 bytes" in check_files(dsc, {**good, orig: attrs.evolve(good[orig], size=1)})[0]
    assert "expired" in check_files(dsc, {**good, orig: None})[0]
    missing = {k: v for k, v in good.items() if k != orig}
    assert check_files(dsc, missing) == [f"{orig} is listed in the .dsc but was not uploaded"]


def test_source_files_have_types_by_name() -> None:
    assert file_type("hello_1.0-1.dsc") is SourcePackageFileType.DSC
    assert file_type("hello_1.0.orig.tar.gz") is SourcePackageFileType.ORIG_TARBALL
    assert file_type("hello_1.0.orig.tar.gz.asc") is SourcePackageFileType.ORIG_TARBALL_SIGNATURE
    assert file_type("hello_1.0.orig-docs.tar.xz") is SourcePackageFileType.COMPONENT_ORIG_TARBALL
    assert file_type("hello_1.0-1.debian.tar.xz") is SourcePackageFileType.DEBIAN_TARBALL
    assert file_type("hello_1.0-1.diff.gz") is SourcePackageFileType.DIFF
    assert file_type("hello_1.0.tar.xz") is SourcePackageFileType.NATIVE_TARBALL
    assert file_type("notes.txt") is None


# -- architectures ---------------------------------------------------------------------------


def test_architectures_from_the_dsc_and_the_series() -> None:
    series = ["amd64", "arm64", "armhf", "i386"]
    assert choose_architectures("any", series).tags == tuple(series)
    assert choose_architectures("linux-any", series).tags == tuple(series)
    assert choose_architectures("all", series).tags == ("amd64",)
    assert choose_architectures("all", ["arm64", "armhf"]).tags == ("arm64",)
    assert choose_architectures("any all", series).tags == tuple(series)
    assert choose_architectures("armhf sparc", series).tags == ("armhf",)
    assert choose_architectures("any-arm", series).tags == ("armhf",)
    assert choose_architectures("linux-amd64", series).tags == ("amd64",)
    none = choose_architectures("kfreebsd-any hurd-i386", series)
    assert none.tags == () and "does not have" in (none.problem or "")
    narrowed = choose_architectures("any", series, ["i386", "sparc"])
    assert narrowed.tags == ("i386",) and "not built on sparc" in (narrowed.problem or "")
    assert choose_architectures("", series).problem == "the .dsc's Architecture field is empty"


# -- why a build waits, and when it starts -----------------------------------------------------


ONE_IDLE = KindBuilders(total=1, working=1, automatic=1, free=1, a_free_one="bob")


def _inputs(**kw: Any) -> WaitInputs:
    values: dict[str, Any] = dict(
        architecture="ubuntu/hoary/i386",
        kind="trusted 386",
        suspended=False,
        suspended_reason=None,
        chroot_missing=False,
        builders=ONE_IDLE,
        ahead=0,
        ahead_counted_to=1000,
    )
    values.update(kw)
    return WaitInputs(**values)


def test_why_a_build_waits() -> None:
    since = datetime.datetime(2025, 1, 2, 12, 3, tzinfo=datetime.UTC)
    down = KindBuilder("bob", True, "(111, 'Connection refused')", since)
    reason = why_waiting(_inputs(builders=KindBuilders(total=3, out_of_service=(down,))))
    assert reason.code == "no-working-builder"
    assert reason.text == (
        "no builder of its kind (trusted 386) is working: bob is failed: (111, 'Connection"
        " refused') since 2025-01-02 12:03 UTC; and 2 more; enable one with"
        ' PATCH /api/v1/builders/bob {"enabled": true}'
    )
    assert why_waiting(
        _inputs(suspended=True, suspended_reason="no chroot", chroot_missing=True)
    ).text == ("suspended (no chroot); upload one with PUT /api/v1/chroots/ubuntu/hoary/i386")
    assert why_waiting(_inputs(chroot_missing=True)).code == "no-chroot"
    # a disabled archive comes first: the operator's own doing, and how to undo it
    disabled = why_waiting(
        _inputs(
            suspended=True,
            suspended_reason="the archive ~cprov/ubuntu/ppa is disabled",
            archive="~cprov/ubuntu/ppa",
            archive_disabled=True,
            builders=KindBuilders(),
        )
    )
    assert disabled.code == "archive-disabled" and disabled.text == (
        "suspended: its archive ~cprov/ubuntu/ppa is disabled; enable it with"
        ' PATCH /api/v1/archives/~cprov/ubuntu/ppa {"enabled": true}'
    )
    assert why_waiting(
        _inputs(archive="ubuntu", archive_disabled=True, chroot_missing=True)
    ).text == (
        "to be suspended when a builder tries it: its archive ubuntu is disabled; enable it"
        ' with PATCH /api/v1/archives/ubuntu {"enabled": true}; ubuntu/hoary/i386 has no'
        " chroot either: upload one with PUT /api/v1/chroots/ubuntu/hoary/i386"
    )
    assert why_waiting(_inputs(builders=KindBuilders())).code == "no-builder"
    manual = KindBuilders(total=2, working=2, manual=("bob",))
    assert why_waiting(_inputs(builders=manual)).text == (
        "every working builder of its kind (trusted 386) is in manual mode: bob and 1 more;"
        ' take one out with PATCH /api/v1/builders/bob {"manual": false}'
    )
    busy = why_waiting(
        _inputs(builders=KindBuilders(total=1, working=1, automatic=1, free=0), ahead=3)
    )
    assert busy.code == "busy" and busy.text == (
        "1 of 1 builder of its kind (trusted 386) busy, 3 builds of its kind before it"
    )
    far = why_waiting(_inputs(builders=KindBuilders(total=4, working=4, automatic=4), ahead=1000))
    assert far.text == (
        "4 of 4 builders of its kind (trusted 386) busy, more than 1,000 builds of its kind"
        " before it"
    )
    assert why_waiting(_inputs()).text == (
        "next in line: bob or another idle builder of its kind takes it at its next scan"
    )


def test_estimates_share_the_work_ahead_among_the_builders() -> None:
    assert start_in_seconds(600.0, 60.0, 2) == 330.0
    assert start_in_seconds(600.0, 0.0, 0) is None
    load = KindLoad(
        waiting=3,
        waiting_seconds=900.0,
        last_seconds=300.0,
        running_remaining_seconds=120.0,
        builders=2,
    )
    assert drain_seconds(load) == 360.0
    assert drain_seconds(attrs.evolve(load, waiting=0)) == 0.0
    assert drain_seconds(attrs.evolve(load, builders=0)) is None


# -- access, states, words -----------------------------------------------------------------------


def _archive(private: bool, archive_id: int = 7) -> Archive:
    return Archive(
        archive_id, 1, "cprov", 1, "ubuntu", "ppa", "", ArchivePurpose.PPA, private, True, 0, True
    )


def test_who_may_do_what() -> None:
    public, private = _archive(False), _archive(True)
    uploader, other, admin = (
        Grant(3, False, frozenset({7})),
        Grant(4, False, frozenset({8})),
        Grant(1, True),
    )
    assert may_read(ANONYMOUS, public) and not may_read(ANONYMOUS, private)
    assert may_read(uploader, private) and not may_read(other, private) and may_read(admin, private)
    assert (
        may_upload(uploader, public) and not may_upload(other, public) and may_upload(admin, public)
    )
    assert not may_upload(ANONYMOUS, public) and may_operate(uploader, private)


def test_builder_states() -> None:
    builder = Builder(
        1, "bob", "", "http://bob/", False, None, True, None, False, False, True, 0,
        BuilderCleanStatus.CLEAN, None, (1,),
    )  # fmt: skip
    job = BuildQueue(1, 1, 1, BuildQueueStatus.RUNNING, 0, False, 1, False, None, None)
    assert builder_state(builder, None) is BuilderState.IDLE
    assert builder_state(builder, job) is BuilderState.BUILDING
    assert builder_state(attrs.evolve(builder, manual=True), None) is BuilderState.MANUAL
    assert (
        builder_state(attrs.evolve(builder, clean_status=BuilderCleanStatus.DIRTY), None)
        is BuilderState.CLEANING
    )
    assert builder_state(attrs.evolve(builder, builderok=False), job) is BuilderState.DISABLED
    failed = attrs.evolve(builder, builderok=False, failed_by_master=True, failnotes="x")
    assert builder_state(failed, None) is BuilderState.FAILED
    assert builder_state(attrs.evolve(builder, active=False), None) is BuilderState.INACTIVE


def test_events_in_words() -> None:
    assert describe_event("dispatched", "dispatched to bob", "bob") == "dispatched to bob"
    assert describe_event(
        "failure", "(111, 'Connection refused') (builder failed 1 times; will retry)", "bob"
    ) == (
        "builder failure on bob: (111, 'Connection refused') (builder failed 1 times; will retry)"
    )
    assert describe_event("lost", "the builder is building 'X'", "bob") == (
        "lost by bob, requeued: the builder is building 'X'"
    )
    assert describe_event("finished", "BUILDING -> FULLYBUILT on bob", "bob") == (
        "finished: BUILDING -> FULLYBUILT on bob"
    )


def test_the_parts_of_a_score_add_up_to_it() -> None:
    for private in (False, True):
        for pocket in PackagePublishingPocket:
            inputs = ScoreInputs(
                ArchivePurpose.COPY if private else ArchivePurpose.PRIMARY,
                private,
                -50,
                SourcePackageUrgency.HIGH,
                pocket,
                "universe",
            )
            parts = score_parts(inputs)
            assert sum(p.points for p in parts) == score_build(inputs)
    translations = ScoreInputs(
        ArchivePurpose.PRIMARY,
        False,
        0,
        SourcePackageUrgency.LOW,
        PackagePublishingPocket.RELEASE,
        "main",
        "translations",
    )
    assert score_parts(translations) == () and score_build(translations) == 0
