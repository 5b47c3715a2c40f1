"""Data blob layout (docs/format.md §4): compressed chunks, chunk table, trailer.

A blob is self-describing: its trailer locates its chunk table, and the table names
every chunk by digest, so a blob can be checked alone, without any bootstrap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import IO

from ketch.errors import IntegrityError, integrity
from ketch.format.digests import DigestAlgorithm
from ketch.format.records import BLOB_TRAILER_SIZE, BlobChunkEntry, BlobTrailer


class BlobWriter:
    """Appends compressed chunks to ``out``, then seals the blob with table and trailer."""

    def __init__(self, out: IO[bytes], algo: DigestAlgorithm) -> None:
        self._out = out
        self._algo = algo
        self._sha = hashlib.sha256()
        self._entries: list[BlobChunkEntry] = []
        self._offset = 0

    @property
    def chunk_count(self) -> int:
        return len(self._entries)

    def _write(self, data: bytes | memoryview) -> None:
        self._out.write(data)
        self._sha.update(data)
        self._offset += len(data)

    def add(
        self, digest: bytes, compressed: bytes | memoryview, uncompressed_size: int, codec: int
    ) -> BlobChunkEntry:
        entry = BlobChunkEntry(digest, self._offset, len(compressed), uncompressed_size, codec)
        self._write(compressed)
        self._entries.append(entry)
        return entry

    def finish(self) -> tuple[str, int]:
        """Write table and trailer; the blob's OCI digest and size."""
        table = b"".join(e.pack() for e in self._entries)
        trailer = BlobTrailer(
            int(self._algo), len(self._entries), self._offset, self._algo.digest(table)
        )
        self._write(table)
        self._write(trailer.pack())
        return "sha256:" + self._sha.hexdigest(), self._offset


ReadRange = Callable[[int, int], bytes]


def read_blob_table(
    name: str, size: int, read_range: ReadRange
) -> tuple[DigestAlgorithm, list[BlobChunkEntry]]:
    """Parse and validate a blob's trailer and chunk table (not the chunk bytes)."""
    if size < BLOB_TRAILER_SIZE:
        raise integrity(f"blob {name}: size", f">= {BLOB_TRAILER_SIZE}", size)
    try:
        trailer = BlobTrailer.unpack(read_range(size - BLOB_TRAILER_SIZE, BLOB_TRAILER_SIZE))
    except IntegrityError as exc:
        raise IntegrityError(f"blob {name}: {exc.message}") from None
    try:
        algo = DigestAlgorithm(trailer.digest_algorithm)
    except ValueError:
        raise integrity(
            f"blob {name}: digest algorithm", "1 or 2", trailer.digest_algorithm
        ) from None
    table_size = trailer.chunk_count * BlobChunkEntry.size_of
    if trailer.table_offset + table_size + BLOB_TRAILER_SIZE != size:
        raise integrity(
            f"blob {name}: table offset + table + trailer",
            size,
            trailer.table_offset + table_size + BLOB_TRAILER_SIZE,
        )
    table = read_range(trailer.table_offset, table_size)
    found = algo.digest(table)
    if found != trailer.table_digest:
        raise integrity(f"blob {name}: chunk table digest", trailer.table_digest.hex(), found.hex())
    entries = [
        BlobChunkEntry.unpack(table, i * BlobChunkEntry.size_of) for i in range(trailer.chunk_count)
    ]
    position = 0
    for i, entry in enumerate(entries):
        if entry.compressed_offset != position:
            raise integrity(f"blob {name}: chunk {i} offset", position, entry.compressed_offset)
        position += entry.compressed_size
    if position != trailer.table_offset:
        raise integrity(f"blob {name}: chunk data end", trailer.table_offset, position)
    return algo, entries
