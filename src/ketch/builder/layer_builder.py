"""Turn one layer's entries into tree changes and one data blob.

Chunks are hashed and compressed on a thread pool (blake3, zstd and lz4 release the GIL),
in bounded flight; dedup decisions are taken in order on the calling thread. New chunks
are spooled in arrival order by a writer thread, then the blob is laid out in tree order,
so its bytes do not depend on tar order: files in path order (depth-first, names sorted),
a hardlinked file at the first of its names in this layer (whichever name the tar gave
the data), and each chunk where the first file in that order uses it (whichever file
brought it first). When arrival order already is tree order (umoci and Docker write
layers that way) the spool becomes the blob as is. Sealing (any rewrite in tree order,
table, trailer, sha256) runs on the writer thread too, while the calling thread goes on
with the next layer: the calling thread is the convert's bottleneck, so it only decides,
and never writes or hashes.

Holes (``ZeroRun`` from a sparse tar entry or a sparse local file) reach the fixed
chunker unread, and its whole chunks of zeros come back as one ``ZeroChunks`` marker per
run: the zero chunk of a size is hashed and compressed once per layer, stored once per
blob like any duplicate, and a run of them costs the file its chunk references only. As
a map of a few bytes may describe petabytes of holes, the holes of all of a build's
layers (``HoleBudget``) may make at most ``MAX_HOLE_CHUNKS`` chunk references (4 TiB of
holes at 1 MiB chunks): per layer, a many-layer image could still ask for any amount.
The content-defined chunker reads holes as zeros, so with it a build's holes may hold at
most ``MAX_CDC_HOLE_BYTES``.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

from ketch.builder.chunk_index import ChunkIndex, ChunkLocation
from ketch.builder.chunker import Chunk, Chunker, FixedChunker, ZeroChunks
from ketch.builder.tree import LayerChanges, Node, TreePath
from ketch.errors import BadLayerError
from ketch.format.blob import BlobWriter, pack_table
from ketch.format.codecs import Codec, CodecId
from ketch.format.digests import DigestAlgorithm
from ketch.oci.tar_layer import EntryKind, LayerEntry
from ketch.oci.tar_sparse import Piece, ZeroRun

# A file's data: call with a block size, get its bytes in blocks (holes as ``ZeroRun``).
DataSource = Callable[[int], Iterable[Piece]]
#: chunk references the holes of one build's layers may make: each costs 12 bytes of
#: bootstrap and about 250 bytes of memory while building; 2^22 is 4 TiB of holes at
#: 1 MiB chunks, a 48 MiB bootstrap built in 19 s and 1.1 GB
MAX_HOLE_CHUNKS = 1 << 22
#: bytes of holes one build's layers may have when FastCDC reads them as zeros
MAX_CDC_HOLE_BYTES = 64 << 30
_IN_FLIGHT_BYTES = 64 << 20
_WRITE_BACKLOG_BYTES = 32 << 20  # stored bytes handed to the writer thread, not written yet
_BATCH_BYTES = 1 << 20
_BATCH_CHUNKS = 64
# (digest, (stored bytes, codec) unless the chunk was already known, uncompressed size,
# how many such chunks in a row)
_Processed = tuple[bytes, tuple[bytes | memoryview, int] | None, int, int]
_READ_BLOCK = 1 << 20
_NO_DATA = (EntryKind.WHITEOUT, EntryKind.OPAQUE, EntryKind.HARDLINK)


@dataclass(slots=True)
class LayerBlob:
    digest: str
    size: int
    chunk_count: int
    path: Path  # the sealed blob, in the scratch directory, to be pushed


@dataclass(slots=True)
class LayerResult:
    changes: LayerChanges
    blob: Future[LayerBlob] | None  # sealed on the writer thread; None: no new chunk
    file_bytes: int
    chunks_seen: int
    chunks_stored: int


class _Spool:
    """A layer's new chunks in arrival order, in a scratch file that only the writer
    thread touches once it is made; the calling thread queues work on it in order."""

    def __init__(self, scratch: Path, algo: DigestAlgorithm, writer: ThreadPoolExecutor) -> None:
        fd, name = tempfile.mkstemp(prefix=".tmp-spool-", dir=scratch)
        self.path = Path(name)
        self.blob = BlobWriter(fd, algo)
        self._writer = writer
        self._backlog: deque[tuple[Future[None], int]] = deque()
        self._backlog_bytes = 0
        self.error: BaseException | None = None  # the first failed write, for the seal

    def write(self, parts: list[bytes | memoryview], nbytes: int) -> None:
        self._backlog.append((self._writer.submit(self._write, parts), nbytes))
        self._backlog_bytes += nbytes
        while self._backlog_bytes > _WRITE_BACKLOG_BYTES:
            future, done = self._backlog.popleft()
            self._backlog_bytes -= done
            future.result()  # bounded memory; a write error surfaces here

    def _write(self, parts: list[bytes | memoryview]) -> None:
        if self.error is not None:
            return
        try:
            self.blob.write(parts)
        except BaseException as exc:
            self.error = exc
            raise

    def stop_hashing(self) -> None:
        """Arrival order will not be the blob's: hashing the spool is wasted work."""
        self._writer.submit(self.blob.stop_hashing)

    def close(self) -> None:
        """Writer thread: drop the scratch file (after any writes queued before)."""
        os.close(self.blob.fd)
        self.path.unlink(missing_ok=True)

    def abandon(self) -> None:
        for future, _ in self._backlog:
            future.cancel()
        self._writer.submit(self.close)


