"""Storing and reading back librarian files: real PostgreSQL, real directory."""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from test_librarian_support import (
    assert_nothing_stored,
    make_librarian,
    row_counts,
    stored_files,
)
from twisted.internet import defer, interfaces
from twisted.protocols.basic import FileSender
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from buildmaster.librarian import (
    ContentMismatch,
    CorruptFile,
    FileNotFound,
    FileTooLarge,
    InvalidFileMetadata,
    Librarian,
    UploadFailed,
)
from buildmaster.librarian.upload import HIGH_WATER
from buildmaster.sampledata import add_metadata_only_file
from buildmaster.store import Store
from buildmaster.store.database import Database, DatabaseUnavailable

LATER = datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC)


@pytest.fixture
def librarian(reactor: Any, db: Database, tmp_path: Path) -> Librarian:
    """A librarian on the test's database, storing under ``tmp_path/librarian``."""
    return make_librarian(reactor, db, tmp_path / "librarian")


async def add(lib: Librarian, data: bytes, name: str = "f.bin", **kw: Any) -> int:
    return await lib.addFile(name, len(data), io.BytesIO(data), "application/octet-stream", **kw)


# -- storing -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_add_file_records_hashes_and_stores_the_bytes_by_sha256(
    librarian: Librarian, db: Database
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    alias_id = await librarian.addFile(
        "hello_1.0.tar.gz", len(data), io.BytesIO(data), "application/x-gzip", True, LATER
    )
    file = await librarian.get(alias_id)
    assert file.id == alias_id
    assert file.filename == "hello_1.0.tar.gz"
    assert file.mimetype == "application/x-gzip"
    assert file.restricted is True
    assert file.expires == LATER
    assert file.filesize == len(data)
    assert file.sha1 == hashlib.sha1(data).hexdigest()
    assert file.sha256 == hashlib.sha256(data).hexdigest()
    assert file.md5 == hashlib.md5(data).hexdigest()
    path = librarian.store.path_for(file.sha256)
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert stored_files(librarian.root) == [path]  # no temporary file left over
    assert await librarian.read_bytes(alias_id) == data


@pytest_twisted.ensureDeferred
async def test_an_empty_file_is_a_file(librarian: Librarian) -> None:
    alias_id = await add(librarian, b"", "empty")
    file = await librarian.get(alias_id)
    assert file.filesize == 0
    assert file.sha256 == hashlib.sha256(b"").hexdigest()
    assert await librarian.read_bytes(alias_id) == b""


@pytest_twisted.ensureDeferred
async def test_buffered_writes_store_the_same_bytes(
    reactor: Any, db: Database, tmp_path: Path
) -> None:
    lib = make_librarian(reactor, db, tmp_path / "lib", direct_io=False)
    data = os.urandom(1024 * 1024 + 3)
    alias_id = await add(lib, data)
    assert await lib.read_bytes(alias_id) == data


@pytest_twisted.ensureDeferred
async def test_identical_contents_are_stored_once(librarian: Librarian, db: Database) -> None:
    data = os.urandom(100_000)
    first = await add(librarian, data, "a.deb")
    second = await add(librarian, data, "b.deb", restricted=True)
    other = await add(librarian, data + b"!", "c.deb")
    files = [await librarian.get(i) for i in (first, second, other)]
    assert files[0].content_id == files[1].content_id != files[2].content_id
    assert len({first, second, other}) == 3
    assert await row_counts(db) == (2, 3)
    assert len(stored_files(librarian.root)) == 2
    assert (files[0].filename, files[1].filename) == ("a.deb", "b.deb")
    assert (files[0].restricted, files[1].restricted) == (False, True)


@pytest_twisted.ensureDeferred
async def test_an_existing_content_row_is_reused_and_gets_its_bytes(
    librarian: Librarian, db: Database, captured_log: Any
) -> None:
    captured_log.allow_errors(CorruptFile)
    data = b"Format: 1.0\nSource: hello\n"
    metadata_only = await add_metadata_only_file(Store(db), "hello.dsc", data, "text/plain")
    with pytest.raises(CorruptFile):  # the seed's files have no bytes anywhere
        await librarian.read_bytes(metadata_only)
    alias_id = await add(librarian, data, "hello.dsc")
    old, new = await librarian.get(metadata_only), await librarian.get(alias_id)
    assert old.content_id == new.content_id
    assert await librarian.read_bytes(metadata_only) == data


