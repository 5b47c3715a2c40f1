"""The prefetch plan: every listed chunk read once, earliest needed first, reads bounded."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ketch.format.records import ChunkRecord
from ketch.storage.blobs import BlobRef, BlobTable
from ketch.storage.range_plan import RangeRead, plan_prefetch

BLOBS = ["sha256:" + "a" * 64, "sha256:" + "b" * 64]


def _blob(index: int, sizes: list[int]) -> list[ChunkRecord]:
    chunks, offset = [], 0
    for n, size in enumerate(sizes):
        digest = bytes([index, n % 256, n // 256]) + bytes(29)
        chunks.append(ChunkRecord(digest, index, offset, size, size * 2, 1))
        offset += size
    return chunks


def _layout(seed: int) -> dict[str, list[ChunkRecord]]:
    rng = random.Random(seed)
    return {
        digest: _blob(i, [rng.randint(1, 600) << 10 for _ in range(60)])
        for i, digest in enumerate(BLOBS)
    }


def _blobs(layout: dict[str, list[ChunkRecord]]) -> list[BlobRef]:
    return list(
        BlobTable(
            [(digest, 0) for digest in BLOBS], lambda: [c for cs in layout.values() for c in cs]
        ).refs
    )


def _covered(reads: list[RangeRead]) -> list[tuple[int, int]]:
    return [(c.blob, c.compressed_offset) for r in reads for c in r.chunks]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 40))
def test_every_listed_chunk_is_read_exactly_once(seed: int, nfiles: int) -> None:
    layout = _layout(seed)
    rng = random.Random(seed)
    everything = [c for chunks in layout.values() for c in chunks]
    files = [rng.sample(everything, rng.randint(1, 4)) for _ in range(nfiles)]
    reads = plan_prefetch(files, _blobs(layout), max_request=2 << 20, gap=256 << 10)
    covered = _covered(reads)
    assert len(covered) == len(set(covered))  # nothing read twice
    listed = {(c.blob, c.compressed_offset) for f in files for c in f}
    assert listed <= set(covered)
    for read in reads:
        offsets = [c.compressed_offset for c in read.chunks]
        assert offsets == sorted(offsets)
        # Contiguous: gaps were filled with the chunks lying there.
        for a, b in zip(read.chunks, read.chunks[1:], strict=False):
            assert a.compressed_offset + a.compressed_size == b.compressed_offset
        # Bounded, unless one chunk alone is bigger than the limit.
        assert read.span <= 2 << 20 or len(read.chunks) == 1
        assert all(layout[read.blob.digest][0].blob == c.blob for c in read.chunks)


def test_the_first_file_comes_first_in_a_small_read() -> None:
    layout = {BLOBS[0]: _blob(0, [100 << 10] * 200)}
    chunks = layout[BLOBS[0]]
    # The first file sits at the end of the blob, the rest before it.
    files = [[chunks[190]], *[[chunks[i]] for i in range(0, 150, 3)]]
    reads = plan_prefetch(files, _blobs(layout), first_batch=64 << 10)
    assert reads[0].chunks == [chunks[190]]  # alone: the batch was full after one file
    # Later batches are bigger; the unlisted chunks between listed ones are read too.
    assert len(reads) < len(files)
    assert chunks[1] in [c for r in reads for c in r.chunks]


def test_a_gap_wider_than_the_limit_splits_the_read() -> None:
    layout = {BLOBS[0]: _blob(0, [64 << 10] * 40)}
    chunks = layout[BLOBS[0]]
    reads = plan_prefetch([[chunks[0], chunks[2], chunks[30]]], _blobs(layout))
    assert [[c.compressed_offset for c in r.chunks] for r in reads] == [
        [0, 64 << 10, 128 << 10],
        [30 * (64 << 10)],
    ]
