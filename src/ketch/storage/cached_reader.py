"""A ChunkSource with the node-wide chunk cache in front of a ChunkReader.

The FUSE daemon reads through this from many worker threads at once. For one
``read(blob, chunks)``:

1. each distinct digest is *claimed*: the first thread to want a digest becomes its
   leader; threads that want it while the leader works *join* its flight and wait for
   its result (single-flight), so 32 readers of one cold chunk cost one backend read;
2. the leader serves its claims from the cache where it can (the cache verifies);
3. the rest are fetched in blob order, adjacent chunks merged into one range read
   (``range_plan.merge_ranges``, the same rule ``ChunkReader`` uses), with the *miss
   extension* (``range_plan.miss_extension``: the uncached chunks that follow a missed
   one in the blob), decompressed and verified;
4. waiters are released with the bytes, the cache is filled, and only then is the
   flight forgotten, so a thread arriving later finds the chunk in the cache rather
   than fetching it again.

A failed fetch hands its error to every waiter of the chunks it covered and is not
remembered: the next read tries again. An integrity error is specific to its chunk: the
chunk reader narrows a merged range that fails its check (``ChunkReader.read_each``: the
chunks that verified are served, each bad one is read once more alone, from the next
source where there are mirrors), so only the flight of a chunk that failed twice fails,
and the other chunks of its range and the other merged runs are still served. A chunk
brought by a miss extension has no flight (nobody asked for it): a bad one is dropped, a
good one goes to the memory tier and the cache. Any other error (blob not found, backend
down) concerns the whole blob and ends the read. Nothing here raises past ``read``
except the errors of the flights it waits on.

Deadlock freedom: a thread resolves every flight it leads before it waits on anyone
else's, and a leader never waits, so no cycle of waiting threads can form. (Reading a
bad chunk again is part of the leader's own fetch: it waits on the store, never on a
flight.)

Memory: nothing is kept after ``read`` returns; a flight holds its bytes only until its
waiters have them and the cache has them.

Sequential prefetch: ``prefetch(blob, chunks)`` claims flights for chunks a reader is
about to want (the filesystem view calls it for the rest of a file read sequentially)
and resolves them on a few worker threads: cache files are read and verified, or missing
chunks fetched, decompressed and verified, several at once and ahead of the reader, who
then joins the flight or finds the chunk in the memory tier. A prefetch worker is a
leader like any other, so the deadlock argument holds; the bytes of claimed-but-
unfinished prefetches are capped (``prefetch_budget``) and finished ones live in the
memory tier, so memory stays bounded however many files are read at once. A prefetch
that fails hands its error to whoever joined it (as any flight does) and is otherwise
forgotten: a later read retries.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from ketch.errors import IntegrityError
from ketch.format.records import ChunkRecord
from ketch.storage.blobs import BlobRef
from ketch.storage.chunk_cache import ChunkCache
from ketch.storage.chunk_reader import ChunkReader
from ketch.storage.range_plan import merge_ranges, miss_extension, span
from ketch.storage.write_behind import WriteBehind

log = logging.getLogger("ketch.storage")


@dataclass(frozen=True, slots=True)
class ReaderStats:
    """A consistent snapshot of a CachedChunkReader's counters, in distinct chunks per
    read (a chunk named twice in one read counts once)."""

    #: chunks served by the cache
    cache_hits: int
    #: chunks this reader had to fetch from the backend (every one, without a cache)
    cache_misses: int
    #: chunks obtained by waiting on another thread's fetch or cache read
    joined: int
    #: range reads issued to the backend
    fetches: int
    #: bytes those range reads asked for (compressed)
    backend_bytes: int
    #: chunks served from the in-memory tier of recent chunks
    memory_hits: int = 0


class _Flight:
    """One digest being obtained by one leader thread; waiters block on ``done``."""

    __slots__ = ("data", "done", "error", "fetched")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None
        #: the bytes came from the backend (so they belong in the cache)
        self.fetched = False

    def resolve(self, data: bytes, *, fetched: bool = False) -> None:
        self.data = data
        self.fetched = fetched
        self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


class _RecentChunks:
    """The last chunks served, in memory, least recently used dropped first.

    The kernel reads a file in pieces smaller than a chunk (128 KiB for FUSE), so a
    sequential reader asks for the same chunk several times in a row: this keeps those
    asks from re-reading and re-hashing the cache file each time.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._chunks: OrderedDict[bytes, bytes] = OrderedDict()
        self._bytes = 0

    def __contains__(self, digest: bytes) -> bool:
        with self._lock:
            return digest in self._chunks

    def get(self, digest: bytes) -> bytes | None:
        with self._lock:
            data = self._chunks.get(digest)
            if data is not None:
                self._chunks.move_to_end(digest)
            return data

    def put(self, digest: bytes, data: bytes) -> None:
        if len(data) > self.capacity:
            return
        with self._lock:
            if digest in self._chunks:
                self._chunks.move_to_end(digest)
                return
            self._chunks[digest] = data
            self._bytes += len(data)
            while self._bytes > self.capacity:
                _, dropped = self._chunks.popitem(last=False)
                self._bytes -= len(dropped)