@pytest_twisted.ensureDeferred
async def test_concurrent_uploads_of_the_same_bytes_make_one_content(
    librarian: Librarian, db: Database
) -> None:
    data = os.urandom(500_000)
    ids = await defer.gatherResults([defer.ensureDeferred(add(librarian, data)) for _ in range(6)])
    assert len(set(ids)) == 6
    assert await row_counts(db) == (1, 6)
    for alias_id in ids:
        assert await librarian.read_bytes(alias_id) == data


# -- refusing --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_size_that_does_not_match_stores_nothing(
    librarian: Librarian, db: Database
) -> None:
    data = os.urandom(3 * 1024 * 1024)
    for declared in [0, 99, len(data) - 1, len(data) + 1, 10 * len(data)]:
        with pytest.raises(ContentMismatch, match=f"{declared}"):
            await librarian.addFile("f", declared, io.BytesIO(data), "text/plain")
    await assert_nothing_stored(librarian, db)


class _BrokenFile(io.RawIOBase):
    def __init__(self, good: int) -> None:
        self.left = good

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            raise OSError(5, "Input/output error")
        take = min(n, self.left)
        self.left -= take
        return b"x" * take


@pytest_twisted.ensureDeferred
async def test_a_read_error_stores_nothing_and_says_why(librarian: Librarian, db: Database) -> None:
    with pytest.raises(UploadFailed, match="could not read 'f'.*Input/output error"):
        await librarian.addFile("f", 5_000_000, _BrokenFile(3_000_000), "text/plain")  # type: ignore[arg-type]
    await assert_nothing_stored(librarian, db)


@pytest_twisted.ensureDeferred
async def test_a_write_error_stores_nothing_and_says_why(
    reactor: Any, db: Database, tmp_path: Path
) -> None:
    root = tmp_path / "not-a-directory"
    root.write_text("")
    lib = make_librarian(reactor, db, root)
    with pytest.raises(UploadFailed, match="could not store 'f'.*Not a directory"):
        await lib.addFile("f", 3_000_000, io.BytesIO(b"x" * 3_000_000), "text/plain")
    assert await row_counts(db) == (0, 0)
    assert root.read_text() == ""


@pytest_twisted.ensureDeferred
async def test_a_text_file_is_refused(librarian: Librarian, db: Database) -> None:
    with pytest.raises(UploadFailed, match="not a binary file"):
        await librarian.addFile("f", 3, io.StringIO("abc"), "text/plain")  # type: ignore[arg-type]
    await assert_nothing_stored(librarian, db)


@pytest_twisted.ensureDeferred
async def test_bad_metadata_is_refused_before_reading(librarian: Librarian, db: Database) -> None:
    for name, size, content_type, expires in [
        ("../../etc/passwd", 1, "text/plain", None),
        ("a/b", 1, "text/plain", None),
        ("..", 1, "text/plain", None),
        ("", 1, "text/plain", None),
        ("bad\x00name", 1, "text/plain", None),
        ("f", -1, "text/plain", None),
        ("f", 10**15, "text/plain", None),  # more than the maximum file size
        ("f", 1, "text/plain\r\nX-Evil: 1", None),
        ("f", 1, "text/plain", datetime.datetime(2100, 1, 1)),  # naive
    ]:
        source = io.BytesIO(b"x")
        with pytest.raises(InvalidFileMetadata):
            await librarian.addFile(name, size, source, content_type, expires=expires)
        assert source.tell() == 0
    with pytest.raises(InvalidFileMetadata):
        librarian.new_upload("f", "text/plain", expected_sha1="xyz")
    with pytest.raises(InvalidFileMetadata):
        librarian.new_upload("f", "text/plain", max_size=-5)
    await assert_nothing_stored(librarian, db)


