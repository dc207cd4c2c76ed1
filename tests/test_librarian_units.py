"""Librarian pieces with no reactor and no database: tokens, ranges, metadata, disk layout."""

from __future__ import annotations

import datetime
import hashlib
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildmaster.librarian import InvalidFileMetadata, LibrarianError
from buildmaster.librarian.catalog import lock_key
from buildmaster.librarian.metadata import (
    check_content_type,
    check_expires,
    check_filename,
    check_size,
    quote_filename,
)
from buildmaster.librarian.ranges import (
    ByteRange,
    RangeNotSatisfiable,
    etag_matches,
    not_modified,
    parse_range,
)
from buildmaster.librarian.storage import ContentStore
from buildmaster.librarian.tokens import (
    SECRET_FILENAME,
    UPLOAD_SUBJECT,
    check_token,
    file_subject,
    load_or_create_secret,
    make_token,
)

SECRET = b"k" * 32
NOW = 1_700_000_000.0

# -- tokens --------------------------------------------------------------------------------


def test_a_token_grants_its_file_until_it_expires() -> None:
    token = make_token(SECRET, file_subject(7), NOW + 60)
    assert check_token(SECRET, token, file_subject(7), NOW)
    assert check_token(SECRET, token.encode(), file_subject(7), NOW + 59)
    assert not check_token(SECRET, token, file_subject(7), NOW + 60)
    assert not check_token(SECRET, token, file_subject(7), NOW + 3600)


def test_a_token_grants_nothing_else() -> None:
    token = make_token(SECRET, file_subject(7), NOW + 60)
    assert not check_token(SECRET, token, file_subject(8), NOW)
    assert not check_token(SECRET, token, file_subject(70), NOW)
    assert not check_token(SECRET, token, UPLOAD_SUBJECT, NOW)
    assert not check_token(b"another secret, same length....", token, file_subject(7), NOW)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("0" if t[-1] != "0" else "1"),  # one digit of the MAC changed
        lambda t: str(int(t.split(".")[0]) + 10) + "." + t.split(".")[1],  # later expiry
        lambda t: t.split(".")[0],  # no MAC
        lambda t: "." + t.split(".")[1],  # no expiry
        lambda t: "-5." + t.split(".")[1],
        lambda t: t + "0" * 200,  # absurdly long
        lambda t: "",
    ],
)
def test_a_forged_or_mangled_token_is_refused(mangle: object) -> None:
    token = make_token(SECRET, file_subject(7), NOW + 60)
    forged = mangle(token)  # type: ignore[operator]
    assert forged != token
    assert not check_token(SECRET, forged, file_subject(7), NOW)


def test_garbage_tokens_are_refused_not_raised() -> None:
    for garbage in [None, b"", b"\xff\xfe.abc", "١٢٣.abc", "1.2.3", "x" * 1000]:
        assert not check_token(SECRET, garbage, file_subject(1), NOW)


def test_an_empty_secret_makes_no_tokens() -> None:
    with pytest.raises(ValueError):
        make_token(b"", file_subject(1), NOW + 60)
    assert not check_token(b"", "1.abc", file_subject(1), NOW)


def test_the_secret_is_created_once_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    secret = load_or_create_secret(state)
    assert len(secret) >= 16
    path = state / SECRET_FILENAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(state) == secret
    assert [p.name for p in state.iterdir()] == [SECRET_FILENAME]  # nothing left aside
    assert load_or_create_secret(tmp_path / "other") != secret


def test_a_secret_others_can_read_is_refused(tmp_path: Path) -> None:
    load_or_create_secret(tmp_path)
    (tmp_path / SECRET_FILENAME).chmod(0o644)
    with pytest.raises(LibrarianError, match="chmod 600"):
        load_or_create_secret(tmp_path)


