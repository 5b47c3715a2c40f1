"""The node-wide chunk cache: verified, uncompressed chunks on local disk, by digest.

One directory serves every mount on the node, and several daemon processes use it at
once, so the directory itself is the only shared state: no lock file, no shared index.
Correctness rests on three rules.

- **Entries are hostile input.** Anything could have written the file (a daemon killed
  mid-write before a power loss, a full disk, another user, a bug), so ``get`` checks the
  bytes against the digest the entry is named by, every time. A mismatch, a symlink, a
  FIFO or an oversized file is deleted, counted as ``corrupt`` and reported as a miss
  (the reader fetches the chunk again and its put replaces the entry): wrong bytes are
  never returned. A put that fails (a full disk: ``no_space``, logged) is counted and
  never fails the read it came from. Because of this check, ``put`` needs no ``fsync``.
- **Entries appear whole.** ``put`` writes a temporary file in the entry's own directory
  and renames it into place, so no reader, in this process or another, ever opens a
  half-written entry. Temporary names start with ``.tmp-`` and can never be taken for an
  entry (entries are named by 64 hex digits); ones older than ``stale_temp_age`` are left
  by dead processes and are removed when the cache is opened or refreshed.
- **Other processes come and go.** Any entry may vanish (another process evicted it) or
  appear (another process stored it) at any time; every file operation tolerates both.

Layout (one directory per digest algorithm, so an entry's name means one thing)::

    root/<algo label>/<first 2 hex digits>/<64 hex digits>   uncompressed chunk bytes

Capacity is enforced by least-recently-used eviction over the whole directory. Each
process keeps an in-memory index (digest -> size, recency) built by scanning the
directory at open, kept current by its own puts, hits and evictions, and merged with a
rescan every ``rescan_interval`` seconds so other processes' entries count too. Recency
is shared through the file's mtime: a hit refreshes it with ``os.utime``, at most once
per ``touch_interval`` per entry so hot hits stay one ``open``/``read`` with no metadata
write. Before deleting a victim, eviction checks its mtime: if another process used it
since we last looked, it is spared and moved to the recent end.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ketch.format.digests import DIGEST_SIZE, DigestAlgorithm

#: The largest chunk a Ketch image can hold (docs/format.md §1: at most 16 MiB); a bigger
#: entry file cannot be a chunk, so it is not even read.
MAX_ENTRY_SIZE = 16 << 20
#: Prefix of temporary files; entries are 64 hex digits, so the two never meet.
TEMP_PREFIX = ".tmp-"
_HEX = frozenset("0123456789abcdef")
_NS = 1_000_000_000
#: seconds between two "cache full" log lines (each says how many puts failed since)
_NO_SPACE_LOG_INTERVAL = 60.0

log = logging.getLogger("ketch.storage")


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A consistent snapshot of the counters (for metrics and tests)."""

    hits: int
    misses: int
    #: entries found damaged (bad digest, truncated, not a regular file) and deleted
    corrupt: int
    #: entries this process deleted to stay within capacity
    evictions: int
    #: entries this process wrote
    stores: int
    #: puts that failed with an OS error (disk full, permissions): the read still succeeds
    store_errors: int
    #: of those, the ones that found no space left on the device (ENOSPC, EDQUOT)
    no_space: int
    #: bytes of the entries in this process's index (the whole cache as of the last scan,
    #: plus what this process has seen since)
    bytes_stored: int
    entries: int


@dataclass(slots=True)
class _Entry:
    size: int
    #: last use known to this process, ns since the epoch (own hits, or the file's mtime)
    recency: int
    #: the mtime we last gave the file (or found on it), ns
    touched: int