@pytest_twisted.ensureDeferred
async def test_a_failing_database_leaves_nothing_the_collector_keeps(
    reactor: Any, dsn: str, tmp_path: Path
) -> None:
    """The bytes go into place before the rows are written; when writing the rows fails, the
    file is left unrecorded, and the collector takes it once the database is back."""
    db = Database(reactor, dsn, size=1)
    await db.connect()
    lib = make_librarian(reactor, db, tmp_path / "lib")
    upload = lib.new_upload("f", "text/plain")
    await upload.write(os.urandom(100_000))
    await db.close()
    with pytest.raises(DatabaseUnavailable):
        await upload.finish()
    assert not [p for p in stored_files(lib.root) if p.name.endswith(".part")]  # no temp left
    back = Database(reactor, dsn, size=1)
    await back.connect()
    try:
        again = make_librarian(reactor, back, tmp_path / "lib")
        assert await row_counts(back) == (0, 0)
        again.collector.fresh_grace = 0  # (the file is a moment old)
        stats = await again.collect_garbage()
        assert stats.orphan_files <= 1
        assert stored_files(lib.root) == []
    finally:
        await back.close()


# -- streaming uploads -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_streamed_upload_is_stored_whole_and_only_when_finished(
    librarian: Librarian,
) -> None:
    chunks = [os.urandom(n) for n in (1, 65536, 1_000_003, 7, 2_000_000)]
    data = b"".join(chunks)
    upload = librarian.new_upload(
        "log.txt",
        "text/plain",
        expected_size=len(data),
        expected_sha1=hashlib.sha1(data).hexdigest(),
    )
    for chunk in chunks:
        await upload.write(chunk)
    final = librarian.store.path_for(hashlib.sha256(data).hexdigest())
    assert not final.exists()  # nothing in place before finish
    assert all(p.parent.name == "incoming" for p in stored_files(librarian.root))
    alias_id = await upload.finish()
    assert final.exists()
    assert upload.hashes is not None and upload.hashes.sha256 == final.name
    assert await librarian.read_bytes(alias_id) == data


class CountingPool(ThreadPool):
    """A real thread pool that counts the jobs it is given."""

    jobs = 0

    def callInThreadWithCallback(self, *args: Any, **kw: Any) -> None:
        self.jobs += 1
        super().callInThreadWithCallback(*args, **kw)


@pytest_twisted.ensureDeferred
async def test_a_small_upload_is_stored_in_one_thread_job(
    reactor: Any, db: Database, tmp_path: Path
) -> None:
    pool = CountingPool(minthreads=1, maxthreads=2, name="counting")
    pool.start()
    try:
        lib = make_librarian(reactor, db, tmp_path / "librarian", threadpool=pool)
        data = b"Format: 1.8\nSource: hello\n" * 40
        sha1 = hashlib.sha1(data).hexdigest()
        upload = lib.new_upload("hello.changes", "text/plain", expected_sha1=sha1)
        await upload.write(data)
        alias_id = await upload.finish()
        assert pool.jobs == 1, "written, hashed, synced, checked and moved into place at once"
        assert lib.store.path_for(hashlib.sha256(data).hexdigest()).exists()
        assert await lib.read_bytes(alias_id) == data
    finally:
        pool.stop()


@pytest_twisted.ensureDeferred
async def test_a_wrong_sha1_stores_nothing(librarian: Librarian, db: Database) -> None:
    upload = librarian.new_upload("f", "text/plain", expected_sha1="0" * 40)
    await upload.write(b"some bytes")
    with pytest.raises(ContentMismatch, match="SHA-1"):
        await upload.finish()
    await assert_nothing_stored(librarian, db)


@pytest_twisted.ensureDeferred
async def test_an_upload_past_its_size_limit_stops_at_once(
    librarian: Librarian, db: Database
) -> None:
    upload = librarian.new_upload("f", "text/plain", max_size=1000)
    await upload.write(b"x" * 1000)
    with pytest.raises(FileTooLarge):
        upload.write(b"x")
    with pytest.raises(FileTooLarge):
        upload.write(b"more")  # stays failed
    with pytest.raises(FileTooLarge):
        await upload.finish()
    await assert_nothing_stored(librarian, db)


