"""Data blob layout (docs/format.md §4): compressed chunks, chunk table, trailer.

A blob is self-describing: its trailer locates its chunk table, and the table names
every chunk by digest, so a blob can be checked alone, without any bootstrap.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

from ketch.errors import IntegrityError, integrity
from ketch.format.digests import DigestAlgorithm, oci_digest
from ketch.format.records import BLOB_CHUNK, BLOB_TRAILER_SIZE, BlobChunkEntry, BlobTrailer

_IOV_MAX = 1024  # Linux: buffers per writev
_COPY_PIECE = 1 << 20


class BlobWriter:
    """Appends compressed chunks to a file descriptor, then seals the blob with its table
    and trailer.

    The builder places chunks (their offsets) on its own thread and has ``write`` run on
    a writer thread: ``os.writev`` and sha256 release the GIL. The blob's sha256 is taken
    while writing unless ``hashing`` is off; ``finish`` then reads the written bytes back
    to take it (a blob that is rewritten in another order never needs the first one).
    """

    def __init__(self, fd: int, algo: DigestAlgorithm, *, hashing: bool = True) -> None:
        self.fd = fd
        self._algo = algo
        self._sha: hashlib._Hash | None = hashlib.sha256() if hashing else None
        self.size = 0  # bytes written so far

    def stop_hashing(self) -> None:
        self._sha = None

    def write(self, parts: Sequence[bytes | memoryview]) -> None:
        sha = self._sha
        if sha is not None:
            for part in parts:
                sha.update(part)
        self.size += write_all(self.fd, parts)

    def copy_ranges(self, source: int, ranges: Iterable[tuple[int, int]]) -> None:
        """Append ``(offset, length)`` ranges of file ``source``, in order."""
        for piece in _read_ranges(source, ranges):
            self.write((piece,))

    def finish(self, table: bytes, chunk_count: int) -> tuple[str, int]:
        """Write the packed chunk table (``pack_table``) and the trailer; the blob's OCI
        digest and size."""
        trailer = BlobTrailer(int(self._algo), chunk_count, self.size, self._algo.digest(table))
        if self._sha is None:
            self._sha = hashlib.sha256()
            for piece in _read_ranges(self.fd, ((0, self.size),)):
                self._sha.update(piece)
        sha = self._sha
        self.write((table, trailer.pack()))
        return oci_digest(sha), self.size


def _read_ranges(fd: int, ranges: Iterable[tuple[int, int]]) -> Iterator[memoryview]:
    """The bytes of ``ranges`` of file ``fd``, read into one reused buffer: cheaper than a
    map, whose pages each fault in. Each piece is valid until the next is asked for."""
    buffer = memoryview(bytearray(_COPY_PIECE))
    for start, length in ranges:
        position, end = start, start + length
        while position < end:
            n = os.preadv(fd, [buffer[: min(_COPY_PIECE, end - position)]], position)
            if not n:
                raise OSError(f"file ends at {position}, expected {end - position} more bytes")
            position += n
            yield buffer[:n]


def pack_table(entries: Iterable[tuple[bytes, int, int, int, int]]) -> bytes:
    """The chunk table (§4.2) of ``(digest, offset, compressed size, size, codec)`` rows."""
    pack = BLOB_CHUNK.pack
    return b"".join([pack(*entry) for entry in entries])


def write_all(fd: int, parts: Sequence[bytes | memoryview]) -> int:
    """``os.writev`` until every byte of ``parts`` is written; the number of bytes."""
    pending = [memoryview(part) for part in parts if len(part)]
    total = 0
    while pending:
        n = os.writev(fd, pending[:_IOV_MAX])
        total += n
        while pending and n >= len(pending[0]):
            n -= len(pending.pop(0))
        if n:
            pending[0] = pending[0][n:]
    return total


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