class HoleBudget:
    """What the holes of a build's layers have cost so far, and the most they may:
    chunk references with the fixed chunker, bytes with FastCDC (which reads them)."""

    def __init__(self, chunker: Chunker) -> None:
        if isinstance(chunker, FixedChunker):
            self.limit, self.unit = MAX_HOLE_CHUNKS, chunker.chunk_size
        else:
            self.limit, self.unit = MAX_CDC_HOLE_BYTES, 1
        self.spent = 0


class LayerBuilder:
    def __init__(
        self,
        *,
        scratch: Path,
        chunker: Chunker,
        codec: Codec,
        algo: DigestAlgorithm,
        index: ChunkIndex,
        pool: ThreadPoolExecutor,
        writer: ThreadPoolExecutor,
        on_bytes: Callable[[int], None] = lambda _: None,
        holes: HoleBudget | None = None,
    ) -> None:
        self._scratch = scratch
        self._chunker = chunker
        self._codec = codec
        self._algo = algo
        self._index = index
        self._pool = pool
        self._writer = writer  # one thread: spool writes and seals, in submission order
        self._on_bytes = on_bytes
        # by size: the zero chunk's digest and stored form, made once (any thread may
        # make it first; each makes the same)
        self._zero_chunks: dict[int, tuple[bytes, tuple[bytes | memoryview, int]]] = {}
        self._hole_budget = holes if holes is not None else HoleBudget(chunker)

    def _process_batch(self, chunks: list[Chunk]) -> list[_Processed]:
        return [self._hash_and_compress(chunk) for chunk in chunks]

    def _hash_and_compress(self, data: Chunk) -> _Processed:
        """Digest, then (stored bytes, codec) unless the chunk is already known."""
        if isinstance(data, ZeroChunks):
            zero = self._zero_chunks.get(data.size)
            if zero is None:
                digest, stored, _, _ = self._hash_and_compress(bytes(data.size))
                if stored is None:  # known already: stored anyway, once, it is small
                    stored = self._compress(bytes(data.size))
                zero = self._zero_chunks[data.size] = (digest, stored)
            return zero[0], zero[1], data.size, data.count
        digest = self._algo.digest(data)
        if digest in self._index:
            return digest, None, len(data), 1
        return digest, self._compress(data), len(data), 1

    def _compress(self, data: bytes | memoryview) -> tuple[bytes | memoryview, int]:
        compressed = self._codec.compress(data)
        if len(compressed) >= len(data):
            # Incompressible: stored as is, which also spares every reader a decompression.
            return data, CodecId.NONE
        return compressed, self._codec.codec_id

    def _holes(self, name: str, entry: LayerEntry, pieces: Iterable[Piece]) -> Iterator[Piece]:
        """``pieces``, with their holes charged to the build's budget."""
        budget = self._hole_budget
        unit, limit = budget.unit, budget.limit
        for piece in pieces:
            if isinstance(piece, ZeroRun):
                budget.spent += -(-piece.size // unit)
                if budget.spent > limit:
                    what = "chunk references" if unit > 1 else "bytes"
                    raise BadLayerError(
                        f"layer {name}: {entry.display}: a file of {entry.size} bytes with "
                        f"holes: the image's holes would make over {limit} {what}, the most "
                        f"Ketch takes"
                    )
            yield piece

    def build(
        self,
        name: str,
        entries: Iterator[tuple[LayerEntry, DataSource | None]],
        apply: Callable[[LayerChanges], dict[TreePath, Node]],
    ) -> LayerResult:
        """The layer's changes, applied with ``apply`` (which gives the node each hardlink
        names); its blob once the writer thread has sealed it."""
        spool = _Spool(self._scratch, self._algo, self._writer)
        try:
            return self._build(name, entries, apply, spool)
        except BaseException:
            spool.abandon()
            raise

    def _build(
        self,
        name: str,
        entries: Iterator[tuple[LayerEntry, DataSource | None]],
        apply: Callable[[LayerChanges], dict[TreePath, Node]],
        spool: _Spool,
    ) -> LayerResult:
        changes = LayerChanges(name)
        index = self._index.chunks
        new: dict[bytes, ChunkLocation] = {}  # in arrival order
        # Chunks go to the pool in batches: one task per small file's chunk would cost
        # the main thread more in task handling than the hashing costs the worker.
        inflight: deque[tuple[list[Node], Future[list[_Processed]], int]] = deque()
        batch_nodes: list[Node] = []
        batch_chunks: list[Chunk] = []
        batch_bytes = 0  # held in memory: a run of zero chunks holds none
        inflight_bytes = 0
        file_bytes = 0
        progress = 0  # bytes not yet reported
        seen = 0
        spooled = 0  # bytes placed in the spool
        last_path: tuple[bytes, ...] | None = ()  # None once files came out of tree order

        def flush() -> None:
            nonlocal batch_nodes, batch_chunks, batch_bytes
            if batch_chunks:
                future = self._pool.submit(self._process_batch, batch_chunks)
                inflight.append((batch_nodes, future, batch_bytes))
                batch_nodes, batch_chunks, batch_bytes = [], [], 0

        def settle() -> None:
            nonlocal inflight_bytes, seen, spooled
            nodes, future, held = inflight.popleft()
            results = future.result()
            inflight_bytes -= held
            parts: list[bytes | memoryview] = []
            start = spooled
            for node, (digest, compressed, size, count) in zip(nodes, results, strict=True):
                seen += count
                if count == 1:
                    node.chunks.append((digest, size))
                else:
                    node.chunks.extend(repeat((digest, size), count))
                if digest in index:
                    continue
                if compressed is None:  # cannot happen: the index only grows
                    raise BadLayerError(f"layer {name}: chunk {digest.hex()} lost its data")
                stored, codec_id = compressed
                location = ChunkLocation(None, spooled, len(stored), size, codec_id)
                index[digest] = location
                new[digest] = location
                parts.append(stored)
                spooled += len(stored)
            if parts:
                spool.write(parts, spooled - start)

        try:
            for entry, data in entries:
                kind = entry.kind
                if kind is not EntryKind.FILE or data is None:
                    changes.add(entry, None if kind in _NO_DATA else Node.from_entry(entry))
                    continue
                if last_path is not None:
                    if entry.path > last_path:
                        last_path = entry.path
                    else:
                        last_path = None
                        spool.stop_hashing()
                node = Node.from_entry(entry)
                pieces = self._holes(name, entry, data(_READ_BLOCK))
                for chunk in self._chunker.chunkify(pieces):
                    batch_nodes.append(node)
                    batch_chunks.append(chunk)
                    if isinstance(chunk, ZeroChunks):
                        size = chunk.size * chunk.count
                    else:
                        size = len(chunk)
                        batch_bytes += size
                        inflight_bytes += size
                    file_bytes += size
                    progress += size
                    if batch_bytes >= _BATCH_BYTES or len(batch_chunks) >= _BATCH_CHUNKS:
                        flush()
                        self._on_bytes(progress)
                        progress = 0
                    while inflight_bytes > _IN_FLIGHT_BYTES and inflight:
                        settle()
                changes.add(entry, node)
            flush()
            self._on_bytes(progress)
            while inflight:
                settle()
        finally:
            for _, future, _ in inflight:
                future.cancel()
        links = apply(changes)
        blob = self._seal(changes, links, spool, new)
        return LayerResult(changes, blob, file_bytes, seen, len(new))

    def _seal(
        self,
        changes: LayerChanges,
        links: dict[TreePath, Node],
        spool: _Spool,
        new: dict[bytes, ChunkLocation],
    ) -> Future[LayerBlob] | None:
        """Decide the blob's layout here; have the writer thread write and seal it."""
        if not new:
            spool.abandon()
            return None
        order: list[bytes] = []
        placed: set[bytes] = set()
        for node in _files_in_tree_order(changes, links):
            for chunk_digest, _ in node.chunks:
                if chunk_digest in new and chunk_digest not in placed:
                    placed.add(chunk_digest)
                    order.append(chunk_digest)
        # Chunks only of entries a later entry of the same path replaced: by digest.
        order.extend(sorted(d for d in new if d not in placed))
        ranges: list[tuple[int, int]] | None = None
        if order != list(new):
            # Tree order differs: the spool's ranges in that order, adjacent ones merged,
            # and every chunk's offset in the blob.
            ranges = []
            position = 0
            for chunk_digest in order:
                location = new[chunk_digest]
                if ranges and ranges[-1][0] + ranges[-1][1] == location.offset:
                    ranges[-1] = (ranges[-1][0], ranges[-1][1] + location.compressed_size)
                else:
                    ranges.append((location.offset, location.compressed_size))
                location.offset = position
                position += location.compressed_size
        rows = []
        for chunk_digest in order:
            location = new[chunk_digest]
            rows.append(
                (
                    chunk_digest,
                    location.offset,
                    location.compressed_size,
                    location.uncompressed_size,
                    location.codec,
                )
            )
        locations = list(new.values())
        return self._writer.submit(self._write_blob, spool, ranges, rows, locations)

    def _write_blob(
        self,
        spool: _Spool,
        ranges: list[tuple[int, int]] | None,
        rows: list[tuple[bytes, int, int, int, int]],
        locations: list[ChunkLocation],
    ) -> LayerBlob:
        """Writer thread: the sealed blob, renamed after its digest; sets every new
        chunk's blob (nothing reads it before the build has waited for this)."""
        try:
            if spool.error is not None:
                raise spool.error
            if ranges is None:
                blob_digest, size = spool.blob.finish(pack_table(rows), len(rows))
                final = spool.path.with_name(".tmp-blob-" + blob_digest[7:])
                os.replace(spool.path, final)
            else:
                fd, out_name = tempfile.mkstemp(prefix=".tmp-blob-", dir=self._scratch)
                try:
                    writer = BlobWriter(fd, self._algo)
                    writer.copy_ranges(spool.blob.fd, ranges)
                    blob_digest, size = writer.finish(pack_table(rows), len(rows))
                    final = Path(out_name).with_name(".tmp-blob-" + blob_digest[7:])
                    os.replace(out_name, final)
                except BaseException:
                    Path(out_name).unlink(missing_ok=True)
                    raise
                finally:
                    os.close(fd)
        finally:
            spool.close()
        for location in locations:
            location.blob = blob_digest
        return LayerBlob(blob_digest, size, len(rows), final)


def _files_in_tree_order(changes: LayerChanges, links: dict[TreePath, Node]) -> list[Node]:
    """The layer's regular files, each at the first of its names in this layer: the
    data entry's path or the path of a hardlink of this layer that names it."""
    first: dict[int, tuple[TreePath, Node]] = {}
    for path, (_, node) in changes.nodes.items():
        if stat.S_ISREG(node.mode):
            first[id(node)] = (path, node)
    for path, node in links.items():
        known = first.get(id(node))
        if known is not None and path < known[0]:
            first[id(node)] = (path, node)
    return [node for _, node in sorted(first.values(), key=lambda item: item[0])]
