"""Fetch chunks from a store, decompress them and verify each against its digest.

Adjacent chunks of one blob are fetched with one range read (up to ``max_merge``
bytes), through ``ImageStore.read_range_verified`` with a check that decompresses and
verifies the chunks of that range, so a store with mirrors can try another source when
one sends wrong bytes. A chunk whose bytes do not match its digest raises IntegrityError
naming blob, offset and digests; wrong bytes are never returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ketch.errors import IntegrityError
from ketch.format.codecs import decoder
from ketch.format.digests import DigestAlgorithm
from ketch.format.records import ChunkRecord
from ketch.storage.store import ImageStore

DEFAULT_MAX_MERGE = 8 << 20


class ChunkSource(Protocol):
    """What the filesystem view reads chunks through: a plain ChunkReader, or one with
    a cache in front of it."""

    def read(self, blob: str, chunks: Sequence[ChunkRecord]) -> list[bytes]:
        """The verified bytes of ``chunks`` (all in ``blob``), in the order given."""
        ...


@runtime_checkable
class PrefetchingSource(ChunkSource, Protocol):
    """A chunk source that can obtain chunks ahead of the reader, in the background, and
    serve those it holds in memory without blocking (the FUSE adapter does so on its
    event loop)."""

    def prefetch(self, blob: str, chunks: Sequence[ChunkRecord]) -> None:
        """Start obtaining ``chunks`` (all in ``blob``); never blocks, never raises."""
        ...

    def read_from_memory(self, blob: str, chunks: Sequence[ChunkRecord]) -> list[bytes] | None:
        """The verified bytes of ``chunks`` if all are in memory, else None; no I/O."""
        ...


class ChunkReader:
    def __init__(
        self, store: ImageStore, algo: DigestAlgorithm, *, max_merge: int = DEFAULT_MAX_MERGE
    ) -> None:
        self.store = store
        self.algo = algo
        self.max_merge = max_merge

    def verify(self, blob: str, chunk: ChunkRecord, compressed: bytes | memoryview) -> bytes:
        """Decompress and check one chunk's bytes."""
        try:
            data = decoder(chunk.codec).decompress(compressed, chunk.uncompressed_size)
        except IntegrityError as exc:
            raise IntegrityError(
                f"blob {blob} chunk at {chunk.compressed_offset} ({chunk.digest.hex()}): {exc}"
            ) from None
        found = self.algo.digest(data)
        if found != chunk.digest:
            raise IntegrityError(
                f"blob {blob} chunk at {chunk.compressed_offset}: digest: "
                f"expected {chunk.digest.hex()}, found {found.hex()}"
            )
        return data

    def read(self, blob: str, chunks: Sequence[ChunkRecord]) -> list[bytes]:
        """The verified bytes of ``chunks`` (all in ``blob``), in the order given."""
        out: list[bytes] = []
        for group in merge_ranges(chunks, self.max_merge):
            out += self._read_group(blob, group)
        return out

    def _read_group(self, blob: str, group: list[ChunkRecord]) -> list[bytes]:
        """One merged range read, each chunk of it decompressed and verified once."""
        start = group[0].compressed_offset
        end = group[-1].compressed_offset + group[-1].compressed_size
        verified: list[bytes] = []

        def verify_group(data: bytes) -> None:
            # Called once per source the store tries; the last call, which passed, counts.
            view = memoryview(data)
            verified[:] = [
                self.verify(
                    blob, chunk, view[chunk.compressed_offset - start :][: chunk.compressed_size]
                )
                for chunk in group
            ]

        self.store.read_range_verified(blob, start, end - start, verify_group)
        return verified


def merge_ranges(chunks: Sequence[ChunkRecord], max_merge: int) -> list[list[ChunkRecord]]:
    """Consecutive runs of chunks whose compressed ranges touch, each within ``max_merge``."""
    groups: list[list[ChunkRecord]] = []
    for chunk in chunks:
        if groups:
            last = groups[-1][-1]
            span = chunk.compressed_offset + chunk.compressed_size - groups[-1][0].compressed_offset
            if (
                chunk.compressed_offset == last.compressed_offset + last.compressed_size
                and span <= max_merge
            ):
                groups[-1].append(chunk)
                continue
        groups.append([chunk])
    return groups