DEFAULT_MEMORY = 64 << 20
#: bytes handed to the background cache writer and not yet written, at most
_WRITE_BEHIND_BYTES = 64 << 20
#: worker threads resolving prefetched chunks (cache file reads overlap on disk; zstd and
#: blake3 release the GIL, so decompressing and hashing use every core)
DEFAULT_PREFETCH_THREADS = 4
#: uncompressed bytes of prefetched chunks claimed and not yet finished, at most
DEFAULT_PREFETCH_BUDGET = 32 << 20
#: compressed bytes of adjacent missing chunks one prefetch range read may merge: large
#: enough to keep requests few on a slow link, small enough that several chunks are
#: decompressed in parallel
_PREFETCH_MERGE = 1 << 20
_WORKER_IDLE = 10.0  # seconds a prefetch worker waits for work before it ends


class CachedChunkReader:
    """``ChunkSource`` over ``reader``, with ``cache`` (or none) and single-flight fetches."""

    def __init__(
        self,
        reader: ChunkReader,
        cache: ChunkCache | None,
        *,
        memory: int = DEFAULT_MEMORY,
        write_behind: bool = False,
        miss_extension: int = 0,
        prefetch_threads: int = DEFAULT_PREFETCH_THREADS,
        prefetch_budget: int = DEFAULT_PREFETCH_BUDGET,
    ) -> None:
        """``write_behind``: fill the cache from a background thread, so that a reader
        gets its bytes without waiting for the cache file to be written (the daemon).

        ``miss_extension``: on a miss, also fetch the chunks that follow it in the blob
        (``BlobRef.chunks``), up to this many bytes, in the same range read. Blobs are
        laid out in tree order, so they are mostly the files a program opens next (its
        other modules, the rest of a directory): one request instead of many small ones
        on a slow link.

        ``prefetch_threads``: workers for ``prefetch`` (0: ``prefetch`` does nothing;
        so it does without a memory tier, where prefetched chunks would be dropped)."""
        if cache is not None and cache.algo != reader.algo:
            raise ValueError(
                f"chunk cache: expected digest algorithm {reader.algo.label}, "
                f"found {cache.algo.label}"
            )
        self.reader = reader
        self.cache = cache
        self._lock = threading.Lock()
        self._flights: dict[bytes, _Flight] = {}
        self._cache_hits = 0
        self._cache_misses = 0
        self._joined = 0
        self._fetches = 0
        self._backend_bytes = 0
        self._memory_hits = 0
        self._recent = _RecentChunks(memory)
        self._miss_extension = miss_extension
        self._writes: WriteBehind | None = None
        if write_behind and cache is not None:
            self._writes = WriteBehind(cache.put, _WRITE_BEHIND_BYTES)
        # Prefetched chunks are kept in the memory tier: without one, no prefetch.
        self._prefetch_threads = prefetch_threads if memory > 0 else 0
        self._prefetch_budget = min(prefetch_budget, memory // 2)
        self._prefetch_bytes = 0  # claimed by prefetch, not yet finished (under _lock)
        self._prefetches: queue.SimpleQueue[_Prefetch] = queue.SimpleQueue()
        self._workers = 0  # prefetch worker threads alive (under _lock)

    def _store(self, digest: bytes, data: bytes) -> None:
        if self.cache is None:
            return
        if self._writes is not None and self._writes.offer(digest, data):
            return
        # No background writer, or it is behind: this reader writes, which slows new
        # fetches down to the pace of the disk.
        self.cache.put(digest, data)

    def flush(self) -> None:
        """Wait until every prefetch has finished and every chunk handed to the
        background writer is in the cache."""
        while True:
            with self._lock:
                prefetching = self._prefetch_bytes > 0
            if not prefetching and (self._writes is None or not self._writes.pending_bytes):
                return
            time.sleep(0.01)

    # -- prefetch -------------------------------------------------------------------------

    def prefetch(self, blob: BlobRef, chunks: Sequence[ChunkRecord]) -> None:
        """Start obtaining ``chunks`` (all in ``blob``) in the background, in order; never
        blocks. Chunks already in memory or in flight are skipped, and what does not fit
        the prefetch budget is left for the reader to fetch itself."""
        if not self._prefetch_threads:
            return
        candidates = [chunk for chunk in chunks if chunk.digest not in self._recent]
        if not candidates:
            return
        claimed: dict[bytes, _Flight] = {}
        order: list[ChunkRecord] = []
        with self._lock:
            for chunk in candidates:
                digest = chunk.digest
                if digest in claimed or digest in self._flights:
                    continue
                if self._prefetch_bytes + chunk.uncompressed_size > self._prefetch_budget:
                    break
                self._prefetch_bytes += chunk.uncompressed_size
                claimed[digest] = self._flights[digest] = _Flight()
                order.append(chunk)
            if not order:
                return
            # A chunk probably in the cache is one task (cache files are read in
            # parallel); the others are fetched in small merged range reads.
            cached = self.cache.probably_has if self.cache is not None else None
            missing: list[ChunkRecord] = []
            local: list[bytes] = []
            for chunk in order:
                if cached is not None and cached(chunk.digest):
                    self._prefetches.put(_Prefetch(blob, [chunk], claimed))
                    local.append(chunk.digest)
                else:
                    missing.append(chunk)
            missing.sort(key=lambda chunk: chunk.compressed_offset)
            for group in merge_ranges(missing, _PREFETCH_MERGE):
                self._prefetches.put(_Prefetch(blob, group, claimed))
            # Under the lock, with the tasks queued: a worker leaves only when it finds
            # the queue empty under this lock, so queued work always has workers.
            while self._workers < self._prefetch_threads:
                self._workers += 1
                threading.Thread(target=self._prefetch_worker, name="prefetch", daemon=True).start()
        if local and self.cache is not None:
            self.cache.advise(local)  # the disk reads them all at once, ahead of the workers

    def read_from_memory(self, blob: BlobRef, chunks: Sequence[ChunkRecord]) -> list[bytes] | None:
        """The bytes of ``chunks`` if every one is in the memory tier (verified when it
        was obtained), else None: no I/O, no hashing, never blocks on another thread."""
        found: list[bytes] = []
        for chunk in chunks:
            data = self._recent.get(chunk.digest)
            if data is None:
                return None
            found.append(data)
        with self._lock:
            self._memory_hits += len({chunk.digest for chunk in chunks})
        return found

    def _prefetch_worker(self) -> None:
        while True:
            try:
                task = self._prefetches.get(timeout=_WORKER_IDLE)
            except queue.Empty:
                with self._lock:
                    if self._prefetches.empty():
                        self._workers -= 1
                        return  # idle: the next prefetch starts workers again
                continue
            flights = {chunk.digest: task.flights[chunk.digest] for chunk in task.chunks}
            try:
                self._lead(task.blob, task.chunks, flights)
            except Exception as exc:
                # The flights carry the error to anyone who joined them.
                log.debug("prefetch failed blob=%s error=%r", task.blob.digest, exc)
            finally:
                try:
                    self._land(flights)
                finally:
                    with self._lock:
                        self._prefetch_bytes -= sum(
                            chunk.uncompressed_size for chunk in task.chunks
                        )

    # -- counters -------------------------------------------------------------------------

    def stats(self) -> ReaderStats:
        with self._lock:
            return ReaderStats(
                self._cache_hits,
                self._cache_misses,
                self._joined,
                self._fetches,
                self._backend_bytes,
                self._memory_hits,
            )

    @property
    def cache_hits(self) -> int:
        return self.stats().cache_hits

    @property
    def memory_hits(self) -> int:
        with self._lock:
            return self._memory_hits

    @property
    def cache_misses(self) -> int:
        return self.stats().cache_misses

    @property
    def fetches(self) -> int:
        return self.stats().fetches

    @property
    def backend_bytes(self) -> int:
        return self.stats().backend_bytes

    # -- the read path --------------------------------------------------------------------

    def read(
        self, blob: BlobRef, chunks: Sequence[ChunkRecord], *, extend: bool = True
    ) -> list[bytes]:
        """The verified bytes of ``chunks`` (all in ``blob``), in the order given.
        ``extend=False``: fetch exactly these, no miss extension (a planned read)."""
        found: dict[bytes, bytes] = {}
        wanted: dict[bytes, ChunkRecord] = {}
        for chunk in chunks:
            if chunk.digest in found or chunk.digest in wanted:
                continue
            recent = self._recent.get(chunk.digest)
            if recent is None:
                wanted[chunk.digest] = chunk
            else:
                found[chunk.digest] = recent
        if found:
            with self._lock:
                self._memory_hits += len(found)
        if not wanted:
            return [found[chunk.digest] for chunk in chunks]
        led: dict[bytes, _Flight] = {}
        joined: dict[bytes, _Flight] = {}
        with self._lock:
            for digest in wanted:
                flight = self._flights.get(digest)
                if flight is None:
                    flight = led[digest] = self._flights[digest] = _Flight()
                else:
                    joined[digest] = flight
            self._joined += len(joined)
        try:
            self._lead(blob, [wanted[digest] for digest in led], led, extend=extend)
        finally:
            self._land(led)
        for digest, flight in led.items():
            found[digest] = _outcome(flight)
        for digest, flight in joined.items():
            flight.done.wait()
            found[digest] = _outcome(flight)
        for digest in wanted:
            self._recent.put(digest, found[digest])
        return [found[chunk.digest] for chunk in chunks]

    def _lead(
        self,
        blob: BlobRef,
        chunks: list[ChunkRecord],
        flights: dict[bytes, _Flight],
        *,
        extend: bool = True,
    ) -> None:
        """Resolve or fail every flight in ``flights``; raises nothing of its own except
        through the flights (their errors are re-raised by ``read``)."""
        missing: list[ChunkRecord] = []
        hits = 0
        try:
            for chunk in chunks:
                data = self.cache.get(chunk.digest) if self.cache is not None else None
                if data is None:
                    missing.append(chunk)
                else:
                    hits += 1
                    flights[chunk.digest].resolve(data)
            with self._lock:
                self._cache_hits += hits
                self._cache_misses += len(missing)
            # Blob order, so chunks adjacent in the blob merge whatever the file order.
            missing.sort(key=lambda chunk: chunk.compressed_offset)
            if missing and self._miss_extension and extend:
                missing = miss_extension(blob, missing, self._miss_extension, self._known)
            for group in merge_ranges(missing, self.reader.max_merge):
                if self._fetch(blob, group, flights):
                    continue
                return  # the whole blob failed: _land fails the rest
        except BaseException as exc:
            _fail_unresolved(flights, exc)
            raise

    def _fetch(
        self, blob: BlobRef, group: list[ChunkRecord], flights: dict[bytes, _Flight]
    ) -> bool:
        """One merged range read; False if its error concerns the whole blob."""
        with self._lock:
            self._fetches += 1
            self._backend_bytes += span(group)
        try:
            results = self.reader.read_each(blob, group)
        except BaseException as exc:
            _fail_unresolved(flights, exc)
            return False
        for chunk, result in zip(group, results, strict=True):
            # Only flights this thread leads are in ``flights``: a chunk of the miss
            # extension has none (nobody waits for it yet), and one named twice in the
            # range is resolved by its first appearance.
            flight = flights.get(chunk.digest)
            if flight is not None and flight.done.is_set():
                continue
            if isinstance(result, IntegrityError):
                if flight is not None:
                    flight.fail(result)  # this chunk alone: the rest of the range is served
            elif flight is not None:
                flight.resolve(result, fetched=True)
            else:
                self._recent.put(chunk.digest, result)
                self._store(chunk.digest, result)
        return True

    def _known(self, chunk: ChunkRecord) -> bool:
        """``chunk`` is being fetched (prefetched, say), in memory, or probably cached:
        where a miss extension stops, as the chunks after it are likely there too."""
        with self._lock:
            if chunk.digest in self._flights:
                return True
        if self._recent.get(chunk.digest) is not None:
            return True
        return self.cache is not None and self.cache.probably_has(chunk.digest)

    def _land(self, flights: dict[bytes, _Flight]) -> None:
        """Fill the cache with what was fetched, then forget the flights.

        Waiters already have their bytes (``resolve`` released them); new arrivals keep
        joining the finished flight until it is forgotten, and after that find the
        chunk in the cache. A flight that was never resolved (a bug, or an interrupt)
        is failed here so that no waiter can hang.
        """
        _fail_unresolved(flights, RuntimeError("chunk fetch ended without a result"))
        try:
            for digest, flight in flights.items():
                if flight.data is not None:
                    # Before the flight is forgotten: a new arrival finds it in memory.
                    self._recent.put(digest, flight.data)
            if self.cache is not None:
                for digest, flight in flights.items():
                    if flight.fetched and flight.data is not None:
                        self._store(digest, flight.data)
        finally:
            with self._lock:
                for digest in flights:
                    self._flights.pop(digest, None)


@dataclass(frozen=True, slots=True)
class _Prefetch:
    """Chunks of one blob a prefetch worker resolves, with the flights claimed for them
    (shared by the tasks of one ``prefetch`` call; each task resolves its own)."""

    blob: BlobRef
    chunks: list[ChunkRecord]
    flights: dict[bytes, _Flight]


def _fail_unresolved(flights: dict[bytes, _Flight], error: BaseException) -> None:
    for flight in flights.values():
        if not flight.done.is_set():
            flight.fail(error)


def _outcome(flight: _Flight) -> bytes:
    if flight.error is not None:
        _rethrow(flight.error)
    if flight.data is None:  # resolve() always sets data; guards the invariant for mypy
        raise RuntimeError("chunk flight finished without data or error")
    return flight.data


def _rethrow(error: BaseException) -> NoReturn:
    """Raise a flight's error in this thread.

    Each waiter raises its own copy (same type and message, so the FUSE adapter maps it
    to the same errno), chained to the original: one exception object raised in many
    threads at once would have their tracebacks spliced together.
    """
    try:
        clone = copy.copy(error)
    except Exception:
        raise error from None
    raise clone.with_traceback(None) from error
