"""One handle per data blob for the read path: ``BlobRef``, and ``BlobTable``, an image's
blobs as the bootstrap lists them.

A blob is named once, when the table is made: its OCI digest string (what stores and
messages use), its index in the bootstrap (what chunk records carry), its size, and its
chunks sorted by offset (what range planning joins and extends over, ``range_plan.py``).
The chunk lists are built on first use, all blobs at once, so opening an image does not
walk every chunk record.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ketch.format.bootstrap import Bootstrap
from ketch.format.records import ChunkRecord


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A data blob: ``digest`` (``sha256:<hex>``), ``index`` in the bootstrap's blob
    table, ``size`` in bytes; ``chunks`` and their ``offsets`` by offset (none for a
    blob named without its image's table)."""

    digest: str
    index: int = 0
    size: int = 0
    table: BlobTable | None = field(default=None, compare=False, repr=False)

    @property
    def chunks(self) -> Sequence[ChunkRecord]:
        return () if self.table is None else self.table.chunk_list(self.index)[0]

    @property
    def offsets(self) -> Sequence[int]:
        """``chunks``' compressed offsets, for bisecting."""
        return () if self.table is None else self.table.chunk_list(self.index)[1]


class BlobTable:
    """An image's blobs, by bootstrap index; ``table[chunk.blob]`` is a chunk's blob.

    ``blobs``: each blob's digest and size, in index order; ``chunks()``: every chunk
    record of the image (called once, on the first need of a chunk list)."""

    def __init__(
        self, blobs: Sequence[tuple[str, int]], chunks: Callable[[], Iterable[ChunkRecord]]
    ) -> None:
        self.refs: tuple[BlobRef, ...] = tuple(
            BlobRef(digest, index, size, self) for index, (digest, size) in enumerate(blobs)
        )
        self._all_chunks = chunks
        self._lock = threading.Lock()
        self._lists: list[tuple[list[ChunkRecord], list[int]]] | None = None

    @classmethod
    def of(cls, bootstrap: Bootstrap) -> BlobTable:
        return cls([(b.oci_digest, b.size) for b in bootstrap.blobs()], bootstrap.chunks)

    def __getitem__(self, index: int) -> BlobRef:
        return self.refs[index]

    def __len__(self) -> int:
        return len(self.refs)

    def chunk_list(self, index: int) -> tuple[list[ChunkRecord], list[int]]:
        """Blob ``index``'s chunks by offset, and their offsets; built on first use."""
        lists = self._lists
        if lists is not None:
            return lists[index]
        with self._lock:
            if self._lists is None:
                grouped: list[list[ChunkRecord]] = [[] for _ in self.refs]
                for chunk in self._all_chunks():
                    grouped[chunk.blob].append(chunk)
                lists = []
                for chunks in grouped:
                    chunks.sort(key=lambda chunk: chunk.compressed_offset)
                    lists.append((chunks, [chunk.compressed_offset for chunk in chunks]))
                self._lists = lists
            return self._lists[index]
