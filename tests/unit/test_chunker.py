"""Chunkers: the chunks always reassemble the stream; fixed chunks cut at fixed offsets."""

from __future__ import annotations

import os
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ketch.builder.chunker import DEFAULT_CHUNK_SIZE, Chunk, ZeroChunks, make_chunker
from ketch.cli.main import build_parser
from ketch.errors import UsageError
from ketch.oci.tar_sparse import Piece, ZeroRun


def _blocks(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos = [], 0
    for size in sizes:
        out.append(data[pos : pos + size])
        pos += size
    out.append(data[pos:])
    return [b for b in out if b]


def _bytes(chunks: Iterable[Chunk]) -> list[bytes]:
    """Each chunk as bytes, a run of zero chunks as that many chunks of zeros."""
    out: list[bytes] = []
    for chunk in chunks:
        if isinstance(chunk, ZeroChunks):
            out.extend([bytes(chunk.size)] * chunk.count)
        else:
            out.append(bytes(chunk))
    return out


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=40000), st.lists(st.integers(1, 9000), max_size=8))
def test_fixed_chunks_reassemble_and_cut_at_multiples(data: bytes, sizes: list[int]) -> None:
    chunks = _bytes(make_chunker("fixed", 4096).chunkify(_blocks(data, sizes)))
    assert b"".join(chunks) == data
    assert all(len(c) == 4096 for c in chunks[:-1])
    assert all(chunks)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(1, 300000), max_size=6))
def test_cdc_chunks_reassemble_whatever_the_block_sizes(sizes: list[int]) -> None:
    data = os.urandom(600000)
    expected = _bytes(make_chunker("cdc", 65536).chunkify([data]))
    chunks = _bytes(make_chunker("cdc", 65536).chunkify(_blocks(data, sizes)))
    assert b"".join(chunks) == data
    assert chunks == expected  # cut points depend on content only


def test_cdc_insertion_shifts_only_nearby_chunks() -> None:
    data = os.urandom(4 << 20)
    before = set(make_chunker("cdc", 65536).chunkify([data]))
    after = list(make_chunker("cdc", 65536).chunkify([data[:1000] + b"inserted" + data[1000:]]))
    shared = sum(1 for c in after if c in before)
    assert shared >= len(after) - 3


@pytest.mark.parametrize("size", [0, 1000, 4095, 3 << 20, 32 << 20])
def test_chunk_size_must_be_a_power_of_two_in_range(size: int) -> None:
    with pytest.raises(UsageError, match="chunk size"):
        make_chunker("fixed", size)


def test_cli_default_chunk_size_is_the_builders() -> None:
    assert build_parser().parse_args(["convert", "a", "b"]).chunk_size == DEFAULT_CHUNK_SIZE


_HOLEY = st.lists(
    st.one_of(
        st.binary(min_size=1, max_size=9000),
        st.integers(0, 40000).map(ZeroRun),
    ),
    max_size=10,
)


def _materialized(pieces: list[Piece]) -> bytes:
    return b"".join(bytes(p.size) if isinstance(p, ZeroRun) else bytes(p) for p in pieces)


@settings(max_examples=60, deadline=None)
@given(_HOLEY)
def test_fixed_chunks_of_holes_are_the_chunks_of_their_zeros(pieces: list[Piece]) -> None:
    """Holes cut where the same zeros would; whole zero chunks come as runs, unread."""
    chunker = make_chunker("fixed", 4096)
    data = _materialized(pieces)
    chunks = list(chunker.chunkify(pieces))
    assert _bytes(chunks) == _bytes(chunker.chunkify([data] if data else []))
    runs = [c for c in chunks if isinstance(c, ZeroChunks)]
    assert all(run.size == 4096 and run.count >= 1 for run in runs)
    # No whole chunk inside a hole is ever made of bytes.
    longest = max((p.size for p in pieces if isinstance(p, ZeroRun)), default=0)
    if longest >= 2 * 4096:
        assert runs


def test_a_terabyte_hole_is_one_run_of_zero_chunks() -> None:
    chunks = list(make_chunker("fixed", 1 << 20).chunkify([b"x", ZeroRun(1 << 40), b"y"]))
    head, run, tail = chunks
    assert isinstance(run, ZeroChunks) and (run.count, run.size) == ((1 << 20) - 1, 1 << 20)
    assert not isinstance(head, ZeroChunks) and bytes(head) == b"x" + bytes((1 << 20) - 1)
    assert not isinstance(tail, ZeroChunks) and bytes(tail) == bytes(1) + b"y"


@settings(max_examples=10, deadline=None)
@given(_HOLEY)
def test_cdc_chunks_of_holes_are_the_chunks_of_their_zeros(pieces: list[Piece]) -> None:
    chunker = make_chunker("cdc", 65536)
    data = _materialized(pieces)
    assert _bytes(chunker.chunkify(pieces)) == _bytes(chunker.chunkify([data] if data else []))
