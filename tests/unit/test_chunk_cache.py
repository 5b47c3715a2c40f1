"""The node-wide chunk cache: entries are verified on every read, written atomically,
evicted least-recently-used first, and shared by several processes on one directory."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ketch.format.digests import DigestAlgorithm
from ketch.storage.chunk_cache import TEMP_PREFIX, ChunkCache

ALGO = DigestAlgorithm.BLAKE3
REPO = Path(__file__).resolve().parents[2]


def chunk(seed: int, size: int = 1000) -> tuple[bytes, bytes]:
    """A deterministic chunk and its digest."""
    data = random.Random(seed).randbytes(size)
    return ALGO.digest(data), data


def entries_on_disk(root: Path) -> list[Path]:
    return sorted(p for p in (root / ALGO.label).glob("*/*") if not p.name.startswith("."))


def set_mtime(path: Path, seconds_ago: float) -> None:
    t = time.time_ns() - int(seconds_ago * 1e9)
    os.utime(path, ns=(t, t))


def test_round_trip_and_layout(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path, 0, ALGO)
    digest, data = chunk(1)
    assert cache.get(digest) is None
    assert cache.put(digest, data)
    assert cache.get(digest) == data
    path = tmp_path / "blake3" / digest.hex()[:2] / digest.hex()
    assert path.read_bytes() == data
    assert cache.path(digest) == path
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.corrupt, stats.stores) == (1, 1, 0, 1)
    assert stats.bytes_stored == len(data) and stats.entries == 1


def test_algorithms_have_separate_directories(tmp_path: Path) -> None:
    data = b"same bytes"
    blake = ChunkCache(tmp_path, 0, DigestAlgorithm.BLAKE3)
    sha = ChunkCache(tmp_path, 0, DigestAlgorithm.SHA256)
    blake.put(DigestAlgorithm.BLAKE3.digest(data), data)
    assert sha.get(DigestAlgorithm.BLAKE3.digest(data)) is None
    assert (tmp_path / "blake3").is_dir() and (tmp_path / "sha256").is_dir()


def test_digest_must_be_32_bytes(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path, 0, ALGO)
    with pytest.raises(ValueError, match="expected 32 bytes, found 3"):
        cache.get(b"abc")


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: d[:-1], id="truncated"),
        pytest.param(lambda d: b"", id="empty"),
        pytest.param(lambda d: d[:10] + bytes([d[10] ^ 1]) + d[11:], id="flipped"),
        pytest.param(lambda d: d + b"x", id="extended"),
    ],
)
def test_damaged_entry_is_deleted_counted_and_refilled(tmp_path: Path, damage: object) -> None:
    cache = ChunkCache(tmp_path, 0, ALGO)
    digest, data = chunk(2)
    cache.put(digest, data)
    path = cache.path(digest)
    path.write_bytes(damage(data))  # type: ignore[operator]
    assert cache.get(digest) is None
    assert not path.exists()
    stats = cache.stats()
    assert (stats.corrupt, stats.misses, stats.hits, stats.entries) == (1, 1, 0, 0)
    # A later fill repairs it.
    cache.put(digest, data)
    assert cache.get(digest) == data


def test_damage_found_by_another_process_reading_the_same_dir(tmp_path: Path) -> None:
    digest, data = chunk(3)
    ChunkCache(tmp_path, 0, ALGO).put(digest, data)
    path = tmp_path / "blake3" / digest.hex()[:2] / digest.hex()
    path.write_bytes(b"\0" * len(data))  # same size: only the digest tells
    fresh = ChunkCache(tmp_path, 0, ALGO)
    assert fresh.get(digest) is None
    assert fresh.corrupt == 1 and not path.exists()


def test_planted_symlink_fifo_and_directory_are_not_trusted(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path, 0, ALGO)
    (d1, data1), (d2, _), (d3, _) = chunk(4), chunk(5), chunk(6)
    for digest in (d1, d2, d3):
        cache.path(digest).parent.mkdir(parents=True, exist_ok=True)
    # A symlink to a file with the right bytes is still not followed.
    good = tmp_path / "elsewhere"
    good.write_bytes(data1)
    cache.path(d1).symlink_to(good)
    os.mkfifo(cache.path(d2))  # must not hang the reader
    cache.path(d3).mkdir()
    assert cache.get(d1) is None
    assert cache.get(d2) is None
    assert cache.get(d3) is None
    assert not cache.path(d1).is_symlink() and good.read_bytes() == data1
    assert not cache.path(d2).exists()
    assert cache.corrupt == 3


def test_temp_files_are_never_read_as_entries(tmp_path: Path) -> None:
    digest, data = chunk(7)
    bucket = tmp_path / "blake3" / digest.hex()[:2]
    bucket.mkdir(parents=True)
    # Complete bytes under a temp name, as a writer killed just before its rename leaves.
    leftover = bucket / f"{TEMP_PREFIX}{digest.hex()}"
    leftover.write_bytes(data)
    cache = ChunkCache(tmp_path, 0, ALGO)
    assert cache.get(digest) is None
    assert cache.stats().entries == 0
    assert leftover.exists()  # young: it may belong to a live writer


def test_stale_temp_files_are_removed_at_open(tmp_path: Path) -> None:
    bucket = tmp_path / "blake3" / "ab"
    bucket.mkdir(parents=True)
    stale, young = bucket / f"{TEMP_PREFIX}dead", bucket / f"{TEMP_PREFIX}alive"
    stale.write_bytes(b"half")
    young.write_bytes(b"half")
    set_mtime(stale, 120)
    set_mtime(young, 5)
    ChunkCache(tmp_path, 0, ALGO)
    assert not stale.exists()
    assert young.exists()


def test_open_indexes_existing_entries(tmp_path: Path) -> None:
    first = ChunkCache(tmp_path, 0, ALGO)
    for seed in range(5):
        first.put(*chunk(seed, 100 + seed))
    (tmp_path / "blake3" / "zz").mkdir()  # stray names are ignored
    (tmp_path / "blake3" / "README").write_text("not an entry")
    second = ChunkCache(tmp_path, 0, ALGO)
    assert second.stats().entries == 5
    assert second.bytes_stored == sum(100 + seed for seed in range(5))


def test_lru_evicts_least_recently_used_first(tmp_path: Path) -> None:
    size = 1000
    cache = ChunkCache(tmp_path, 3 * size, ALGO, touch_interval=0)
    (a, da), (b, db), (c, dc), (d, dd) = (chunk(s, size) for s in (10, 11, 12, 13))
    cache.put(a, da)
    cache.put(b, db)
    cache.put(c, dc)
    assert cache.get(a) == da  # a is now more recent than b
    cache.put(d, dd)
    assert not cache.path(b).exists()
    assert all(cache.path(x).exists() for x in (a, c, d))
    stats = cache.stats()
    assert stats.evictions == 1 and stats.bytes_stored == 3 * size


def test_total_stays_under_capacity(tmp_path: Path) -> None:
    capacity = 10_000
    cache = ChunkCache(tmp_path, capacity, ALGO)
    rng = random.Random(0)
    for seed in range(60):
        cache.put(*chunk(seed, rng.randint(100, 3000)))
        on_disk = sum(p.stat().st_size for p in entries_on_disk(tmp_path))
        assert on_disk <= capacity
        assert cache.bytes_stored == on_disk
    assert cache.evictions > 0


def test_recency_survives_reopen_through_mtime(tmp_path: Path) -> None:
    size = 500
    first = ChunkCache(tmp_path, 0, ALGO)
    digests = []
    for seed in range(4):
        digest, data = chunk(seed, size)
        first.put(digest, data)
        digests.append(digest)
    # Used long ago, in the order 2, 0, 3, 1 (1 most recent).
    for age, index in zip((400, 300, 200, 100), (2, 0, 3, 1), strict=True):
        set_mtime(first.path(digests[index]), age)
    reopened = ChunkCache(tmp_path, 2 * size, ALGO)
    assert [d for d in digests if reopened.path(d).exists()] == [digests[1], digests[3]]
    assert reopened.evictions == 2


def test_hits_touch_the_file_at_most_once_per_interval(tmp_path: Path) -> None:
    digest, data = chunk(20)
    ChunkCache(tmp_path, 0, ALGO).put(digest, data)
    path = tmp_path / "blake3" / digest.hex()[:2] / digest.hex()
    set_mtime(path, 1000)
    old = path.stat().st_mtime_ns
    lazy = ChunkCache(tmp_path, 0, ALGO, touch_interval=3600)
    assert lazy.get(digest) == data
    assert path.stat().st_mtime_ns == old  # found by the scan 1000 s ago, < 1 h: no write
    eager = ChunkCache(tmp_path, 0, ALGO, touch_interval=60)
    assert eager.get(digest) == data
    assert path.stat().st_mtime_ns > old + 900 * 10**9


def test_zero_capacity_means_unlimited(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path, 0, ALGO)
    for seed in range(50):
        cache.put(*chunk(seed, 2000))
    assert cache.evictions == 0 and len(entries_on_disk(tmp_path)) == 50


def test_two_caches_on_one_directory_share_entries(tmp_path: Path) -> None:
    one = ChunkCache(tmp_path, 0, ALGO)
    two = ChunkCache(tmp_path, 0, ALGO)
    digest, data = chunk(30)
    one.put(digest, data)
    assert two.get(digest) == data  # stored after two opened: found on the get
    assert two.stats().entries == 1
    # Evicted by one: two just misses, no error.
    one.path(digest).unlink()
    assert two.get(digest) is None
    assert two.stats().entries == 0 and two.corrupt == 0


def test_capacity_counts_other_processes_entries_after_a_rescan(tmp_path: Path) -> None:
    size = 1000
    small = ChunkCache(tmp_path, 3 * size, ALGO, rescan_interval=0)
    other = ChunkCache(tmp_path, 0, ALGO)
    others = [chunk(s, size) for s in range(40, 44)]
    for digest, data in others:
        other.put(digest, data)
        time.sleep(0.01)  # distinct mtimes
    mine, data = chunk(50, size)
    small.put(mine, data)
    present = [d for d, _ in others if small.path(d).exists()]
    assert present == [others[2][0], others[3][0]]  # the two most recent of the others
    assert small.path(mine).exists()
    assert sum(p.stat().st_size for p in entries_on_disk(tmp_path)) <= 3 * size


def test_eviction_spares_entries_another_process_used(tmp_path: Path) -> None:
    size = 1000
    evictor = ChunkCache(tmp_path, 2 * size, ALGO, rescan_interval=None)
    user = ChunkCache(tmp_path, 0, ALGO, touch_interval=0)
    (a, da), (b, db), (c, dc) = (chunk(s, size) for s in (60, 61, 62))
    evictor.put(a, da)
    evictor.put(b, db)
    time.sleep(0.05)
    assert user.get(a) == da  # the evictor's index still thinks a is its oldest
    evictor.put(c, dc)
    assert evictor.path(a).exists()
    assert not evictor.path(b).exists()


def test_vanished_victims_are_tolerated(tmp_path: Path) -> None:
    size = 1000
    cache = ChunkCache(tmp_path, 2 * size, ALGO)
    (a, da), (b, db), (c, dc) = (chunk(s, size) for s in (70, 71, 72))
    cache.put(a, da)
    cache.put(b, db)
    cache.path(a).unlink()  # another process evicted it first
    cache.put(c, dc)
    assert cache.evictions == 0
    assert cache.bytes_stored == 2 * size


def test_put_failure_is_counted_not_raised(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path, 0, ALGO)
    digest, data = chunk(80)
    bucket = cache.path(digest).parent
    assert not bucket.exists()  # buckets are made by the first put into them
    bucket.write_bytes(b"")  # a file where the bucket dir should be
    assert cache.put(digest, data) is False
    assert cache.stats().store_errors == 1
    assert cache.get(digest) is None


def test_many_threads_put_and_get_consistently(tmp_path: Path) -> None:
    capacity = 50_000
    cache = ChunkCache(tmp_path, capacity, ALGO, touch_interval=0)
    chunks = [chunk(seed, 1000 + seed * 37 % 2000) for seed in range(100)]
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        rng = random.Random(worker)
        try:
            for _ in range(200):
                digest, data = rng.choice(chunks)
                got = cache.get(digest)
                if got is None:
                    cache.put(digest, data)
                else:
                    assert got == data
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    stats = cache.stats()
    assert stats.hits + stats.misses == 16 * 200
    assert stats.corrupt == 0
    on_disk = sum(p.stat().st_size for p in entries_on_disk(tmp_path))
    assert on_disk == stats.bytes_stored <= capacity
    assert not list((tmp_path / "blake3").glob(f"*/{TEMP_PREFIX}*"))


_WRITER = """
import random, sys
from pathlib import Path
from ketch.format.digests import DigestAlgorithm
from ketch.storage.chunk_cache import ChunkCache

