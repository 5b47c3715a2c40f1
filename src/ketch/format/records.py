"""Fixed-size binary records of the bootstrap and the blob (docs/format.md §2, §4).

Each record is a module-level ``struct.Struct`` (little endian, no padding) with one
comment per field, and a frozen dataclass with ``pack()``/``unpack()``. The layout on
disk is declared here and nowhere else.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import ClassVar

from ketch.errors import integrity

BOOTSTRAP_MAGIC = b"KETCHBS\x00"
BLOB_MAGIC = b"KETCHBL\x00"
FORMAT_VERSION = 1


class SuperFlags(enum.IntFlag):
    """Superblock flags (§2.1)."""

    CDC_CHUNKER = 0x1  # chunks were cut by content (FastCDC), not at fixed offsets


KNOWN_SUPER_FLAGS = SuperFlags.CDC_CHUNKER


# §2.1 Superblock: 256 bytes at offset 0.
SUPERBLOCK = struct.Struct(
    "<"
    "8s"  # magic: b"KETCHBS\0"
    "H"  # version: FORMAT_VERSION
    "H"  # flags: SuperFlags
    "B"  # digest_algorithm: DigestAlgorithm id (1 blake3, 2 sha256)
    "B"  # chunk_size_log2: nominal chunk size (fixed size, or CDC average)
    "2x"  # reserved, zero
    "Q"  # bootstrap_size: total bytes of the bootstrap file
    "Q"  # inode_offset
    "I"  # inode_count
    "Q"  # dirent_offset
    "I"  # dirent_count
    "Q"  # string_offset
    "Q"  # string_size
    "Q"  # chunkref_offset
    "I"  # chunkref_count
    "Q"  # chunk_offset
    "I"  # chunk_count
    "Q"  # blob_offset
    "I"  # blob_count
    "Q"  # prefetch_offset
    "I"  # prefetch_count
    "32s"  # root_digest: Merkle digest of the root directory (§3)
    "32s"  # body_digest: digest of every byte after the superblock
    "48x"  # reserved, zero
    "32s"  # superblock_digest: digest of the 224 bytes before this field
)
SUPERBLOCK_SIZE = 256


@dataclass(frozen=True, slots=True)
class Superblock:
    version: int
    flags: SuperFlags
    digest_algorithm: int
    chunk_size_log2: int
    bootstrap_size: int
    inode_offset: int
    inode_count: int
    dirent_offset: int
    dirent_count: int
    string_offset: int
    string_size: int
    chunkref_offset: int
    chunkref_count: int
    chunk_offset: int
    chunk_count: int
    blob_offset: int
    blob_count: int
    prefetch_offset: int
    prefetch_count: int
    root_digest: bytes
    body_digest: bytes
    superblock_digest: bytes = b"\0" * 32

    def pack(self) -> bytes:
        return SUPERBLOCK.pack(
            BOOTSTRAP_MAGIC,
            self.version,
            int(self.flags),
            self.digest_algorithm,
            self.chunk_size_log2,
            self.bootstrap_size,
            self.inode_offset,
            self.inode_count,
            self.dirent_offset,
            self.dirent_count,
            self.string_offset,
            self.string_size,
            self.chunkref_offset,
            self.chunkref_count,
            self.chunk_offset,
            self.chunk_count,
            self.blob_offset,
            self.blob_count,
            self.prefetch_offset,
            self.prefetch_count,
            self.root_digest,
            self.body_digest,
            self.superblock_digest,
        )

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> Superblock:
        if len(data) < SUPERBLOCK_SIZE:
            raise integrity("bootstrap superblock size", SUPERBLOCK_SIZE, len(data))
        fields = SUPERBLOCK.unpack_from(data, 0)
        if fields[0] != BOOTSTRAP_MAGIC:
            raise integrity("bootstrap magic", BOOTSTRAP_MAGIC, bytes(fields[0]))
        if fields[1] != FORMAT_VERSION:
            raise integrity("bootstrap format version", FORMAT_VERSION, fields[1])
        if fields[2] & ~int(KNOWN_SUPER_FLAGS):
            raise integrity(
                "bootstrap flags", f"within {int(KNOWN_SUPER_FLAGS):#x}", hex(fields[2])
            )
        return cls(fields[1], SuperFlags(fields[2]), *fields[3:])


# §2.2 Inode record: one per inode, addressed by index (inode number = index + 1).
INODE = struct.Struct(
    "<"
    "32s"  # digest: Merkle digest of this node (§3)
    "I"  # mode: st_mode, type bits included
    "I"  # uid
    "I"  # gid
    "I"  # nlink
    "Q"  # size: bytes of a regular file, length of a symlink target, else 0
    "Q"  # rdev: device number of a char/block device (Linux encoding), else 0
    "q"  # mtime_sec
    "I"  # mtime_nsec
    "I"  # parent: inode index of the first directory naming this inode (root: 0)
    "I"  # data_start: dir: first dirent; file: first chunkref; symlink: string offset
    "I"  # data_count: dir: dirents; file: chunkrefs; symlink: target length
    "I"  # xattr_offset: string-table offset of the xattr block (§2.8)
    "I"  # xattr_size: bytes of the xattr block, 0 when the inode has none
)


@dataclass(frozen=True, slots=True)
class InodeRecord:
    size_of: ClassVar[int] = INODE.size

    digest: bytes
    mode: int
    uid: int
    gid: int
    nlink: int
    size: int
    rdev: int
    mtime_sec: int
    mtime_nsec: int
    parent: int
    data_start: int
    data_count: int
    xattr_offset: int
    xattr_size: int

    def pack(self) -> bytes:
        return INODE.pack(
            self.digest,
            self.mode,
            self.uid,
            self.gid,
            self.nlink,
            self.size,
            self.rdev,
            self.mtime_sec,
            self.mtime_nsec,
            self.parent,
            self.data_start,
            self.data_count,
            self.xattr_offset,
            self.xattr_size,
        )

    @classmethod
    def unpack(cls, data: bytes | memoryview, offset: int = 0) -> InodeRecord:
        return cls(*INODE.unpack_from(data, offset))


# §2.3 Directory entry: a directory's entries are contiguous and sorted by name bytes.
DIRENT = struct.Struct(
    "<"
    "I"  # name_offset: string-table offset of the name
    "H"  # name_size: bytes of the name (1..255)
    "2x"  # reserved, zero
    "I"  # inode: inode index the name refers to
)


@dataclass(frozen=True, slots=True)
class DirentRecord:
    size_of: ClassVar[int] = DIRENT.size

    name_offset: int
    name_size: int
    inode: int

    def pack(self) -> bytes:
        return DIRENT.pack(self.name_offset, self.name_size, self.inode)

    @classmethod
    def unpack(cls, data: bytes | memoryview, offset: int = 0) -> DirentRecord:
        return cls(*DIRENT.unpack_from(data, offset))


# §2.4 Chunk reference: a regular file's chunks in file order.
CHUNKREF = struct.Struct(
    "<"
    "Q"  # file_offset: where this chunk's bytes start in the file
    "I"  # chunk: index into the chunk table
)


@dataclass(frozen=True, slots=True)
class ChunkRef:
    size_of: ClassVar[int] = CHUNKREF.size

    file_offset: int
    chunk: int

    def pack(self) -> bytes:
        return CHUNKREF.pack(self.file_offset, self.chunk)

    @classmethod
    def unpack(cls, data: bytes | memoryview, offset: int = 0) -> ChunkRef:
        return cls(*CHUNKREF.unpack_from(data, offset))


# §2.5 Chunk record: one per distinct chunk the image uses.
CHUNK = struct.Struct(
    "<"
    "32s"  # digest: of the uncompressed bytes
    "I"  # blob: index into the blob table
    "Q"  # compressed_offset: where the compressed bytes start in the blob
    "I"  # compressed_size
    "I"  # uncompressed_size
    "B"  # codec: CodecId
    "3x"  # reserved, zero
)


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    size_of: ClassVar[int] = CHUNK.size

    digest: bytes
    blob: int
    compressed_offset: int
    compressed_size: int
    uncompressed_size: int
    codec: int

    def pack(self) -> bytes:
        return CHUNK.pack(
            self.digest,
            self.blob,
            self.compressed_offset,
            self.compressed_size,
            self.uncompressed_size,
            self.codec,
        )

    @classmethod
    def unpack(cls, data: bytes | memoryview, offset: int = 0) -> ChunkRecord:
        return cls(*CHUNK.unpack_from(data, offset))


# §2.6 Blob record: a data blob the image's chunks live in.
BLOB = struct.Struct(
    "<"
    "32s"  # digest: sha256 of the whole blob (its OCI digest)
    "Q"  # size: bytes of the blob
    "I"  # chunk_count: chunks stored in the blob
    "4x"  # reserved, zero
)


@dataclass(frozen=True, slots=True)
class BlobRecord:
    size_of: ClassVar[int] = BLOB.size

    digest: bytes
    size: int
    chunk_count: int

    @property
    def oci_digest(self) -> str:
        return "sha256:" + self.digest.hex()

    def pack(self) -> bytes:
        return BLOB.pack(self.digest, self.size, self.chunk_count)

    @classmethod
    def unpack(cls, data: bytes | memoryview, offset: int = 0) -> BlobRecord:
        return cls(*BLOB.unpack_from(data, offset))


# §2.7 Prefetch entry: an inode index, in the order to prefetch.
PREFETCH = struct.Struct("<I")


# §4.2 Blob chunk-table entry: the blob's own description of each chunk it stores.
BLOB_CHUNK = struct.Struct(
    "<"
    "32s"  # digest: of the uncompressed bytes
    "Q"  # compressed_offset
    "I"  # compressed_size
    "I"  # uncompressed_size
    "B"  # codec: CodecId
    "3x"  # reserved, zero
)


@dataclass(frozen=True, slots=True)
class BlobChunkEntry:
    size_of: ClassVar[int] = BLOB_CHUNK.size

    digest: bytes
    compressed_offset: int
    compressed_size: int
    uncompressed_size: int
    codec: int

    def pack(self) -> bytes:
        return BLOB_CHUNK.pack(
            self.digest,
            self.compressed_offset,
            self.compressed_size,
            self.uncompressed_size,
            self.codec,
        )

    @classmethod
    def unpack(cls, data: bytes | memoryview, offset: int = 0) -> BlobChunkEntry:
        return cls(*BLOB_CHUNK.unpack_from(data, offset))


# §4.3 Blob trailer: the last 64 bytes of a blob.
BLOB_TRAILER = struct.Struct(
    "<"
    "8s"  # magic: b"KETCHBL\0"
    "H"  # version: FORMAT_VERSION
    "B"  # digest_algorithm: of the chunk digests and of table_digest
    "x"  # reserved, zero
    "I"  # chunk_count
    "Q"  # table_offset: where the chunk table starts (= bytes of chunk data)
    "32s"  # table_digest: digest of the chunk table bytes
    "8x"  # reserved, zero
)
BLOB_TRAILER_SIZE = 64


@dataclass(frozen=True, slots=True)
class BlobTrailer:
    digest_algorithm: int
    chunk_count: int
    table_offset: int
    table_digest: bytes

    def pack(self) -> bytes:
        return BLOB_TRAILER.pack(
            BLOB_MAGIC,
            FORMAT_VERSION,
            self.digest_algorithm,
            self.chunk_count,
            self.table_offset,
            self.table_digest,
        )

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> BlobTrailer:
        if len(data) != BLOB_TRAILER_SIZE:
            raise integrity("blob trailer size", BLOB_TRAILER_SIZE, len(data))
        magic, version, algo, count, table_offset, table_digest = BLOB_TRAILER.unpack(data)
        if data[11] != 0 or any(data[56:64]):
            raise integrity(
                "blob trailer reserved bytes", "zero", bytes(data[11:12]) + bytes(data[56:64])
            )
        if magic != BLOB_MAGIC:
            raise integrity("blob magic", BLOB_MAGIC, bytes(magic))
        if version != FORMAT_VERSION:
            raise integrity("blob format version", FORMAT_VERSION, version)
        return cls(algo, count, table_offset, table_digest)


if SUPERBLOCK.size != SUPERBLOCK_SIZE or BLOB_TRAILER.size != BLOB_TRAILER_SIZE:
    raise ImportError("record layout drifted from docs/format.md")
