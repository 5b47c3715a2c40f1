"""Chunks for readers that walk an image in order (``ketch unpack``): each blob is
fetched in large windows instead of one range read per file.

Blobs are laid out in tree order, and unpack writes in tree order, so consecutive
requests fall in the same window: a few dozen range reads per image instead of one per
file, which is what makes unpack from a registry or S3 fast. Every chunk is still
verified, by the same code as the lazy read path, before it is returned.
"""

from __future__ import annotations

from collections.abc import Sequence

from ketch.errors import IntegrityError
from ketch.format.digests import DigestAlgorithm
from ketch.format.records import ChunkRecord
from ketch.storage.blobs import BlobRef
from ketch.storage.chunk_reader import ChunkReader
from ketch.storage.range_plan import window
from ketch.storage.store import BlobReader

DEFAULT_WINDOW = 16 << 20


def _unchecked(data: bytes) -> None:
    """A window is checked chunk by chunk as it is used, not whole."""


class WindowedChunkReader:
    """A ``ChunkSource`` keeping one window of raw bytes per blob (bounded memory)."""

    def __init__(
        self, store: BlobReader, algo: DigestAlgorithm, *, window: int = DEFAULT_WINDOW
    ) -> None:
        self._verifier = ChunkReader(store, algo)
        self._store = store
        self._window = window
        self._windows: dict[str, tuple[int, bytes]] = {}
        self.backend_bytes = 0
        self.range_reads = 0

    def read(self, blob: BlobRef, chunks: Sequence[ChunkRecord]) -> list[bytes]:
        out: list[bytes] = []
        for chunk in chunks:
            start, data = self._windows.get(blob.digest, (0, b""))
            offset = chunk.compressed_offset
            end = offset + chunk.compressed_size
            if not (start <= offset and end <= start + len(data)):
                start, size = window(blob, chunk, self._window)
                data = self._store.read_range_verified(blob.digest, start, size, _unchecked)
                self._windows[blob.digest] = (start, data)
                self.backend_bytes += size
                self.range_reads += 1
            view = memoryview(data)[offset - start : end - start]
            try:
                out.append(self._verifier.verify(blob, chunk, view))
            except IntegrityError:
                # Bad bytes in the window (a mirror's, say): drop it, and read this chunk
                # alone through the store's verified path, which can fall back to the
                # origin; if that fails too, the error stands.
                del self._windows[blob.digest]
                out.extend(self._verifier.read(blob, [chunk]))
        return out
