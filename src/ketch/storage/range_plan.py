"""Range planning: which byte ranges of a blob to read for which chunks, decided here only.

Every plan is over a blob's chunk list from the bootstrap (``BlobRef.chunks``, by offset):

- ``merge_ranges``: the chunks asked for, as runs whose compressed ranges touch, each run
  one range read of at most ``max_span`` bytes (every reader, sequential prefetch,
  ``check``);
- ``miss_extension``: after a miss, the uncached chunks that follow each missed chunk in
  the blob, within a budget of bytes, read in the same range read (the *fetch-behind
  window*). Blobs are in tree order, so they are mostly the files a program opens next;
- ``plan_prefetch``: a prefetch list (files in first-access order) as range reads in fetch
  order: batches of growing size, each cut per blob into runs joined across small gaps by
  the chunks lying there (``join_gaps``), every chunk planned once;
- ``window``: the range a reader that walks blobs in order (``ketch unpack``) reads
  around a chunk: from it on, ``window`` bytes, within the blob.

Names for what reads ahead, used everywhere: *kernel readahead* is the kernel's, on the
mount (``daemon``); *miss extension* is the fetch-behind window above; *sequential
prefetch* is the background fetch of what follows a file read in order (``fs.image_fs``
asks, ``CachedChunkReader.prefetch`` fetches).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ketch.format.records import ChunkRecord
from ketch.storage.blobs import BlobRef

# -- plan_prefetch's defaults
FIRST_BATCH = 1 << 20  # compressed bytes of the first batch
MAX_BATCH = 8 << 20  # batches double up to this
MAX_REQUEST = 2 << 20  # span of one range read
GAP = 256 << 10  # unlisted bytes worth reading to join two ranges


def span(chunks: Sequence[ChunkRecord]) -> int:
    """Bytes of the one range read covering ``chunks`` (by offset)."""
    first, last = chunks[0], chunks[-1]
    return last.compressed_offset + last.compressed_size - first.compressed_offset


def merge_ranges(chunks: Sequence[ChunkRecord], max_span: int) -> list[list[ChunkRecord]]:
    """Consecutive runs of chunks whose compressed ranges touch, each within ``max_span``."""
    groups: list[list[ChunkRecord]] = []
    for chunk in chunks:
        if groups:
            last = groups[-1][-1]
            end = chunk.compressed_offset + chunk.compressed_size
            if (
                chunk.compressed_offset == last.compressed_offset + last.compressed_size
                and end - groups[-1][0].compressed_offset <= max_span
            ):
                groups[-1].append(chunk)
                continue
        groups.append([chunk])
    return groups


def miss_extension(
    blob: BlobRef,
    missing: Sequence[ChunkRecord],
    budget: int,
    known: Callable[[ChunkRecord], bool],
) -> list[ChunkRecord]:
    """``missing`` (sorted by offset) plus the chunks that follow each of them in
    ``blob``, whole chunks within ``budget`` bytes past it, stopping at the first chunk
    ``known`` says is held or being fetched (the rest likely is too); sorted by offset."""
    if budget <= 0:
        return list(missing)
    ordered, offsets = blob.chunks, blob.offsets
    if not ordered:
        return list(missing)
    wanted = {chunk.compressed_offset: chunk for chunk in missing}
    for chunk in missing:
        limit = chunk.compressed_offset + chunk.compressed_size + budget
        position = bisect.bisect_right(offsets, chunk.compressed_offset)
        while position < len(ordered):
            follower = ordered[position]
            position += 1
            if follower.compressed_offset + follower.compressed_size > limit:
                break  # only whole chunks within the budget
            if follower.compressed_offset in wanted:
                continue
            if known(follower):
                break
            wanted[follower.compressed_offset] = follower
    return sorted(wanted.values(), key=lambda chunk: chunk.compressed_offset)


def window(blob: BlobRef, chunk: ChunkRecord, size: int) -> tuple[int, int]:
    """``(offset, length)`` of the window read for ``chunk``: ``size`` bytes from it,
    within the blob (its size when known), never less than the chunk."""
    offset = chunk.compressed_offset
    end = offset + chunk.compressed_size
    limit = blob.size or end
    return offset, max(end, min(offset + size, limit)) - offset


@dataclass(frozen=True, slots=True)
class RangeRead:
    blob: BlobRef
    chunks: list[ChunkRecord]  # by offset, touching or joined by gap chunks

    @property
    def span(self) -> int:
        return span(self.chunks)


def plan_prefetch(
    files: Iterable[Sequence[ChunkRecord]],
    blobs: Sequence[BlobRef],
    *,
    first_batch: int = FIRST_BATCH,
    max_batch: int = MAX_BATCH,
    max_request: int = MAX_REQUEST,
    gap: int = GAP,
) -> list[RangeRead]:
    """The range reads that fetch ``files``' chunks (each file's chunks, files in list
    order), earliest needed first. ``blobs[chunk.blob]`` is a chunk's blob.

    A workload reads its files one after the other and waits for each, over a link that
    pays a round trip per request: the first batches are small, so that the first files
    arrive after a single small request, later ones larger, so that requests stay few;
    each read is cut at ``max_request`` bytes so that it lands soon and several run side
    by side. A chunk is planned once, in the first batch that needs it."""
    planned: set[tuple[int, int]] = set()
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
            reads += _batch_reads(batch, blobs, planned, max_request, gap)
            batch, batch_bytes = {}, 0
            limit = min(limit * 2, max_batch)
    reads += _batch_reads(batch, blobs, planned, max_request, gap)
    return reads


def _batch_reads(
    batch: dict[int, dict[int, ChunkRecord]],
    blobs: Sequence[BlobRef],
    planned: set[tuple[int, int]],
    max_request: int,
    gap: int,
) -> list[RangeRead]:
    reads: list[RangeRead] = []
    for blob_index, by_offset in batch.items():  # blobs in the order the batch met them
        blob = blobs[blob_index]
        ordered = sorted(by_offset.values(), key=lambda chunk: chunk.compressed_offset)
        reads += [
            RangeRead(blob, run) for run in join_gaps(blob, ordered, planned, max_request, gap)
        ]
    return reads


def join_gaps(
    blob: BlobRef,
    ordered: Sequence[ChunkRecord],
    planned: set[tuple[int, int]],
    max_span: int,
    gap: int,
) -> list[list[ChunkRecord]]:
    """``ordered`` (chunks of ``blob`` by offset) as runs, each one range read: two
    chunks are joined across a gap of up to ``gap`` bytes by the chunks lying there (a
    few bytes more, far fewer requests), unless the run would pass ``max_span`` or a
    chunk of the gap is in ``planned`` (read nothing twice). Gap chunks are added to
    ``planned``."""
    everything, offsets = blob.chunks, blob.offsets
    runs: list[list[ChunkRecord]] = []
    current: list[ChunkRecord] = []
    for chunk in ordered:
        if current:
            last = current[-1]
            end = last.compressed_offset + last.compressed_size
            run_span = (
                chunk.compressed_offset + chunk.compressed_size - current[0].compressed_offset
            )
            start = bisect.bisect_left(offsets, end)
            stop = bisect.bisect_left(offsets, chunk.compressed_offset)
            fillers = everything[start:stop]
            if (
                chunk.compressed_offset - end > gap
                or run_span > max_span
                or any((f.blob, f.compressed_offset) in planned for f in fillers)
            ):
                runs.append(current)
                current = []
            else:  # join across the gap with the chunks lying in it
                planned.update((f.blob, f.compressed_offset) for f in fillers)
                current += fillers
        current.append(chunk)
    if current:
        runs.append(current)
    return runs
