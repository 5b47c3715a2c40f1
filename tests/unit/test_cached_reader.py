"""The cached reader: cache hits cost no backend read, concurrent misses of one chunk
cost one, adjacent misses share one range read, and errors reach every waiter."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from ketch.errors import IntegrityError, StorageError
from ketch.format.digests import DigestAlgorithm
from ketch.format.records import ChunkRecord
from ketch.fs.image_fs import ImageFS
from ketch.image.ketch_image import open_ketch_image
from ketch.storage import cached_reader
from ketch.storage.blobs import BlobRef
from ketch.storage.cached_reader import CachedChunkReader
from ketch.storage.chunk_cache import ChunkCache
from ketch.storage.chunk_reader import ChunkReader
from ketch.storage.memory import MemoryStore
from ketch.storage.oci_layout_store import OciLayoutStore
from ketch.storage.store import ImageStore
from tests.fixtures import ocilayout as ol
from tests.fixtures.ketch import convert

T = TypeVar("T")
CHUNK = 4096
THREADS = 32


class CountingStore(MemoryStore):
    """A copy of ``inner``'s image "ketch" in memory, counting range reads, which it can
    hold or fail."""

    def __init__(self, inner: ImageStore) -> None:
        super().__init__(inner.name)
        self.copy_image_from(inner, "ketch")
        self.ranges: list[tuple[str, int, int]] = []
        #: called before each range read (in the reading thread): may block or raise
        self.before_read: Callable[[], None] = lambda: None

    @property
    def reads(self) -> int:
        with self._lock:
            return len(self.ranges)

    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        with self._lock:
            self.ranges.append((digest, offset, length))
        self.before_read()
        return super().read_range(digest, offset, length)


@dataclass
class Mount:
    """One image read through a cached reader, as a daemon mount would."""

    fs: ImageFS
    reader: CachedChunkReader
    store: CountingStore
    cache: ChunkCache | None

    def chunks(self, path: str) -> tuple[BlobRef, list[ChunkRecord]]:
        """The blob and chunk records of a whole file."""
        ino = self.fs.resolve(path)
        size = self.fs.getattr(ino).size
        pieces = self.fs.bootstrap.chunks_for_range(ino - 1, 0, size)
        blobs = {chunk.blob for _, chunk in pieces}
        assert len(blobs) == 1
        return self.fs.blobs[blobs.pop()], [chunk for _, chunk in pieces]

    def cat(self, path: str) -> bytes:
        ino = self.fs.resolve(path)
        return self.fs.read(ino, 0, self.fs.getattr(ino).size)


def mount(layout: Path, cache_root: Path | None, capacity: int = 0, memory: int = 0) -> Mount:
    """A reader with no memory tier unless asked: these tests watch the disk cache."""
    store = CountingStore(OciLayoutStore.open(layout))
    image = open_ketch_image(store, "ketch")
    algo = image.bootstrap.digest_algorithm
    cache = None if cache_root is None else ChunkCache(cache_root, capacity, algo)
    reader = CachedChunkReader(ChunkReader(store, algo), cache, memory=memory)
    mount = Mount(ImageFS(image.bootstrap, reader), reader, store, cache)
    store.ranges.clear()  # opening read the bootstrap whole, not by range; start at zero
    return mount


def build(tmp_path: Path, name: str, files: dict[str, bytes]) -> Path:
    src = tmp_path / f"{name}-src"
    entries = [ol.file(path, data) for path, data in sorted(files.items())]
    ol.write_oci_layout(src, "src", [ol.tar_bytes(entries)])
    convert(src, "src", tmp_path / name, chunk_size=CHUNK)
    return tmp_path / name


FOUR = os.urandom(4 * CHUNK)  # four adjacent chunks, stored raw
TEXT = b"".join(b"line %d of a compressible file\n" % n for n in range(2000))  # zstd
REPEATED = b"r" * (3 * CHUNK)  # one chunk, three times in the file
SHARED = os.urandom(3 * CHUNK)


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return build(tmp_path, "image", {"four": FOUR, "text": TEXT, "repeated": REPEATED})


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def test_round_trip_then_served_from_cache(layout: Path, tmp_path: Path) -> None:
    cold = mount(layout, tmp_path / "cache")
    assert cold.cat("/four") == FOUR
    assert cold.cat("/text") == TEXT
    assert cold.store.reads > 0
    stats = cold.reader.stats()
    assert stats.cache_hits == 0 and stats.cache_misses > 0
    assert stats.backend_bytes == sum(length for _, _, length in cold.store.ranges)
    # A second mount (a restarted daemon) on the same cache dir never touches the store.
    warm = mount(layout, tmp_path / "cache")
    assert warm.cat("/four") == FOUR
    assert warm.cat("/text") == TEXT
    assert warm.store.reads == 0
    assert warm.reader.cache_hits == stats.cache_misses
    assert warm.reader.fetches == 0 and warm.reader.backend_bytes == 0


def test_without_a_cache_every_read_fetches(layout: Path) -> None:
    plain = mount(layout, None)
    assert plain.cat("/four") == FOUR
    assert plain.cat("/four") == FOUR
    assert plain.store.reads == 2
    assert plain.reader.cache_misses == 8 and plain.reader.cache_hits == 0


def test_adjacent_missing_chunks_share_one_range_read(layout: Path, tmp_path: Path) -> None:
    cold = mount(layout, tmp_path / "c1")
    blob, chunks = cold.chunks("/four")
    assert len(chunks) == 4
    assert cold.reader.read(blob, chunks) == [FOUR[i * CHUNK : (i + 1) * CHUNK] for i in range(4)]
    span = sum(chunk.compressed_size for chunk in chunks)
    assert cold.store.ranges == [(blob.digest, chunks[0].compressed_offset, span)]
    # With the second chunk cached, only the others are fetched: [0] and [2, 3].
    partial = mount(layout, tmp_path / "c2")
    assert partial.cache is not None
    partial.cache.put(chunks[1].digest, FOUR[CHUNK : 2 * CHUNK])
    assert b"".join(partial.reader.read(blob, chunks)) == FOUR
    assert partial.store.ranges == [
        (blob.digest, chunks[0].compressed_offset, chunks[0].compressed_size),
        (
            blob.digest,
            chunks[2].compressed_offset,
            chunks[2].compressed_size + chunks[3].compressed_size,
        ),
    ]
    stats = partial.reader.stats()
    assert (stats.cache_hits, stats.cache_misses, stats.fetches) == (1, 3, 2)


def test_a_chunk_named_twice_in_one_read_is_fetched_once(layout: Path, tmp_path: Path) -> None:
    m = mount(layout, tmp_path / "cache")
    _, chunks = m.chunks("/repeated")
    assert len(chunks) == 3 and len({chunk.digest for chunk in chunks}) == 1
    assert m.cat("/repeated") == REPEATED
    assert m.store.reads == 1 and m.reader.cache_misses == 1


def test_corrupt_cache_entry_is_refetched_never_returned(layout: Path, tmp_path: Path) -> None:
    m = mount(layout, tmp_path / "cache")
    assert m.cat("/text") == TEXT
    assert m.cache is not None
    _, chunks = m.chunks("/text")
    entry = m.cache.path(chunks[0].digest)
    damaged = bytearray(entry.read_bytes())
    damaged[7] ^= 0xFF
    entry.write_bytes(bytes(damaged))
    m.cache.path(chunks[1].digest).write_bytes(b"truncated")
    before = m.store.reads
    assert m.cat("/text") == TEXT
    assert m.cache.corrupt == 2
    assert m.store.reads == before + 1  # the two damaged chunks are adjacent: one read
    assert m.cache.get(chunks[0].digest) == TEXT[:CHUNK]  # and refilled


def test_concurrent_misses_of_one_chunk_fetch_it_once(layout: Path, tmp_path: Path) -> None:
    m = mount(layout, tmp_path / "cache")
    blob, chunks = m.chunks("/four")
    # The first range read waits until the 31 other readers have joined its flight, so
    # every one of them really missed the chunk while it was being fetched.
    m.store.before_read = lambda: wait_for(
        lambda: m.reader.stats().joined >= THREADS - 1, "readers to join"
    )
    results = succeeded(run_threads(lambda: m.reader.read(blob, chunks[1:2])))
    assert all(result == [FOUR[CHUNK : 2 * CHUNK]] for result in results)
    assert m.store.reads == 1
    stats = m.reader.stats()
    assert (stats.cache_misses, stats.joined, stats.fetches) == (1, THREADS - 1, 1)
    assert not m.reader._flights  # nothing kept after the reads returned


def test_concurrent_whole_file_reads_without_cache(layout: Path) -> None:
    m = mount(layout, None)
    blob, chunks = m.chunks("/four")
    m.store.before_read = lambda: wait_for(
        lambda: m.reader.stats().joined >= (THREADS - 1) * 4, "readers to join"
    )
    results = succeeded(run_threads(lambda: m.reader.read(blob, chunks)))
    assert all(b"".join(result) == FOUR for result in results)
    assert m.store.reads == 1


def test_a_failed_fetch_reaches_every_waiter_and_is_retried(layout: Path, tmp_path: Path) -> None:
    m = mount(layout, tmp_path / "cache")
    blob, chunks = m.chunks("/text")
    failures = iter([True])

    def flaky() -> None:
        wait_for(lambda: m.reader.stats().joined >= THREADS - 1, "readers to join")
        if next(failures, False):
            raise StorageError("backend down")

    m.store.before_read = flaky
    outcomes = run_threads(lambda: m.reader.read(blob, chunks[:1]))
    assert all(isinstance(o, StorageError) and "backend down" in str(o) for o in outcomes)
    assert m.store.reads == 1
    assert not m.reader._flights
    assert m.cache is not None and m.cache.get(chunks[0].digest) is None
    # The error was not remembered: the next read fetches again, and succeeds.
    m.store.before_read = lambda: None
    assert m.reader.read(blob, chunks[:1]) == [TEXT[:CHUNK]]
    assert m.store.reads == 2


def test_integrity_error_spares_the_other_runs(layout: Path, tmp_path: Path) -> None:
    m = mount(layout, tmp_path / "cache")
    blob, chunks = m.chunks("/four")
    assert m.cache is not None
    m.cache.put(chunks[1].digest, FOUR[CHUNK : 2 * CHUNK])
    raw = bytearray(m.store.read_blob(blob.digest))
    raw[chunks[0].compressed_offset] ^= 0xFF
    m.store.corrupt(blob.digest, bytes(raw))
    with pytest.raises(IntegrityError, match=chunks[0].digest.hex()):
        m.reader.read(blob, chunks)
    # The run after the cached chunk was still fetched, verified and cached.
    assert m.cache.get(chunks[2].digest) == FOUR[2 * CHUNK : 3 * CHUNK]
    assert m.cache.get(chunks[3].digest) == FOUR[3 * CHUNK :]
    assert m.cache.get(chunks[0].digest) is None


def test_images_sharing_chunks_fetch_them_once(tmp_path: Path) -> None:
    one = build(tmp_path, "one", {"shared": SHARED, "only-one": os.urandom(2 * CHUNK)})
    two = build(tmp_path, "two", {"shared": SHARED, "only-two": TEXT})
    cache = tmp_path / "cache"
    first = mount(one, cache)
    assert first.cat("/shared") == SHARED
    assert first.reader.cache_misses == 3
    # Another daemon, another image, the same node-wide cache directory.
    second = mount(two, cache)
    assert second.cat("/shared") == SHARED
    assert second.store.reads == 0
    assert second.reader.cache_hits == 3
    assert second.cat("/only-two") == TEXT
    assert second.store.reads == 1


def test_cache_and_reader_must_agree_on_the_digest(layout: Path, tmp_path: Path) -> None:
    m = mount(layout, None)
    cache = ChunkCache(tmp_path / "cache", 0, DigestAlgorithm.SHA256)
    with pytest.raises(ValueError, match="expected digest algorithm blake3, found sha256"):
        CachedChunkReader(m.reader.reader, cache)


def run_threads(work: Callable[[], T]) -> list[T | BaseException]:
    """Run ``work`` in THREADS threads released together; their results or errors."""
    barrier = threading.Barrier(THREADS)
    results: list[T | BaseException] = [RuntimeError("did not finish")] * THREADS

    def body(n: int) -> None:
        barrier.wait()
        try:
            results[n] = work()
        except BaseException as exc:
            results[n] = exc

    threads = [threading.Thread(target=body, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def succeeded(results: list[T | BaseException]) -> list[T]:
    """The results, or the first error raised."""
    values: list[T] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        values.append(result)
    return values


def test_recent_chunks_are_served_from_memory(layout: Path, tmp_path: Path) -> None:
    m = mount(layout, tmp_path / "cache", memory=2 * CHUNK)
    blob, chunks = m.chunks("/four")
    for _ in range(3):  # a sequential reader asks for each chunk several times
        assert m.reader.read(blob, chunks[:1]) == [FOUR[:CHUNK]]
    assert m.store.reads == 1
    assert m.reader.memory_hits == 2
    assert m.cache is not None and m.cache.hits == 0  # the cache file was not re-read
    m.reader.read(blob, chunks[1:4])  # three more chunks: the first one drops out of memory
    assert m.reader.read(blob, chunks[:1]) == [FOUR[:CHUNK]]
    assert m.cache.hits == 1


def test_a_miss_reads_ahead_the_chunks_that_follow_in_the_blob(
    layout: Path, tmp_path: Path
) -> None:
    store = CountingStore(OciLayoutStore.open(layout))
    image = open_ketch_image(store, "ketch")
    algo = image.bootstrap.digest_algorithm
    bootstrap = image.bootstrap
    reader = CachedChunkReader(
        ChunkReader(store, algo),
        ChunkCache(tmp_path / "c", 0, algo),
        miss_extension=3 * CHUNK,
    )
    fs = ImageFS(bootstrap, reader)
    store.ranges.clear()
    four = fs.resolve("/four")
    assert fs.read(four, 0, CHUNK) == FOUR[:CHUNK]
    assert len(store.ranges) == 1
    # The next chunks came with the first read: no more range reads for them.
    assert fs.read(four, CHUNK, 3 * CHUNK) == FOUR[CHUNK:]
    assert len(store.ranges) == 1
    # A planned read (extend=False) fetches exactly its chunks and nothing after them.
    fresh = CachedChunkReader(
        ChunkReader(store, algo),
        ChunkCache(tmp_path / "c2", 0, algo),
        miss_extension=3 * CHUNK,
    )
    first = bootstrap.chunks_for_range(four - 1, 0, CHUNK)[0][1]
    store.ranges.clear()
    assert fresh.read(fs.blobs[first.blob], [first], extend=False)[0] == FOUR[:CHUNK]
    assert [length for _, _, length in store.ranges] == [first.compressed_size]


# -- prefetch ---------------------------------------------------------------------------

BIG = os.urandom(16 * CHUNK)  # sixteen raw chunks, for sequential reads


def test_prefetched_chunks_are_served_from_memory(layout: Path, tmp_path: Path) -> None:
    m = mount(layout, tmp_path / "cache", memory=64 * CHUNK)
    blob, chunks = m.chunks("/four")
    assert m.reader.read_from_memory(blob, chunks) is None  # nothing there yet
    m.reader.prefetch(blob, chunks)
    m.reader.flush()
    assert m.store.reads == 1  # adjacent chunks: one merged range read
    assert m.reader.read_from_memory(blob, chunks) == [
        FOUR[i * CHUNK : (i + 1) * CHUNK] for i in range(4)
    ]
    assert m.reader.read(blob, chunks) == [FOUR[i * CHUNK : (i + 1) * CHUNK] for i in range(4)]
    assert m.store.reads == 1
    assert m.cache is not None and m.cache.get(chunks[0].digest) == FOUR[:CHUNK]
    assert not m.reader._flights


def test_prefetch_from_the_cache_is_verified(layout: Path, tmp_path: Path) -> None:
    warm = mount(layout, tmp_path / "cache")
    assert warm.cat("/text") == TEXT
    m = mount(layout, tmp_path / "cache", memory=64 * CHUNK)
    blob, chunks = m.chunks("/text")
    assert m.cache is not None
    entry = m.cache.path(chunks[0].digest)
    damaged = bytearray(entry.read_bytes())
    damaged[3] ^= 0xFF
    entry.write_bytes(bytes(damaged))
    m.reader.prefetch(blob, chunks)
    m.reader.flush()
    # The damaged entry was not trusted: the chunk came from the store, verified.
    assert m.cache.corrupt == 1
    assert m.store.reads == 1
    assert b"".join(m.reader.read_from_memory(blob, chunks) or []) == TEXT


def test_a_corrupt_prefetched_chunk_is_never_served(layout: Path, tmp_path: Path) -> None:
    m = mount(layout, tmp_path / "cache", memory=64 * CHUNK)
    blob, chunks = m.chunks("/four")
    raw = bytearray(m.store.read_blob(blob.digest))
    raw[chunks[1].compressed_offset] ^= 0xFF
    m.store.corrupt(blob.digest, bytes(raw))
    m.reader.prefetch(blob, chunks[1:2])
    m.reader.flush()
    assert m.reader.read_from_memory(blob, chunks[1:2]) is None
    with pytest.raises(IntegrityError, match=chunks[1].digest.hex()):
        m.reader.read(blob, chunks[1:2])
    assert m.cache is not None and m.cache.get(chunks[1].digest) is None


def test_a_reader_joins_a_prefetch_in_flight(layout: Path, tmp_path: Path) -> None:
    m = mount(layout, tmp_path / "cache", memory=64 * CHUNK)
    blob, chunks = m.chunks("/four")
    release = threading.Event()
    m.store.before_read = lambda: wait_for(release.is_set, "the test to release the read")
    m.reader.prefetch(blob, chunks[:1])
    wait_for(lambda: m.store.reads == 1, "the prefetch to start its read")
    results: list[list[bytes]] = []
    reader = threading.Thread(target=lambda: results.append(m.reader.read(blob, chunks[:1])))
    reader.start()
    wait_for(lambda: m.reader.stats().joined == 1, "the reader to join the prefetch")
    release.set()
    reader.join(timeout=10)
    assert results == [[FOUR[:CHUNK]]]
    assert m.store.reads == 1


def test_prefetch_stays_within_its_budget(tmp_path: Path) -> None:
    layout = build(tmp_path, "big", {"big": BIG})
    m = mount(layout, tmp_path / "cache", memory=64 * CHUNK)
    m.reader = CachedChunkReader(
        m.reader.reader, m.cache, memory=64 * CHUNK, prefetch_budget=3 * CHUNK
    )
    blob, chunks = m.chunks("/big")
    release = threading.Event()
    m.store.before_read = lambda: wait_for(release.is_set, "the test to release the reads")
    m.reader.prefetch(blob, chunks)
    assert len(m.reader._flights) == 3  # the rest is left to the reader
    release.set()
    m.reader.flush()
    assert m.reader.read_from_memory(blob, chunks[:3]) == [
        BIG[i * CHUNK : (i + 1) * CHUNK] for i in range(3)
    ]
    assert m.reader.read_from_memory(blob, chunks[3:4]) is None
    assert b"".join(m.reader.read(blob, chunks)) == BIG


def test_sequential_reads_prefetch_what_follows_and_seeks_do_not(tmp_path: Path) -> None:
    layout = build(tmp_path, "big", {"big": BIG})
    m = mount(layout, tmp_path / "cache", memory=64 * CHUNK)
    big = m.fs.resolve("/big")
    blob, chunks = m.chunks("/big")
    # A read in the middle of the file is a seek: nothing is read ahead.
    assert m.fs.read(big, 8 * CHUNK, CHUNK) == BIG[8 * CHUNK : 9 * CHUNK]
    m.reader.flush()
    assert m.reader.read_from_memory(blob, chunks[9:10]) is None
    # From the start, in order: the next chunks come ahead of the reader, twice what it
    # has read so far.
    assert m.fs.read(big, 0, CHUNK) == BIG[:CHUNK]
    assert m.fs.read(big, CHUNK, CHUNK) == BIG[CHUNK : 2 * CHUNK]
    m.reader.flush()
    assert m.reader.read_from_memory(blob, chunks[2:6]) is not None
    reads = m.store.reads
    offset = 2 * CHUNK
    while offset < len(BIG):
        data = m.fs.read_from_memory(big, offset, CHUNK)
        if data is None:
            data = m.fs.read(big, offset, CHUNK)
        assert data == BIG[offset : offset + CHUNK]
        offset += CHUNK
        m.reader.flush()
    assert m.store.reads - reads <= 4  # a few prefetch reads, not one per chunk


def test_without_a_memory_tier_nothing_is_prefetched(layout: Path, tmp_path: Path) -> None:
    m = mount(layout, tmp_path / "cache")
    blob, chunks = m.chunks("/four")
    m.reader.prefetch(blob, chunks)
    assert not m.reader._flights and m.store.reads == 0
    assert m.fs.read_from_memory(m.fs.resolve("/four"), 0, CHUNK) is None


def test_idle_prefetch_workers_end_and_come_back(
    layout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cached_reader, "_WORKER_IDLE", 0.05)
    m = mount(layout, tmp_path / "cache", memory=64 * CHUNK)
    blob, chunks = m.chunks("/four")
    m.reader.prefetch(blob, chunks[:2])
    m.reader.flush()
    wait_for(lambda: m.reader._workers == 0, "idle workers to end")
    m.reader.prefetch(blob, chunks[2:])
    m.reader.flush()
    assert m.reader.read_from_memory(blob, chunks) is not None


# -- damaged blobs: narrowed to the bad chunk, read again once (issue 16, defect 1) ----------


def extending_mount(layout: Path, cache_root: Path, store: CountingStore | None = None) -> Mount:
    """A reader as the daemon builds it: a miss extension brings what follows a miss."""
    store = store or CountingStore(OciLayoutStore.open(layout))
    image = open_ketch_image(store, "ketch")
    bootstrap = image.bootstrap
    algo = bootstrap.digest_algorithm
    cache = ChunkCache(cache_root, 0, algo)
    reader = CachedChunkReader(ChunkReader(store, algo), cache, miss_extension=16 * CHUNK)
    store.ranges.clear()
    return Mount(ImageFS(bootstrap, reader), reader, store, cache)


def damage(m: Mount, path: str, *, truncate: bool = False) -> ChunkRecord:
    """Flip a byte of the first chunk of ``path`` in its blob (or cut the blob there)."""
    blob, chunks = m.chunks(path)
    raw = bytearray(m.store.read_blob(blob.digest))
    if truncate:
        del raw[chunks[0].compressed_offset + 1 :]
    else:
        raw[chunks[0].compressed_offset + 1] ^= 0xFF
    m.store.corrupt(blob.digest, bytes(raw))
    return chunks[0]


@pytest.mark.parametrize("truncate", [False, True], ids=["flipped", "truncated"])
def test_a_bad_chunk_read_ahead_fails_only_its_own_readers(tmp_path: Path, truncate: bool) -> None:
    # "a" and "b" are adjacent in the blob: a miss of "a" reads "b" ahead, in one range.
    layout = build(tmp_path, "image", {"a": FOUR, "b": TEXT})
    m = extending_mount(layout, tmp_path / "cache")
    bad = damage(m, "/b", truncate=truncate)
    assert m.cat("/a") == FOUR  # the good chunks of the failed range are served
    # The range, then the bad chunk alone, once (a blob cut short: halves down to the
    # chunks it lacks).
    assert (bad.compressed_offset, bad.compressed_size) in [r[1:] for r in m.store.ranges]
    if not truncate:
        assert len(m.store.ranges) == 2
    assert m.reader.reader.verify_failures >= 1
    assert not m.reader._flights
    with pytest.raises(IntegrityError, match=bad.digest.hex() if not truncate else "expected"):
        m.cat("/b")
    assert m.cache is not None and m.cache.get(bad.digest) is None
    assert m.cat("/a") == FOUR  # still serving


class FlippingStore(CountingStore):
    """Flips one byte of the first ``flips`` range reads, as a bad link would."""

    def __init__(self, inner: ImageStore, flips: int) -> None:
        super().__init__(inner)
        self.flips = flips

    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        data = super().read_range(digest, offset, length)
        with self._lock:
            if self.flips <= 0:
                return data
            self.flips -= 1
        return bytes([data[0] ^ 0x01]) + data[1:]


def test_bytes_damaged_on_the_way_are_read_again_once(tmp_path: Path) -> None:
    layout = build(tmp_path, "image", {"a": FOUR, "b": TEXT})
    m = extending_mount(layout, tmp_path / "cache", FlippingStore(OciLayoutStore.open(layout), 1))
    assert m.cat("/a") == FOUR
    assert m.cat("/b") == TEXT
    assert m.reader.reader.verify_failures == 1
    assert len(m.store.ranges) == 2  # one merged range, one chunk read again
    # A chunk damaged on both reads is an error for its readers only.
    again = extending_mount(
        layout, tmp_path / "cache2", FlippingStore(OciLayoutStore.open(layout), 2)
    )
    with pytest.raises(IntegrityError):
        again.cat("/a")
    assert again.reader.reader.verify_failures == 2
    assert again.cat("/a") == FOUR  # not remembered: the next read fetches it again
