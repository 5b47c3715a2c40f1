"""The range planner's own rules: merged runs, the miss extension, windows (the prefetch
plan: ``test_prefetch_plan.py``)."""

from __future__ import annotations

from ketch.format.records import ChunkRecord
from ketch.storage.blobs import BlobRef, BlobTable
from ketch.storage.range_plan import merge_ranges, miss_extension, span, window

DIGEST = "sha256:" + "c" * 64


def _blob(sizes: list[int], gaps: int = 0) -> BlobRef:
    """One blob of chunks of ``sizes``, ``gaps`` bytes apart, listed out of order."""
    chunks, offset = [], 0
    for n, size in enumerate(sizes):
        chunks.append(ChunkRecord(bytes([n]) + bytes(31), 0, offset, size, size, 0))
        offset += size + gaps
    return BlobTable([(DIGEST, offset)], lambda: list(reversed(chunks)))[0]


def _offsets(plan: list[ChunkRecord]) -> list[int]:
    return [c.compressed_offset for c in plan]


def test_the_blob_handle_lists_its_chunks_by_offset_once() -> None:
    blob = _blob([10, 20, 30])
    assert [c.compressed_offset for c in blob.chunks] == [0, 10, 30] == list(blob.offsets)
    assert blob.chunks is blob.chunks  # built once, shared
    assert BlobRef(DIGEST).chunks == ()  # a blob named without its table: no list


def test_merged_runs_touch_and_stay_within_the_span() -> None:
    chunks = list(_blob([10] * 6).chunks)
    runs = merge_ranges(chunks[:2] + chunks[3:], 30)
    assert [[c.compressed_offset for c in run] for run in runs] == [[0, 10], [30, 40, 50]]
    assert [span(run) for run in runs] == [20, 30]
    assert len(merge_ranges(chunks, 25)) == 3
    assert merge_ranges(list(_blob([10] * 3, gaps=1).chunks), 100) == [
        [c] for c in _blob([10] * 3, gaps=1).chunks
    ]


def test_the_miss_extension_takes_whole_unknown_chunks_within_its_budget() -> None:
    blob = _blob([10] * 8)
    chunks = list(blob.chunks)
    assert _offsets(miss_extension(blob, [chunks[0]], 25, lambda c: False)) == [0, 10, 20]
    # It stops at the first chunk held or in flight elsewhere.
    held = {chunks[2].digest}
    assert _offsets(miss_extension(blob, [chunks[0]], 50, lambda c: c.digest in held)) == [0, 10]
    # Two misses: each extended, nothing twice, in blob order.
    plan = miss_extension(blob, [chunks[1], chunks[5]], 10, lambda c: False)
    assert _offsets(plan) == [10, 20, 50, 60]
    assert miss_extension(blob, [chunks[0]], 0, lambda c: False) == [chunks[0]]
    assert miss_extension(BlobRef(DIGEST), [chunks[0]], 50, lambda c: False) == [chunks[0]]


def test_a_window_starts_at_its_chunk_and_ends_within_the_blob() -> None:
    blob = _blob([10] * 8)  # 80 bytes
    chunks = list(blob.chunks)
    assert window(blob, chunks[1], 30) == (10, 30)
    assert window(blob, chunks[6], 30) == (60, 20)  # cut at the blob's end
    assert window(blob, chunks[1], 5) == (10, 10)  # never less than the chunk
    assert window(BlobRef(DIGEST), chunks[6], 30) == (60, 10)  # size unknown: the chunk