cache = ChunkCache(Path(sys.argv[1]), 0, DigestAlgorithm.BLAKE3)
rng = random.Random(0)
noise = rng.randbytes(8 << 20)
for n in range(100_000):
    # Mostly time spent writing, so that the kill lands mid-write.
    data = n.to_bytes(8, "little") + noise[: rng.randint(1, 8 << 20)]
    cache.put(DigestAlgorithm.BLAKE3.digest(data), data)
    if n == 5:
        print("ready", flush=True)
"""


@pytest.mark.parametrize("delay", [0.0, 0.013, 0.051, 0.2])
def test_writer_killed_mid_write_leaves_nothing_untrustworthy(tmp_path: Path, delay: float) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, env=env
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    entries = entries_on_disk(tmp_path)
    assert len(entries) >= 6
    cache = ChunkCache(tmp_path, 0, ALGO)
    assert cache.stats().entries == len(entries)
    for path in entries:
        data = cache.get(bytes.fromhex(path.name))
        assert data is not None, f"{path.name}: half-written entry"
        assert ALGO.digest(data).hex() == path.name
    assert cache.stats().corrupt == 0


def test_a_background_scan_learns_the_entries_on_disk(tmp_path: Path) -> None:
    first = ChunkCache(tmp_path, 0, ALGO)
    stored = [chunk(seed, 500) for seed in range(20)]
    for digest, data in stored:
        assert first.put(digest, data)
    second = ChunkCache(tmp_path, 0, ALGO, scan_in_background=True)
    deadline = time.monotonic() + 10
    while second.stats().entries < len(stored) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert second.stats().entries == len(stored)
    assert second.stats().bytes_stored == 20 * 500
    assert all(second.probably_has(digest) for digest, _ in stored)
    assert second.get(stored[0][0]) == stored[0][1]