@pytest_twisted.ensureDeferred
async def test_an_upload_past_its_declared_size_stops_at_once(
    librarian: Librarian, db: Database
) -> None:
    upload = librarian.new_upload("f", "text/plain", expected_size=3)
    with pytest.raises(ContentMismatch):
        upload.write(b"four")
    await upload.abort()
    await assert_nothing_stored(librarian, db)


@pytest_twisted.ensureDeferred
async def test_an_aborted_upload_stores_nothing(librarian: Librarian, db: Database) -> None:
    upload = librarian.new_upload("f", "text/plain")
    chunk = os.urandom(1024 * 1024)
    for _ in range(HIGH_WATER // len(chunk) + 2):
        await upload.write(chunk)  # past the high-water mark: a batch was written
    assert [p.parent.name for p in stored_files(librarian.root)] == ["incoming"]
    await upload.abort()
    await upload.abort()  # twice is fine
    await assert_nothing_stored(librarian, db)
    with pytest.raises(UploadFailed, match="aborted"):
        upload.write(b"x")
    with pytest.raises(UploadFailed, match="aborted"):
        await upload.finish()


@pytest_twisted.ensureDeferred
async def test_a_finished_upload_takes_no_more(librarian: Librarian) -> None:
    upload = librarian.new_upload("f", "text/plain")
    await upload.write(b"abc")
    alias_id = await upload.finish()
    with pytest.raises(UploadFailed, match="finished"):
        upload.write(b"x")
    with pytest.raises(UploadFailed, match="finished"):
        await upload.finish()
    await upload.abort()  # too late: does nothing
    assert await librarian.read_bytes(alias_id) == b"abc"


@pytest_twisted.ensureDeferred
async def test_writes_push_back_when_the_upload_is_full(librarian: Librarian) -> None:
    upload = librarian.new_upload("big", "application/octet-stream")
    chunk = os.urandom(1024 * 1024)
    pending = []
    written = 0
    # write without waiting: the upload must say "wait" before holding much more than its
    # high-water mark
    while True:
        d = upload.write(chunk)
        written += len(chunk)
        if not d.called:
            pending.append(d)
            break
        assert written < HIGH_WATER + 2 * len(chunk)
    assert written >= HIGH_WATER - len(chunk)
    await pending[0]  # fires once the threads caught up
    alias_id = await upload.finish()
    assert (await librarian.get(alias_id)).filesize == written


@implementer(interfaces.IPushProducer)
class _ChunkProducer:
    """A push producer writing ``count`` chunks as fast as it is allowed to."""

    def __init__(self, consumer: Any, chunk: bytes, count: int) -> None:
        self.consumer = consumer
        self.chunk = chunk
        self.left = count
        self.paused = False
        self.pauses = 0
        self.stopped = False
        self.done: defer.Deferred[None] = defer.Deferred()

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        while self.left and not self.paused and not self.stopped:
            self.left -= 1
            self.consumer.write(self.chunk)
        if not self.left and not self.done.called:
            self.consumer.unregisterProducer()
            self.done.callback(None)

    def stopProducing(self) -> None:
        self.stopped = True


@pytest_twisted.ensureDeferred
async def test_a_push_producer_is_paused_while_the_upload_is_full(librarian: Librarian) -> None:
    upload = librarian.new_upload("pushed", "application/octet-stream")
    chunk = os.urandom(256 * 1024)
    producer = _ChunkProducer(upload, chunk, 100)  # 25 MiB
    upload.registerProducer(producer, True)
    producer.resumeProducing()
    await producer.done
    alias_id = await upload.finish()
    assert producer.pauses > 0
    assert await librarian.read_bytes(alias_id, limit=30 * 1024 * 1024) == chunk * 100


@pytest_twisted.ensureDeferred
async def test_a_pull_producer_feeds_an_upload(librarian: Librarian) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    upload = librarian.new_upload("pulled", "application/octet-stream")
    await FileSender().beginFileTransfer(io.BytesIO(data), upload)
    alias_id = await upload.finish()
    assert await librarian.read_bytes(alias_id) == data


@pytest_twisted.ensureDeferred
async def test_a_failing_upload_stops_its_producer(librarian: Librarian, db: Database) -> None:
    upload = librarian.new_upload("f", "application/octet-stream", max_size=1_000_000)
    producer = _ChunkProducer(upload, b"x" * 100_000, 20)
    upload.registerProducer(producer, True)
    with pytest.raises(FileTooLarge):
        producer.resumeProducing()
    assert producer.stopped
    with pytest.raises(FileTooLarge):
        await upload.finish()
    await assert_nothing_stored(librarian, db)


# -- reading back ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_file_reads_back_as_a_stream(librarian: Librarian) -> None:
    data = os.urandom(2 * 1024 * 1024 + 1)
    alias_id = await add(librarian, data)
    got = []
    async with await librarian.open(alias_id) as reader:
        async for chunk in reader:
            got.append(chunk)
        assert reader.position == len(data)
    assert b"".join(got) == data
    assert len(got) == 3


def _tamper(path: Path, data: bytes) -> None:
    path.chmod(0o644)
    path.write_bytes(data)


@pytest_twisted.ensureDeferred
async def test_bit_rot_is_reported_not_served(librarian: Librarian, captured_log: Any) -> None:
    captured_log.allow_errors(CorruptFile)
    data = os.urandom(300_000)
    alias_id = await add(librarian, data)
    file = await librarian.get(alias_id)
    rotten = bytearray(data)
    rotten[123_456] ^= 0x01
    _tamper(librarian.store.path_for(file.sha256), bytes(rotten))
    with pytest.raises(CorruptFile, match=f"librarian file {alias_id}"):
        await librarian.read_bytes(alias_id)
    reader = await librarian.open(alias_id)
    read = b""
    with pytest.raises(CorruptFile):
        while chunk := await reader.read(100_000):
            read += chunk
    reader.close()
    assert len(read) == len(data)  # the bytes came, but the end said they are bad
    assert any("is corrupt" in m for m in captured_log.messages())


@pytest_twisted.ensureDeferred
async def test_damaged_files_are_reported_at_open(librarian: Librarian, captured_log: Any) -> None:
    captured_log.allow_errors(CorruptFile)
    for damage in ["truncated", "longer", "missing"]:
        data = os.urandom(10_000)
        alias_id = await add(librarian, data)
        path = librarian.store.path_for((await librarian.get(alias_id)).sha256)
        if damage == "missing":
            path.unlink()
        else:
            _tamper(path, data[:-1] if damage == "truncated" else data + b"x")
        with pytest.raises(CorruptFile, match="is missing" if damage == "missing" else "holds"):
            await librarian.open(alias_id)


@pytest_twisted.ensureDeferred
async def test_unknown_files_are_not_found(librarian: Librarian) -> None:
    with pytest.raises(FileNotFound):
        await librarian.open(12345)
    with pytest.raises(FileNotFound):
        await librarian.getURL(12345)
    with pytest.raises(FileNotFound):
        await librarian.get(12345)


@pytest_twisted.ensureDeferred
async def test_read_bytes_refuses_big_files(librarian: Librarian) -> None:
    alias_id = await add(librarian, b"x" * 1000)
    with pytest.raises(FileTooLarge):
        await librarian.read_bytes(alias_id, limit=999)


# -- URLs and tokens -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_urls_quote_the_filename(reactor: Any, db: Database, tmp_path: Path) -> None:
    lib = Librarian(reactor, db, tmp_path, "http://master:8000/librarian", b"s" * 32)
    alias_id = await add(lib, b"x", "a b#?%.txt")
    url = await lib.getURL(alias_id)
    assert url == f"http://master:8000/librarian/{alias_id}/a%20b%23%3F%25.txt"
    assert lib.url_for(await lib.get(alias_id)) == url


def test_tokens_are_per_file(librarian: Librarian) -> None:
    token = librarian.token_for(5)
    assert librarian.check_token(5, token)
    assert not librarian.check_token(6, token)
    assert not librarian.check_upload_token(token)
    assert not librarian.check_token(5, librarian.token_for(5, lifetime=-1))
    assert librarian.check_upload_token(librarian.upload_token())


def test_a_librarian_needs_a_secret(reactor: Any, db: Database, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Librarian(reactor, db, tmp_path, "http://x/", b"")
