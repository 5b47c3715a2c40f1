"""Binary records: round trips and envelope checks (docs/format.md §2, §4)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ketch.errors import IntegrityError
from ketch.format.records import (
    BLOB_TRAILER_SIZE,
    SUPERBLOCK_SIZE,
    BlobChunkEntry,
    BlobRecord,
    BlobTrailer,
    ChunkRecord,
    ChunkRef,
    DirentRecord,
    InodeRecord,
    Superblock,
    SuperFlags,
)
from ketch.format.xattrs import decode_xattrs, encode_xattrs

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
d32 = st.binary(min_size=32, max_size=32)


@given(
    st.tuples(
        d32,
        u32,
        u32,
        u32,
        u32,
        u64,
        u64,
        st.integers(-(2**63), 2**63 - 1),
        u32,
        u32,
        u32,
        u32,
        u32,
        u32,
    )
)
def test_inode_round_trip(fields: tuple[Any, ...]) -> None:
    record = InodeRecord(*fields)
    packed = record.pack()
    assert len(packed) == InodeRecord.size_of
    assert InodeRecord.unpack(packed) == record


@given(u32, st.integers(0, 2**16 - 1), u32)
def test_dirent_round_trip(offset: int, size: int, inode: int) -> None:
    record = DirentRecord(offset, size, inode)
    assert DirentRecord.unpack(record.pack()) == record


@given(u64, u32)
def test_chunkref_round_trip(offset: int, chunk: int) -> None:
    assert ChunkRef.unpack(ChunkRef(offset, chunk).pack()) == ChunkRef(offset, chunk)


@given(st.tuples(d32, u32, u64, u32, u32, st.integers(0, 255)))
def test_chunk_round_trip(fields: tuple[Any, ...]) -> None:
    record = ChunkRecord(*fields)
    assert ChunkRecord.unpack(record.pack()) == record
    entry = BlobChunkEntry(
        record.digest,
        record.compressed_offset,
        record.compressed_size,
        record.uncompressed_size,
        record.codec,
    )
    assert BlobChunkEntry.unpack(entry.pack()) == entry


def test_blob_record_names_its_oci_digest() -> None:
    record = BlobRecord(bytes(range(32)), 10, 2)
    assert BlobRecord.unpack(record.pack()) == record
    assert record.oci_digest == "sha256:" + bytes(range(32)).hex()


def _superblock() -> Superblock:
    return Superblock(
        1,
        SuperFlags.CDC_CHUNKER,
        1,
        20,
        1000,
        256,
        1,
        352,
        0,
        352,
        0,
        352,
        0,
        352,
        0,
        352,
        0,
        352,
        0,
        b"r" * 32,
        b"b" * 32,
        b"s" * 32,
    )


def test_superblock_round_trip_and_size() -> None:
    packed = _superblock().pack()
    assert len(packed) == SUPERBLOCK_SIZE
    assert Superblock.unpack(packed) == _superblock()


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, b"X", "bootstrap magic"),
        (8, b"\x09", "bootstrap format version"),
        (10, b"\x80", "bootstrap flags"),
    ],
)
def test_superblock_envelope_is_checked(offset: int, value: bytes, message: str) -> None:
    packed = bytearray(_superblock().pack())
    packed[offset : offset + len(value)] = value
    with pytest.raises(IntegrityError, match=message):
        Superblock.unpack(bytes(packed))


def test_blob_trailer_checks_magic_and_version() -> None:
    trailer = BlobTrailer(1, 3, 100, b"t" * 32).pack()
    assert len(trailer) == BLOB_TRAILER_SIZE
    assert BlobTrailer.unpack(trailer) == BlobTrailer(1, 3, 100, b"t" * 32)
    with pytest.raises(IntegrityError, match="blob magic"):
        BlobTrailer.unpack(b"Y" + trailer[1:])
    with pytest.raises(IntegrityError, match="blob format version"):
        BlobTrailer.unpack(trailer[:8] + b"\x07\x00" + trailer[10:])


@given(st.dictionaries(st.binary(min_size=1, max_size=40), st.binary(max_size=200), max_size=6))
def test_xattr_block_round_trip_is_canonical(xattrs: dict[bytes, bytes]) -> None:
    block = encode_xattrs(xattrs)
    assert decode_xattrs(block) == xattrs
    assert encode_xattrs(dict(reversed(list(xattrs.items())))) == block


def test_xattr_block_truncation_is_an_integrity_error() -> None:
    block = encode_xattrs({b"user.a": b"value"})
    with pytest.raises(IntegrityError):
        decode_xattrs(block[:-2])
