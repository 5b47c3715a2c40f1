"""Lay out bootstrap tables into bytes (docs/format.md §2).

The builder hands over finished records; this module only orders the tables, fills in
the superblock and seals it with its digests. Same records in, same bytes out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ketch.format.digests import DigestAlgorithm
from ketch.format.records import (
    FORMAT_VERSION,
    PREFETCH,
    SUPERBLOCK_SIZE,
    BlobRecord,
    ChunkRecord,
    ChunkRef,
    DirentRecord,
    InodeRecord,
    Superblock,
    SuperFlags,
)


@dataclass(slots=True)
class BootstrapTables:
    digest_algorithm: DigestAlgorithm
    chunk_size: int
    flags: SuperFlags
    inodes: list[InodeRecord]
    dirents: list[DirentRecord]
    strings: bytes
    chunkrefs: list[ChunkRef]
    chunks: list[ChunkRecord]
    blobs: list[BlobRecord]
    prefetch: list[int] = field(default_factory=list)


def _align8(n: int) -> int:
    return (n + 7) & ~7


def write_bootstrap(tables: BootstrapTables) -> bytes:
    """Serialize: superblock, inodes, dirents, chunkrefs, chunks, blobs, prefetch, strings."""
    sections = [
        b"".join(r.pack() for r in tables.inodes),
        b"".join(r.pack() for r in tables.dirents),
        b"".join(r.pack() for r in tables.chunkrefs),
        b"".join(r.pack() for r in tables.chunks),
        b"".join(r.pack() for r in tables.blobs),
        b"".join(PREFETCH.pack(i) for i in tables.prefetch),
        tables.strings,
    ]
    offsets: list[int] = []
    body = bytearray()
    for section in sections:
        # Tables start 8-byte aligned, so an mmap reader never straddles odd offsets.
        body.extend(b"\0" * (_align8(SUPERBLOCK_SIZE + len(body)) - SUPERBLOCK_SIZE - len(body)))
        offsets.append(SUPERBLOCK_SIZE + len(body))
        body.extend(section)
    algo = tables.digest_algorithm
    root_digest = tables.inodes[0].digest
    superblock = Superblock(
        version=FORMAT_VERSION,
        flags=tables.flags,
        digest_algorithm=int(algo),
        chunk_size_log2=tables.chunk_size.bit_length() - 1,
        bootstrap_size=SUPERBLOCK_SIZE + len(body),
        inode_offset=offsets[0],
        inode_count=len(tables.inodes),
        dirent_offset=offsets[1],
        dirent_count=len(tables.dirents),
        chunkref_offset=offsets[2],
        chunkref_count=len(tables.chunkrefs),
        chunk_offset=offsets[3],
        chunk_count=len(tables.chunks),
        blob_offset=offsets[4],
        blob_count=len(tables.blobs),
        prefetch_offset=offsets[5],
        prefetch_count=len(tables.prefetch),
        string_offset=offsets[6],
        string_size=len(tables.strings),
        root_digest=root_digest,
        body_digest=algo.digest(bytes(body)),
    )
    unsealed = superblock.pack()
    sealed = unsealed[:224] + algo.digest(unsealed[:224])
    return sealed + bytes(body)
