"""Turn one layer's entries into tree changes and one data blob.

Chunks are hashed and compressed on a thread pool (blake3, zstd and lz4 release the GIL),
in bounded flight; dedup decisions are taken in order on the calling thread. New chunks
are spooled in arrival order, then the blob is laid out in tree order (depth-first,
names sorted), so its bytes do not depend on tar order. When arrival order already is
tree order (umoci and Docker write layers that way) the spool becomes the blob as is.
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ketch.builder.chunk_index import ChunkIndex, ChunkLocation
from ketch.builder.chunker import Chunker
from ketch.builder.tree import LayerChanges, Node
from ketch.errors import BadLayerError
from ketch.format.blob import BlobWriter
from ketch.format.codecs import Codec, CodecId
from ketch.format.digests import DigestAlgorithm
from ketch.oci.tar_layer import EntryKind, LayerEntry

# A file's data: call with a block size, get its bytes in blocks.
DataSource = Callable[[int], Iterable[bytes | memoryview]]
_IN_FLIGHT_BYTES = 64 << 20
_BATCH_BYTES = 1 << 20
_BATCH_CHUNKS = 64
# (digest, (stored bytes, codec) unless the chunk was already known, uncompressed size)
_Processed = tuple[bytes, tuple[bytes | memoryview, int] | None, int]
_READ_BLOCK = 1 << 20


@dataclass(slots=True)
class LayerBlob:
    digest: str
    size: int
    chunk_count: int
    path: Path  # the sealed blob, in the scratch directory, to be pushed


@dataclass(slots=True)
class LayerResult:
    changes: LayerChanges
    blob: LayerBlob | None
    file_bytes: int
    chunks_seen: int
    chunks_stored: int


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
        on_bytes: Callable[[int], None] = lambda _: None,
    ) -> None:
        self._scratch = scratch
        self._chunker = chunker
        self._codec = codec
        self._algo = algo
        self._index = index
        self._pool = pool
        self._on_bytes = on_bytes

    def _process_batch(self, chunks: list[bytes | memoryview]) -> list[_Processed]:
        return [self._hash_and_compress(chunk) for chunk in chunks]

    def _hash_and_compress(self, data: bytes | memoryview) -> _Processed:
        """Digest, then (stored bytes, codec) unless the chunk is already known."""
        digest = self._algo.digest(data)
        if digest in self._index:
            return digest, None, len(data)
        compressed = self._codec.compress(data)
        if len(compressed) >= len(data):
            # Incompressible: stored as is, which also spares every reader a decompression.
            return digest, (data, CodecId.NONE), len(data)
        return digest, (compressed, self._codec.codec_id), len(data)

    def build(
        self, name: str, entries: Iterator[tuple[LayerEntry, DataSource | None]]
    ) -> LayerResult:
        changes = LayerChanges(name)
        fd, spool_name = tempfile.mkstemp(prefix=".tmp-spool-", dir=self._scratch)
        spool_path = Path(spool_name)
        try:
            with os.fdopen(fd, "w+b") as spool_file:
                return self._build(name, entries, changes, spool_file, spool_path)
        finally:
            spool_path.unlink(missing_ok=True)

    def _build(
        self,
        name: str,
        entries: Iterator[tuple[LayerEntry, DataSource | None]],
        changes: LayerChanges,
        spool_file: IO[bytes],
        spool_path: Path,
    ) -> LayerResult:
        spool = BlobWriter(spool_file, self._algo)
        new: dict[bytes, ChunkLocation] = {}
        arrival: list[bytes] = []
        # Chunks go to the pool in batches: one task per small file's chunk would cost
        # the main thread more in task handling than the hashing costs the worker.
        inflight: deque[tuple[list[Node], Future[list[_Processed]]]] = deque()
        batch_nodes: list[Node] = []
        batch_chunks: list[bytes | memoryview] = []
        batch_bytes = 0
        inflight_bytes = 0
        file_bytes = 0
        progress = 0  # bytes not yet reported
        seen = 0

        def flush() -> None:
            nonlocal batch_nodes, batch_chunks, batch_bytes
            if batch_chunks:
                inflight.append((batch_nodes, self._pool.submit(self._process_batch, batch_chunks)))
                batch_nodes, batch_chunks, batch_bytes = [], [], 0

        def settle() -> None:
            nonlocal inflight_bytes, seen
            nodes, future = inflight.popleft()
            for node, (digest, compressed, size) in zip(nodes, future.result(), strict=True):
                inflight_bytes -= size
                seen += 1
                node.chunks.append((digest, size))
                if digest in self._index:
                    continue
                if compressed is None:  # cannot happen: the index only grows
                    raise BadLayerError(f"layer {name}: chunk {digest.hex()} lost its data")
                stored, codec_id = compressed
                entry = spool.add(digest, stored, size, codec_id)
                location = ChunkLocation(None, entry.compressed_offset, len(stored), size, codec_id)
                self._index.add(digest, location)
                new[digest] = location
                arrival.append(digest)

        try:
            for entry, data in entries:
                if entry.kind is not EntryKind.FILE or data is None:
                    node = None
                    if entry.kind not in (EntryKind.WHITEOUT, EntryKind.OPAQUE, EntryKind.HARDLINK):
                        node = Node.from_entry(entry)
                    changes.add(entry, node)
                    continue
                node = Node.from_entry(entry)
                for chunk in self._chunker.chunkify(data(_READ_BLOCK)):
                    batch_nodes.append(node)
                    batch_chunks.append(chunk)
                    batch_bytes += len(chunk)
                    inflight_bytes += len(chunk)
                    file_bytes += len(chunk)
                    progress += len(chunk)
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
            for _, future in inflight:
                future.cancel()
        blob = self._seal(changes, spool, spool_file, spool_path, new, arrival)
        return LayerResult(changes, blob, file_bytes, seen, len(new))

    def _seal(
        self,
        changes: LayerChanges,
        spool: BlobWriter,
        spool_file: IO[bytes],
        spool_path: Path,
        new: dict[bytes, ChunkLocation],
        arrival: list[bytes],
    ) -> LayerBlob | None:
        if not new:
            return None
        order: list[bytes] = []
        placed: set[bytes] = set()
        for path in changes.file_paths_in_order():
            for chunk_digest, _ in changes.nodes[path][1].chunks:
                if chunk_digest in new and chunk_digest not in placed:
                    placed.add(chunk_digest)
                    order.append(chunk_digest)
        # Chunks only of entries a later entry of the same path replaced: by digest.
        order.extend(sorted(d for d in new if d not in placed))
        spool_file.flush()
        if order == arrival:
            blob_digest, size = spool.finish()
            spool_file.flush()
            final = spool_path.with_name(".tmp-blob-" + blob_digest[7:])
            os.replace(spool_path, final)
        else:
            fd, out_name = tempfile.mkstemp(prefix=".tmp-blob-", dir=self._scratch)
            with os.fdopen(fd, "wb") as out:
                writer = BlobWriter(out, self._algo)
                for chunk_digest in order:
                    location = new[chunk_digest]
                    data = os.pread(spool_file.fileno(), location.compressed_size, location.offset)
                    entry = writer.add(
                        chunk_digest, data, location.uncompressed_size, location.codec
                    )
                    location.offset = entry.compressed_offset
                blob_digest, size = writer.finish()
            final = Path(out_name).with_name(".tmp-blob-" + blob_digest[7:])
            os.replace(out_name, final)
        for location in new.values():
            location.blob = blob_digest
        return LayerBlob(blob_digest, size, len(order), final)
