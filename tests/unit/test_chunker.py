"""Chunkers: the chunks always reassemble the stream; fixed chunks cut at fixed offsets."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ketch.builder.chunker import DEFAULT_CHUNK_SIZE, make_chunker
from ketch.cli.main import build_parser
from ketch.errors import UsageError


def _blocks(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos = [], 0
    for size in sizes:
        out.append(data[pos : pos + size])
        pos += size
    out.append(data[pos:])
    return [b for b in out if b]


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=40000), st.lists(st.integers(1, 9000), max_size=8))
def test_fixed_chunks_reassemble_and_cut_at_multiples(data: bytes, sizes: list[int]) -> None:
    chunks = list(make_chunker("fixed", 4096).chunkify(_blocks(data, sizes)))
    assert b"".join(chunks) == data
    assert all(len(c) == 4096 for c in chunks[:-1])
    assert all(chunks)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(1, 300000), max_size=6))
def test_cdc_chunks_reassemble_whatever_the_block_sizes(sizes: list[int]) -> None:
    data = os.urandom(600000)
    expected = list(make_chunker("cdc", 65536).chunkify([data]))
    chunks = list(make_chunker("cdc", 65536).chunkify(_blocks(data, sizes)))
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
