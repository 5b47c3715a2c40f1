"""Known answers of format v1: wire ids, records, Merkle digests and blobs
(tests/vectors/format_v1, docs/format.md).

Every other format test compares the writer with the reader; these compare both with
bytes committed once. A failure here means format v1 changed: that needs a new format
version, never an edit of the vectors.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest

from ketch.format.blob import BlobWriter, pack_table, read_blob_table
from ketch.format.codecs import CodecId, codec_by_name, decoder
from ketch.format.digests import DigestAlgorithm
from ketch.format.merkle import (
    NodeAttrs,
    directory_digest,
    file_digest,
    special_digest,
    symlink_digest,
)
from ketch.format.records import (
    BLOB_MAGIC,
    BOOTSTRAP_MAGIC,
    FORMAT_VERSION,
    PREFETCH,
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
from tests.fixtures.golden_image import FORMAT_CHANGED, VECTORS


def _load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


IDS = _load("ids.json")
RECORDS = _load("records.json")
LAYOUT: dict[str, Any] = RECORDS.pop("layout")
MERKLE = _load("merkle.json")
BLOBS = _load("blobs.json")

# Record name in records.json -> (pack, unpack) of one instance given by its fields.
_Record = tuple[Callable[[dict[str, Any]], bytes], Callable[[bytes], dict[str, Any]]]


def _dataclass(cls: Any) -> _Record:
    def build(fields: dict[str, Any]) -> Any:
        values: dict[str, Any] = {
            k: bytes.fromhex(v) if isinstance(v, str) else v for k, v in fields.items()
        }
        if cls is Superblock:
            values["flags"] = SuperFlags(values["flags"])
        return cls(**values)

    def unpacked(data: bytes) -> dict[str, Any]:
        record = cls.unpack(data)
        return {
            name: getattr(record, name).hex()
            if isinstance(getattr(record, name), bytes)
            else int(getattr(record, name))
            for name in cls.__dataclass_fields__
            if name != "size_of"
        }

    return (lambda fields: bytes(build(fields).pack())), unpacked


RECORD_TYPES: dict[str, _Record] = {
    "superblock": _dataclass(Superblock),
    "inode": _dataclass(InodeRecord),
    "dirent": _dataclass(DirentRecord),
    "chunkref": _dataclass(ChunkRef),
    "chunk": _dataclass(ChunkRecord),
    "blob": _dataclass(BlobRecord),
    "prefetch": (
        lambda fields: PREFETCH.pack(fields["inode"]),
        lambda data: {"inode": PREFETCH.unpack(data)[0]},
    ),
    "blob_chunk": _dataclass(BlobChunkEntry),
    "blob_trailer": _dataclass(BlobTrailer),
}

RECORD_CASES = [
    pytest.param(kind, vector, id=f"{kind}-{n}")
    for kind, vectors in RECORDS.items()
    if kind != "xattr_block"
    for n, vector in enumerate(vectors)
]


def test_every_record_has_vectors() -> None:
    assert set(RECORD_TYPES) == set(LAYOUT) == set(RECORDS) - {"xattr_block"}
    assert all(RECORDS[kind] for kind in RECORDS)


def test_wire_ids_are_pinned() -> None:
    assert {a.label: int(a) for a in DigestAlgorithm} == IDS["digest_algorithm"]
    assert {c.name.lower(): int(c) for c in CodecId} == IDS["codec"]
    assert {name: int(codec_by_name(name).codec_id) for name in IDS["codec"]} == IDS["codec"]
    assert {f.name.lower(): int(f) for f in SuperFlags if f.name} == IDS["superblock_flags"]
    assert IDS["format_version"] == FORMAT_VERSION
    assert BOOTSTRAP_MAGIC.hex() == IDS["bootstrap_magic"]
    assert BLOB_MAGIC.hex() == IDS["blob_magic"]


@pytest.mark.parametrize(("kind", "vector"), RECORD_CASES)
def test_record_packs_to_the_committed_bytes(kind: str, vector: dict[str, Any]) -> None:
    pack, unpack = RECORD_TYPES[kind]
    expected = bytes.fromhex(vector["hex"])
    assert pack(vector["fields"]) == expected, FORMAT_CHANGED
    assert unpack(expected) == vector["fields"], FORMAT_CHANGED


@pytest.mark.parametrize(("kind", "vector"), RECORD_CASES)
def test_record_fields_sit_where_the_format_doc_says(kind: str, vector: dict[str, Any]) -> None:
    """The committed bytes against the tables of docs/format.md, field by field."""
    data = bytes.fromhex(vector["hex"])
    layout = LAYOUT[kind]
    assert len(data) == layout["size"]
    for name, offset, size, spelling in layout["fields"]:
        piece = data[offset : offset + size]
        if spelling == "z":
            assert piece == bytes(size), f"{kind}.{name} at {offset}: reserved, must be zero"
        elif spelling.startswith("c:"):
            assert piece.hex() == spelling[2:], f"{kind}.{name} at {offset}"
        elif spelling == "b":
            assert piece.hex() == vector["fields"][name], f"{kind}.{name} at {offset}"
        else:
            value = int.from_bytes(piece, "little", signed=spelling == "i")
            assert value == vector["fields"][name], f"{kind}.{name} at {offset}"


@pytest.mark.parametrize("vector", RECORDS["xattr_block"])
def test_xattr_block_encodes_to_the_committed_bytes(vector: dict[str, Any]) -> None:
    xattrs = {bytes.fromhex(k): bytes.fromhex(v) for k, v in vector["xattrs"].items()}
    expected = bytes.fromhex(vector["hex"])
    assert encode_xattrs(xattrs) == expected, FORMAT_CHANGED
    assert decode_xattrs(expected) == xattrs, FORMAT_CHANGED


def _merkle_id(vector: dict[str, Any]) -> str:
    return f"{vector['algorithm']}-{vector['kind']}-{vector['attrs']['mode']:o}"


@pytest.mark.parametrize("vector", MERKLE, ids=_merkle_id)
def test_node_digest_is_the_committed_digest(vector: dict[str, Any]) -> None:
    algo = DigestAlgorithm.from_name(vector["algorithm"])
    fields: dict[str, Any] = dict(vector["attrs"])
    fields["xattr_block"] = bytes.fromhex(fields["xattr_block"])
    attrs = NodeAttrs(**fields)
    content = vector["content"]
    kind = vector["kind"]
    if kind == "file":
        digest = file_digest(algo, attrs, [bytes.fromhex(d) for d in content["chunk_digests"]])
    elif kind == "symlink":
        digest = symlink_digest(algo, attrs, bytes.fromhex(content["target"]))
    elif kind == "directory":
        children = [(bytes.fromhex(n), bytes.fromhex(d)) for n, d in content["children"]]
        digest = directory_digest(algo, attrs, children)
    else:
        digest = special_digest(algo, attrs)
    expected = bytes.fromhex(vector["digest"])
    assert digest == expected, FORMAT_CHANGED
    # The bytes hashed, as docs/format.md §3 spells them.
    preimage = bytes.fromhex(vector["preimage"])
    assert preimage.startswith(bytes.fromhex(IDS["merkle_domain"]) + attrs.encode())
    hasher = blake3.blake3 if vector["algorithm"] == "blake3" else hashlib.sha256
    assert hasher(preimage).digest() == expected


def test_merkle_vectors_cover_every_algorithm_and_node_type() -> None:
    covered = {(v["algorithm"], v["kind"]) for v in MERKLE}
    kinds = {"file", "symlink", "directory", "special"}
    assert covered == {(a.label, k) for a in DigestAlgorithm for k in kinds}


def _blob_id(vector: dict[str, Any]) -> str:
    return f"{vector['codec']}-{vector['algorithm']}"


@pytest.mark.parametrize("vector", BLOBS, ids=_blob_id)
def test_committed_blob_reads_back_its_chunks(vector: dict[str, Any]) -> None:
    blob = bytes.fromhex(vector["hex"])
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == vector["digest"]
    algo, entries = read_blob_table(
        vector["digest"], len(blob), lambda offset, size: blob[offset : offset + size]
    )
    assert algo.label == vector["algorithm"]
    assert len(entries) == len(vector["chunks"])
    for entry, chunk in zip(entries, vector["chunks"], strict=True):
        data = bytes.fromhex(chunk["data"])
        stored = blob[entry.compressed_offset : entry.compressed_offset + entry.compressed_size]
        assert stored.hex() == chunk["stored"]
        assert entry.codec == chunk["codec"]
        assert entry.digest.hex() == chunk["digest"] == algo.digest(data).hex()
        assert decoder(entry.codec).decompress(stored, entry.uncompressed_size) == data, (
            FORMAT_CHANGED
        )


@pytest.mark.parametrize("vector", BLOBS, ids=_blob_id)
def test_blob_writer_lays_out_the_committed_bytes(vector: dict[str, Any], tmp_path: Path) -> None:
    """The stored chunk bytes in, the committed blob out: the layout (§4) alone, whatever
    the compressor library of the day would make of the chunks."""
    algo = DigestAlgorithm.from_name(vector["algorithm"])
    rows: list[tuple[bytes, int, int, int, int]] = []
    parts: list[bytes] = []
    position = 0
    for chunk in vector["chunks"]:
        data, stored = bytes.fromhex(chunk["data"]), bytes.fromhex(chunk["stored"])
        rows.append((algo.digest(data), position, len(stored), len(data), chunk["codec"]))
        parts.append(stored)
        position += len(stored)
    path = tmp_path / "blob"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        writer = BlobWriter(fd, algo)
        writer.write(parts)
        digest, size = writer.finish(pack_table(rows), len(rows))
    finally:
        os.close(fd)
    assert path.read_bytes().hex() == vector["hex"], FORMAT_CHANGED
    assert (digest, size) == (vector["digest"], len(vector["hex"]) // 2)


def test_blob_vectors_cover_every_codec_and_algorithm() -> None:
    covered = {(v["codec"], v["algorithm"]) for v in BLOBS}
    assert covered == {(c.name.lower(), a.label) for c in CodecId for a in DigestAlgorithm}