class ChunkCache:
    """A directory of verified chunks shared by every mount and process on the node.

    ``capacity`` is in bytes of entry data; 0 means unlimited. All methods are safe to
    call from many threads: the index and counters are guarded by one lock that is never
    held across file I/O, hashing included.
    """

    def __init__(
        self,
        root: Path,
        capacity: int,
        algo: DigestAlgorithm,
        *,
        touch_interval: float = 60.0,
        rescan_interval: float | None = 60.0,
        stale_temp_age: float = 60.0,
        scan_in_background: bool = False,
    ) -> None:
        """``scan_in_background``: learn the entries already on disk in a thread of its
        own instead of before returning (a mount does not wait for a scan that grows with
        the cache; until it ends, eviction counts only this process's own entries)."""
        if capacity < 0:
            raise ValueError(f"cache capacity: expected >= 0 bytes, found {capacity}")
        self.root = root
        self.capacity = capacity
        self.algo = algo
        self.directory = root / algo.label
        self._directory = str(self.directory)
        self._touch_interval_ns = int(touch_interval * _NS)
        self._rescan_interval_ns = None if rescan_interval is None else int(rescan_interval * _NS)
        self._stale_temp_age_ns = int(stale_temp_age * _NS)
        self._lock = threading.Lock()
        # Least recently used first.
        self._index: OrderedDict[bytes, _Entry] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._corrupt = 0
        self._evictions = 0
        self._stores = 0
        self._store_errors = 0
        self._no_space = 0
        self._no_space_logged = 0  # the count when "no space" was last logged
        self._no_space_log_at = 0.0  # time.monotonic() of that line
        self._rescanning = False
        self._last_scan = 0
        # Buckets are made by the first put into each (``_write_entry``).
        self.directory.mkdir(parents=True, exist_ok=True)
        if scan_in_background:
            threading.Thread(target=self.refresh, name="cache-scan", daemon=True).start()
        else:
            self.refresh()

    def probably_has(self, digest: bytes) -> bool:
        """From this process's index, without touching the disk: for decisions such as
        what to read ahead, never for what to serve (``get`` verifies)."""
        with self._lock:
            return digest in self._index

    def advise(self, digests: list[bytes]) -> None:
        """Ask the kernel to start reading these entries into the page cache now
        (``POSIX_FADV_WILLNEED``): the disk serves them in parallel, with no thread of
        ours waiting, and the ``get`` that follows copies from memory. A hint only."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        for digest in digests:
            try:
                fd = os.open(self._entry_path(digest), flags)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)

    # -- counters -------------------------------------------------------------------------

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                self._hits,
                self._misses,
                self._corrupt,
                self._evictions,
                self._stores,
                self._store_errors,
                self._no_space,
                self._bytes,
                len(self._index),
            )

    @property
    def hits(self) -> int:
        return self.stats().hits

    @property
    def misses(self) -> int:
        return self.stats().misses

    @property
    def corrupt(self) -> int:
        return self.stats().corrupt

    @property
    def evictions(self) -> int:
        return self.stats().evictions

    @property
    def bytes_stored(self) -> int:
        return self.stats().bytes_stored

    # -- paths ----------------------------------------------------------------------------

    def path(self, digest: bytes) -> Path:
        """Where the entry for ``digest`` lives (whether or not it exists)."""
        return Path(self._entry_path(digest))

    def _entry_path(self, digest: bytes) -> str:
        # A string, not a Path: the read path builds one per chunk read, where pathlib's
        # parsing shows in profiles.
        if len(digest) != DIGEST_SIZE:
            raise ValueError(f"chunk digest: expected {DIGEST_SIZE} bytes, found {len(digest)}")
        name = digest.hex()
        return f"{self._directory}/{name[:2]}/{name}"

    # -- reads ----------------------------------------------------------------------------

    def get(self, digest: bytes) -> bytes | None:
        """The chunk's bytes, verified against ``digest``; None if absent or damaged."""
        path = self._entry_path(digest)
        data, identity = self._read_entry(path)
        if data is not None and self.algo.digest(data) == digest:
            self._hit(digest, path, len(data))
            return data
        if identity is not None:
            # Present but wrong: delete it so nobody trusts it, unless another process
            # has meanwhile renamed a fresh entry over it (then the path names a
            # different file, which is not ours to judge).
            with contextlib.suppress(OSError):
                now = os.lstat(path)
                if (now.st_dev, now.st_ino) == identity:
                    os.unlink(path)
        with self._lock:
            self._misses += 1
            if identity is not None:
                self._corrupt += 1
            entry = self._index.pop(digest, None)
            if entry is not None:
                self._bytes -= entry.size
        return None

    def _read_entry(self, path: str) -> tuple[bytes | None, tuple[int, int] | None]:
        """The entry's bytes (None if unusable) and the file's (dev, ino) if it exists.

        O_NOFOLLOW: a symlink planted at an entry path is not followed; O_NONBLOCK: a
        FIFO planted there does not hang the reader.
        """
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink: damaged by definition
                with contextlib.suppress(OSError):
                    return None, _identity(os.lstat(path))
            return None, None
        try:
            st = os.fstat(fd)
            identity = _identity(st)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_ENTRY_SIZE:
                return None, identity
            return _read_limited(fd, MAX_ENTRY_SIZE, st.st_size), identity
        except OSError:
            return None, None
        finally:
            os.close(fd)

    def _hit(self, digest: bytes, path: str, size: int) -> None:
        now = time.time_ns()
        touch = False
        with self._lock:
            self._hits += 1
            entry = self._index.get(digest)
            if entry is None:
                # Stored by another process after our last scan, or evicted by another
                # thread since we read it (evictions unlink under this lock): it counts
                # from now on only if it is still there.
                if not os.path.lexists(path):
                    return
                entry = _Entry(size, now, now)
                self._index[digest] = entry
                self._bytes += size
                touch = True
            else:
                self._index.move_to_end(digest)
                entry.recency = now
                if now - entry.touched >= self._touch_interval_ns:
                    entry.touched = now
                    touch = True
        if touch:
            # Share the recency with other processes (and with our next open).
            with contextlib.suppress(OSError):
                os.utime(path, ns=(now, now), follow_symlinks=False)
        self._enforce_capacity()

    # -- writes ---------------------------------------------------------------------------

    def put(self, digest: bytes, data: bytes | memoryview) -> bool:
        """Store verified chunk bytes under ``digest``; True if the entry is now present.

        Best effort: an OS error (disk full, permissions) is counted, not raised, because
        a cache that cannot fill must never fail the read that fills it.
        """
        path = self.path(digest)
        size = memoryview(data).nbytes
        if size > MAX_ENTRY_SIZE:
            return False
        for _ in range(3):  # another thread may evict it between our write and our index
            try:
                existing: os.stat_result | None = os.lstat(path)
            except OSError:
                existing = None
            if not (
                existing is not None and stat.S_ISREG(existing.st_mode) and existing.st_size == size
            ):
                try:
                    self._write_entry(path, data)
                except OSError as exc:
                    self._store_failed(exc)
                    return False
                stored = True
            else:
                stored = False  # another thread or process stored it: one copy is enough
            now = time.time_ns()
            with self._lock:
                # Evictions unlink under this lock: present now, present once indexed.
                if os.path.lexists(path):
                    self._index_put(digest, size, now, stored, existing)
                    break
        else:
            return False
        self._maybe_rescan(now)
        self._enforce_capacity()
        return True

    def _store_failed(self, exc: OSError) -> None:
        """Count a failed put; a full disk is also logged (at most once a minute, with
        the count since): reads go on, served from the network."""
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        now = time.monotonic()
        with self._lock:
            self._store_errors += 1
            if not full:
                return
            self._no_space += 1
            if self._no_space_logged and now - self._no_space_log_at < _NO_SPACE_LOG_INTERVAL:
                return
            count = self._no_space - self._no_space_logged
            self._no_space_logged = self._no_space
            self._no_space_log_at = now
        log.warning(
            "chunk cache full, chunks are served without being cached dir=%s "
            "failed_puts=%d error=%r",
            self.directory,
            count,
            exc.strerror,
        )

    def _index_put(
        self, digest: bytes, size: int, now: int, stored: bool, existing: os.stat_result | None
    ) -> None:
        """Record a present entry (the caller holds the lock)."""
        if stored:
            self._stores += 1
        entry = self._index.pop(digest, None)
        if entry is not None:
            self._bytes -= entry.size
        if stored:
            touched = now
        elif entry is not None:
            touched = entry.touched
        else:
            touched = existing.st_mtime_ns if existing is not None else now
        self._index[digest] = _Entry(size, now, touched)
        self._bytes += size

    def _write_entry(self, path: Path, data: bytes | memoryview) -> None:
        """Write to a temporary file next to the entry, then rename it into place."""
        try:
            fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # -- eviction -------------------------------------------------------------------------

    def _enforce_capacity(self) -> None:
        """Evict least-recently-used entries until the index fits ``capacity``.

        Victims are taken off the index under the lock, one at a time, and deleted
        outside it, so concurrent callers pick different victims and never overshoot.
        A victim whose mtime is newer than what we know was used by another process: it
        is spared (once per entry per pass, so the loop ends even if others keep
        touching everything).
        """
        if self.capacity == 0:
            return
        spared: set[bytes] = set()
        while True:
            with self._lock:
                if self._bytes <= self.capacity or not self._index:
                    return
                digest, entry = self._index.popitem(last=False)
                self._bytes -= entry.size
            path = self.path(digest)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # already gone: another process evicted it
            except OSError:
                st = None
            if st is not None and st.st_mtime_ns > entry.recency and digest not in spared:
                spared.add(digest)
                with self._lock:
                    if digest not in self._index:
                        self._index[digest] = _Entry(st.st_size, st.st_mtime_ns, st.st_mtime_ns)
                        self._bytes += st.st_size
                continue
            with self._lock:
                if digest in self._index:
                    continue  # stored or hit again by another thread meanwhile: keep it
                try:
                    path.unlink()
                except OSError:
                    continue  # gone already, or not ours to delete (a planted directory)
                self._evictions += 1

    # -- scanning -------------------------------------------------------------------------

    def _maybe_rescan(self, now: int) -> None:
        if self._rescan_interval_ns is None:
            return
        with self._lock:
            if self._rescanning or now - self._last_scan < self._rescan_interval_ns:
                return
            self._rescanning = True
        try:
            self.refresh()
        finally:
            with self._lock:
                self._rescanning = False

    def refresh(self) -> None:
        """Rescan the directory: learn other processes' entries and forget vanished ones,
        remove stale temporary files, then enforce capacity over the whole cache."""
        started = time.time_ns()
        found = self._scan(started)
        with self._lock:
            merged: list[tuple[bytes, _Entry]] = []
            for digest, (size, mtime) in found.items():
                old = self._index.get(digest)
                if old is None:
                    merged.append((digest, _Entry(size, mtime, mtime)))
                else:
                    merged.append((digest, _Entry(size, max(old.recency, mtime), old.touched)))
            # Entries used while we scanned may have been missed by the scan: keep them.
            merged.extend(
                (digest, entry)
                for digest, entry in self._index.items()
                if digest not in found and entry.recency >= started
            )
            merged.sort(key=lambda item: item[1].recency)
            self._index = OrderedDict(merged)
            self._bytes = sum(entry.size for _, entry in merged)
            self._last_scan = started
        self._enforce_capacity()

    def _scan(self, now: int) -> dict[bytes, tuple[int, int]]:
        """Every entry on disk as digest -> (size, mtime ns); stale temp files removed."""
        found: dict[bytes, tuple[int, int]] = {}
        try:
            with os.scandir(self.directory) as listing:  # closed even if listing fails
                buckets = list(listing)
        except FileNotFoundError:
            return found
        for bucket in buckets:
            if len(bucket.name) != 2 or not _is_hex(bucket.name):
                continue
            try:
                if not bucket.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(bucket.path) as listing:
                    names = list(listing)
            except OSError:
                continue
            for item in names:
                try:
                    st = item.stat(follow_symlinks=False)
                except OSError:
                    continue  # vanished while we looked
                if item.name.startswith(TEMP_PREFIX):
                    if now - st.st_mtime_ns > self._stale_temp_age_ns:
                        # Left by a dead process (a live writer renames within seconds).
                        with contextlib.suppress(OSError):
                            os.unlink(item.path)
                    continue
                if (
                    len(item.name) == 2 * DIGEST_SIZE
                    and item.name.startswith(bucket.name)
                    and _is_hex(item.name)
                    and stat.S_ISREG(st.st_mode)
                ):
                    found[bytes.fromhex(item.name)] = (st.st_size, st.st_mtime_ns)
        return found


def _is_hex(name: str) -> bool:
    return _HEX.issuperset(name)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _read_limited(fd: int, limit: int, expected: int) -> bytes | None:
    """All bytes of ``fd``, or None if there are more than ``limit``.

    ``expected`` (the size ``fstat`` saw) sizes the first read, so a whole entry is one
    ``read`` into a buffer of its own size; the file may still have changed since, so
    reading goes on to the end of the file in any case."""
    parts: list[bytes] = []
    total = 0
    while True:
        want = expected - total if total < expected else 1 << 16
        part = os.read(fd, min(want, limit + 1 - total))
        if not part:
            return b"".join(parts)
        parts.append(part)
        total += len(part)
        if total > limit:
            return None
