"""Fetch chunks from a store, decompress them and verify each against its digest.

Adjacent chunks of one blob are fetched with one range read (up to ``max_merge`` bytes,
``range_plan.merge_ranges``), through ``BlobReader.read_range_verified`` with a check
that decompresses and verifies the chunks of that range, so a store with mirrors can try
another source when one sends wrong bytes. A chunk whose bytes do not match its digest
raises IntegrityError naming blob, offset and digests; wrong bytes are never returned.

A merged range that fails its check is narrowed (``read_each``): the chunks of it that
verified are kept, and each bad chunk is read once more on its own (a store with mirrors
reads it from the next source; otherwise the store is asked again, which cures bytes
damaged on the way). Only a chunk that fails twice is an error, and only its own.
Every failed check is counted in ``verify_failures``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ketch.errors import IntegrityError
from ketch.format.codecs import decoder
from ketch.format.digests import DigestAlgorithm
from ketch.format.records import ChunkRecord
from ketch.storage.blobs import BlobRef
from ketch.storage.range_plan import merge_ranges
from ketch.storage.store import BlobReader

DEFAULT_MAX_MERGE = 8 << 20

log = logging.getLogger("ketch.storage")


class ChunkSource(Protocol):
    """What the filesystem view reads chunks through: a plain ChunkReader, or one with
    a cache in front of it."""

    def read(self, blob: BlobRef, chunks: Sequence[ChunkRecord]) -> list[bytes]:
        """The verified bytes of ``chunks`` (all in ``blob``), in the order given."""
        ...


@runtime_checkable
class PrefetchingSource(ChunkSource, Protocol):
    """A chunk source that can obtain chunks ahead of the reader, in the background, and
    serve those it holds in memory without blocking (the FUSE adapter does so on its
    event loop)."""

    def prefetch(self, blob: BlobRef, chunks: Sequence[ChunkRecord]) -> None:
        """Start obtaining ``chunks`` (all in ``blob``); never blocks, never raises."""
        ...

    def read_from_memory(self, blob: BlobRef, chunks: Sequence[ChunkRecord]) -> list[bytes] | None:
        """The verified bytes of ``chunks`` if all are in memory, else None; no I/O."""
        ...


class ChunkReader:
    def __init__(
        self, store: BlobReader, algo: DigestAlgorithm, *, max_merge: int = DEFAULT_MAX_MERGE
    ) -> None:
        self.store = store
        self.algo = algo
        self.max_merge = max_merge
        self._lock = threading.Lock()
        self._verify_failures = 0

    @property
    def verify_failures(self) -> int:
        """Chunk checks that failed (each source's bytes, each attempt, counted once)."""
        with self._lock:
            return self._verify_failures

    def verify(self, blob: BlobRef, chunk: ChunkRecord, compressed: bytes | memoryview) -> bytes:
        """Decompress and check one chunk's bytes."""
        try:
            return self._verify(blob, chunk, compressed)
        except IntegrityError:
            with self._lock:
                self._verify_failures += 1
            raise

    def _verify(self, blob: BlobRef, chunk: ChunkRecord, compressed: bytes | memoryview) -> bytes:
        try:
            data = decoder(chunk.codec).decompress(compressed, chunk.uncompressed_size)
        except IntegrityError as exc:
            raise IntegrityError(
                f"blob {blob.digest} chunk at {chunk.compressed_offset} "
                f"({chunk.digest.hex()}): {exc}"
            ) from None
        found = self.algo.digest(data)
        if found != chunk.digest:
            raise IntegrityError(
                f"blob {blob.digest} chunk at {chunk.compressed_offset}: digest: "
                f"expected {chunk.digest.hex()}, found {found.hex()}"
            )
        return data

    def read(self, blob: BlobRef, chunks: Sequence[ChunkRecord]) -> list[bytes]:
        """The verified bytes of ``chunks`` (all in ``blob``), in the order given; the
        first chunk that cannot be verified raises its IntegrityError."""
        out: list[bytes] = []
        for group in merge_ranges(chunks, self.max_merge):
            for result in self.read_each(blob, group):
                if isinstance(result, IntegrityError):
                    raise result
                out.append(result)
        return out

    def read_each(
        self, blob: BlobRef, group: Sequence[ChunkRecord]
    ) -> list[bytes | IntegrityError]:
        """One merged range read of ``group`` (adjacent chunks of ``blob``): each chunk's
        verified bytes, or the IntegrityError of a chunk that failed its check twice
        (in the range, then read alone). A range the store cannot give whole (a blob
        cut short) is read again in halves, down to the chunks that are missing. Other
        errors (blob not found, backend down) concern the whole range and are raised."""
        try:
            results = self._read_group(blob, group)
        except IntegrityError as exc:  # the store's own check: the range came back short
            with self._lock:
                self._verify_failures += 1
            if len(group) == 1:
                return [exc]
            half = len(group) // 2
            return self.read_each(blob, group[:half]) + self.read_each(blob, group[half:])
        for position, (chunk, result) in enumerate(zip(group, results, strict=True)):
            if isinstance(result, IntegrityError):
                log.warning("chunk failed verification, reading it again error=%r", result.message)
                try:
                    results[position] = self._read_group(blob, [chunk])[0]
                except IntegrityError as exc:
                    with self._lock:
                        self._verify_failures += 1
                    results[position] = exc
        return results

    def _read_group(
        self, blob: BlobRef, group: Sequence[ChunkRecord]
    ) -> list[bytes | IntegrityError]:
        """One merged range read, each chunk of it decompressed and verified once: its
        bytes or its IntegrityError. An IntegrityError of the store's own (a short
        range) is raised."""
        start = group[0].compressed_offset
        end = group[-1].compressed_offset + group[-1].compressed_size
        verified: list[bytes | IntegrityError] = []
        failed: list[bytes] = []  # the last source's bytes, if a chunk of them failed

        def check(data: bytes | memoryview, chunk: ChunkRecord) -> bytes:
            compressed = memoryview(data)[chunk.compressed_offset - start :]
            return self.verify(blob, chunk, compressed[: chunk.compressed_size])

        def verify_group(data: bytes) -> None:
            # Called once per source the store tries; the last call counts. The first
            # bad chunk raises at once, so that a store with mirrors tries the next
            # source without checking the rest of bytes it will not use.
            verified[:] = []
            failed[:] = []
            for chunk in group:
                try:
                    verified.append(check(data, chunk))
                except IntegrityError as exc:
                    verified.append(exc)
                    failed.append(data)
                    raise

        try:
            self.store.read_range_verified(blob.digest, start, end - start, verify_group)
        except IntegrityError:
            if not failed:
                raise  # the store's own check failed (a short range): no bytes to judge
            # The last source's bytes failed at one chunk: judge the rest of them too.
            for chunk in group[len(verified) :]:
                try:
                    verified.append(check(failed[0], chunk))
                except IntegrityError as exc:
                    verified.append(exc)
        return verified