def test_a_secret_file_without_a_secret_is_refused(tmp_path: Path) -> None:
    path = tmp_path / SECRET_FILENAME
    path.write_text("not hex at all\n")
    path.chmod(0o600)
    with pytest.raises(LibrarianError, match="hex"):
        load_or_create_secret(tmp_path)
    path.write_text("abcd\n")
    with pytest.raises(LibrarianError, match="only 2 bytes"):
        load_or_create_secret(tmp_path)


# -- ranges --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, expected",
    [
        (None, None),
        (b"bytes=0-99", (0, 100)),
        (b"bytes=500-", (500, 1000)),
        (b"bytes=-100", (900, 1000)),
        (b"bytes=-5000", (0, 1000)),
        (b"bytes=990-5000", (990, 1000)),
        (b"bytes=999-999", (999, 1000)),
        (b"BYTES = 1-2", (1, 3)),
        (b"items=0-5", None),  # another unit: ignored
        (b"bytes=0-1,5-6", None),  # several ranges: the whole file
        (b"bytes", None),
    ],
)
def test_ranges(header: bytes | None, expected: tuple[int, int] | None) -> None:
    result = parse_range(header, 1000)
    if expected is None:
        assert result is None
    else:
        assert result == ByteRange(expected[0], expected[1], 1000)


@pytest.mark.parametrize(
    "header",
    [
        b"bytes=1000-",  # starts at the end
        b"bytes=5000-6000",
        b"bytes=5-2",  # ends before it starts
        b"bytes=abc",
        b"bytes=a-b",
        b"bytes=-0",
        b"bytes=--1",
        b"bytes=1-2-3",
        b"bytes=-",
        b"bytes=",
        b"bytes=+1-2",
        b"bytes=0x10-",
        b"bytes=" + b"9" * 40 + b"-",
        b"bytes=0-1,x",  # garbage among several
    ],
)
def test_malformed_or_unsatisfiable_ranges_are_refused(header: bytes) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_range(header, 1000)
    assert info.value.content_range() == "bytes */1000"


def test_an_empty_file_has_no_satisfiable_range() -> None:
    for header in [b"bytes=0-", b"bytes=-1", b"bytes=0-0"]:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, 0)


def test_content_range_names_the_last_byte() -> None:
    assert ByteRange(10, 20, 100).content_range() == "bytes 10-19/100"
    assert ByteRange(10, 20, 100).length == 10


@given(
    size=st.integers(min_value=1, max_value=10_000),
    first=st.integers(min_value=0, max_value=12_000),
    length=st.integers(min_value=1, max_value=12_000),
)
def test_ranges_select_the_bytes_a_client_asked_for(size: int, first: int, length: int) -> None:
    last = first + length - 1
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    header = f"bytes={first}-{last}".encode()
    if first >= size:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, size)
        return
    result = parse_range(header, size)
    assert result is not None
    assert data[result.start : result.stop] == data[first : last + 1]


ETAG = b'"aaaa"'
MODIFIED = 1_700_000_000.5  # Tue, 14 Nov 2023 22:13:20 GMT


@pytest.mark.parametrize(
    "if_none_match, if_modified_since, expected",
    [
        (None, None, False),
        (b'"aaaa"', None, True),
        (b'W/"aaaa"', None, True),
        (b'"bbbb", "aaaa"', None, True),
        (b"*", None, True),
        (b'"bbbb"', None, False),
        (b'"bbbb"', b"Tue, 14 Nov 2023 22:13:20 GMT", False),  # If-None-Match decides
        (None, b"Tue, 14 Nov 2023 22:13:20 GMT", True),
        (None, b"Wed, 15 Nov 2023 00:00:00 GMT", True),
        (None, b"Tue, 14 Nov 2023 22:13:19 GMT", False),
        (None, b"yesterday", False),
        (None, b"Tue, 14 Nov 2023 22:13:20", False),  # no zone: ignored
    ],
)
def test_conditional_requests(
    if_none_match: bytes | None, if_modified_since: bytes | None, expected: bool
) -> None:
    assert not_modified(if_none_match, if_modified_since, ETAG, MODIFIED) is expected


