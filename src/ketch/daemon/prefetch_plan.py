"""Turn a prefetch list (files in first-access order) into range reads, in fetch order.

A workload reads its files one after the other and waits for each, so prefetch must
deliver them in the order they will be read, as soon as possible, over a link that pays
a round trip per request. The plan cuts the list into batches of growing size (the first
ones small, so that the first files arrive after a single small request; later ones
larger, so that requests stay few), and each batch into range reads: per blob, its chunks
in blob order, joined across gaps of up to ``gap`` bytes by the chunks lying there (a
few bytes more, far fewer requests), cut at ``max_request`` bytes so that every read
lands soon and several run side by side. A chunk is planned once, in the first batch
that needs it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ketch.format.records import ChunkRecord

FIRST_BATCH = 1 << 20  # compressed bytes of the first batch
MAX_BATCH = 8 << 20  # batches double up to this
MAX_REQUEST = 2 << 20  # span of one range read
GAP = 256 << 10  # unlisted bytes worth reading to join two ranges


@dataclass(frozen=True, slots=True)
class RangeRead:
    blob: str
    chunks: list[ChunkRecord]  # by offset, touching or joined by gap chunks

    @property
    def span(self) -> int:
        first, last = self.chunks[0], self.chunks[-1]
        return last.compressed_offset + last.compressed_size - first.compressed_offset


def plan_prefetch(
    files: Iterable[Sequence[ChunkRecord]],
    blob_digests: Sequence[str],
    blob_chunks: Callable[[str], list[ChunkRecord]],
    *,
    first_batch: int = FIRST_BATCH,
    max_batch: int = MAX_BATCH,
    max_request: int = MAX_REQUEST,
    gap: int = GAP,
) -> list[RangeRead]:
    """The range reads that fetch ``files``' chunks (each file's chunks, files in list
    order), earliest needed first. ``blob_chunks(digest)`` is the image's chunks in that
    blob by offset (the gap fillers come from it)."""
    planned: set[tuple[int, int]] = set()
    offsets: dict[str, list[int]] = {}  # per blob, for bisecting; built once
    reads: list[RangeRead] = []
    batch: dict[int, dict[int, ChunkRecord]] = {}
    batch_bytes = 0
    limit = first_batch
    for chunks in files:
        for chunk in chunks:
            key = (chunk.blob, chunk.compressed_offset)
            if key in planned:
                continue
            planned.add(key)
            batch.setdefault(chunk.blob, {})[chunk.compressed_offset] = chunk
            batch_bytes += chunk.compressed_size
        if batch_bytes >= limit:
            reads += _batch_reads(
                batch, blob_digests, blob_chunks, offsets, planned, max_request, gap
            )
            batch, batch_bytes = {}, 0
            limit = min(limit * 2, max_batch)
    reads += _batch_reads(batch, blob_digests, blob_chunks, offsets, planned, max_request, gap)
    return reads


def _batch_reads(
    batch: dict[int, dict[int, ChunkRecord]],
    blob_digests: Sequence[str],
    blob_chunks: Callable[[str], list[ChunkRecord]],
    offsets_by_blob: dict[str, list[int]],
    planned: set[tuple[int, int]],
    max_request: int,
    gap: int,
) -> list[RangeRead]:
    reads: list[RangeRead] = []
    for blob_index, by_offset in batch.items():  # blobs in the order the batch met them
        digest = blob_digests[blob_index]
        ordered = sorted(by_offset.values(), key=lambda chunk: chunk.compressed_offset)
        everything = blob_chunks(digest)
        offsets = offsets_by_blob.get(digest)
        if offsets is None:
            offsets = offsets_by_blob[digest] = [c.compressed_offset for c in everything]
        current: list[ChunkRecord] = []
        for chunk in ordered:
            if current:
                last = current[-1]
                end = last.compressed_offset + last.compressed_size
                span = (
                    chunk.compressed_offset + chunk.compressed_size - current[0].compressed_offset
                )
                start = bisect.bisect_left(offsets, end)
                stop = bisect.bisect_left(offsets, chunk.compressed_offset)
                fillers = everything[start:stop]
                if (
                    chunk.compressed_offset - end > gap
                    or span > max_request
                    # an earlier read has some of the gap: read nothing twice
                    or any((f.blob, f.compressed_offset) in planned for f in fillers)
                ):
                    reads.append(RangeRead(digest, current))
                    current = []
                else:  # join across the gap with the chunks lying in it
                    planned.update((f.blob, f.compressed_offset) for f in fillers)
                    current += fillers
            current.append(chunk)
        if current:
            reads.append(RangeRead(digest, current))
    return reads
