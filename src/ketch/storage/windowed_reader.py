"""Chunks for readers that walk an image in order (``ketch unpack``): each blob is
fetched in large windows instead of one range read per file.

Blobs are laid out in tree order, and unpack writes in tree order, so consecutive
requests fall in the same window: a few dozen range reads per image instead of one per
file, which is what makes unpack from a registry or S3 fast. Every chunk is still
verified, by the same code as the lazy read path, before it is returned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ketch.errors import IntegrityError
from ketch.format.digests import DigestAlgorithm
from ketch.format.records import ChunkRecord
from ketch.storage.chunk_reader import ChunkReader
from ketch.storage.store import ImageStore

DEFAULT_WINDOW = 16 << 20


class WindowedChunkReader:
    """A ``ChunkSource`` keeping one window of raw bytes per blob (bounded memory)."""

    def __init__(
        self,
        store: ImageStore,
        algo: DigestAlgorithm,
        blob_sizes: Mapping[str, int],
        *,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self._verifier = ChunkReader(store, algo)
        self._store = store
        self._sizes = dict(blob_sizes)
        self._window = window
        self._windows: dict[str, tuple[int, bytes]] = {}
        self.backend_bytes = 0
        self.range_reads = 0

    def read(self, blob: str, chunks: Sequence[ChunkRecord]) -> list[bytes]:
        out: list[bytes] = []
        for chunk in chunks:
            start, data = self._windows.get(blob, (0, b""))
            offset = chunk.compressed_offset
            end = offset + chunk.compressed_size
            if not (start <= offset and end <= start + len(data)):
                limit = self._sizes.get(blob, end)
                size = max(end, min(offset + self._window, limit)) - offset
                data = self._store.read_range(blob, offset, size)
                start = offset
                self._windows[blob] = (start, data)
                self.backend_bytes += size
                self.range_reads += 1
            view = memoryview(data)[offset - start : end - start]
            try:
                out.append(self._verifier.verify(blob, chunk, view))
            except IntegrityError:
                # Bad bytes in the window (a mirror's, say): drop it, and read this chunk
                # alone through the store's verified path, which can fall back to the
                # origin; if that fails too, the error stands.
                del self._windows[blob]
                out.extend(self._verifier.read(blob, [chunk]))
        return out