def test_etags_compare_weakly() -> None:
    assert etag_matches(b' "x" ', b'"x"')
    assert not etag_matches(b'"xy"', b'"x"')


# -- metadata ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["hello_1.0.dsc", "buildlog_ubuntu-hoary-i386.alsa-utils_1.0.9a.txt.gz", "ü.tar", "a" * 255],
)
def test_ordinary_filenames_are_accepted(name: str) -> None:
    assert check_filename(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../../etc/passwd",
        "a/b",
        "/etc/passwd",
        "..\\..\\boot.ini",
        "a\x00b",
        "a\nb",
        "a\rb",
        "tab\there",
        "\x7f",
        "a" * 256,
    ],
)
def test_dangerous_filenames_are_refused(name: str) -> None:
    with pytest.raises(InvalidFileMetadata):
        check_filename(name)


def test_content_types() -> None:
    for good in ["text/plain", "application/x-tar", "text/plain; charset=utf-8", 'a/b; q="x y"']:
        assert check_content_type(good) == good
    for bad in [
        "",
        "plain",
        "text/plain\r\nSet-Cookie: x=y",
        "text/plain\n",
        "a/b; c",
        "/x",
        "a/b;\n c=d",
    ]:
        with pytest.raises(InvalidFileMetadata):
            check_content_type(bad)


def test_sizes() -> None:
    assert check_size(0, 10) == 0
    assert check_size(10, 10) == 10
    assert check_size(None, 10) is None
    for bad in [-1, 11, 10**30, True, 1.5, "5"]:
        with pytest.raises(InvalidFileMetadata):
            check_size(bad, 10)  # type: ignore[arg-type]


def test_expiries_need_a_timezone() -> None:
    aware = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    assert check_expires(aware) == aware
    with pytest.raises(InvalidFileMetadata):
        check_expires(datetime.datetime(2030, 1, 1))


def test_filenames_are_one_url_segment() -> None:
    assert quote_filename("a b?#%/.txt") == "a%20b%3F%23%25%2F.txt"
    assert quote_filename("hello_1.0-1~ppa1.dsc") == "hello_1.0-1~ppa1.dsc"


# -- disk layout ---------------------------------------------------------------------------


def test_contents_live_under_their_sha256(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    digest = hashlib.sha256(b"x").hexdigest()
    assert store.path_for(digest) == tmp_path / digest[:2] / digest[2:4] / digest


@pytest.mark.parametrize(
    "bad", ["", "../" * 20, "A" * 64, "g" * 64, "a" * 63, "a" * 65, "../../etc/passwd"]
)
def test_only_sha256_names_make_paths(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        ContentStore(tmp_path).path_for(bad)


def test_lock_keys_are_signed_32_bit() -> None:
    assert lock_key("ffffffff" + "0" * 56) == -1
    assert lock_key("7fffffff" + "0" * 56) == 2**31 - 1
    assert lock_key("00000000" + "f" * 56) == 0


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("sizes", [[], [1], [4096], [5000, 3, 4093, 70000], [4 * 1024 * 1024 + 7]])
def test_temporary_files_hold_exactly_what_was_written(
    tmp_path: Path, direct: bool, sizes: list[int]
) -> None:
    store = ContentStore(tmp_path)
    writer = store.create_temp(store.temp_path(), direct=direct)
    chunks = [os.urandom(n) for n in sizes]
    writer.write(chunks[: len(chunks) // 2])
    writer.write(chunks[len(chunks) // 2 :])
    writer.seal()
    assert writer.path.read_bytes() == b"".join(chunks)
    assert writer.written == sum(sizes)
    assert stat.S_IMODE(writer.path.stat().st_mode) == 0o444
    assert writer.path.parent == tmp_path / "incoming"
