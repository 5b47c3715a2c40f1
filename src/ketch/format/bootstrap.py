"""Read a bootstrap in place (docs/format.md §2).

Opening checks only the superblock (its own digest, and that every table lies inside the
file); every other record is decoded when asked for and bounds-checked then. A lookup
touches the dirents of the directories on its path and nothing else.
"""

from __future__ import annotations

import bisect
import mmap
import stat
from collections.abc import Iterator
from pathlib import Path

from ketch.errors import NotFoundError, integrity
from ketch.format.digests import DigestAlgorithm
from ketch.format.records import (
    CHUNKREF,
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
from ketch.format.xattrs import decode_xattrs

ROOT_INODE = 0


class Bootstrap:
    """A bootstrap's records, decoded on demand from bytes or an mmap."""

    def __init__(self, data: bytes | mmap.mmap, *, name: str = "bootstrap") -> None:
        self._data = data
        self._view = memoryview(data)
        self.name = name
        self.superblock = _open_superblock(self._view, name)
        self.digest_algorithm = DigestAlgorithm(self.superblock.digest_algorithm)

    @classmethod
    def open(cls, path: Path) -> Bootstrap:
        with path.open("rb") as f:
            try:
                data: bytes | mmap.mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:  # empty file: mmap refuses, the superblock check reports it
                data = b""
        return cls(data, name=str(path))

    def close(self) -> None:
        self._view.release()
        if isinstance(self._data, mmap.mmap):
            self._data.close()

    # -- whole-file facts -------------------------------------------------------------

    @property
    def raw(self) -> memoryview:
        return self._view

    @property
    def root_digest(self) -> bytes:
        return self.superblock.root_digest

    @property
    def chunk_size(self) -> int:
        return 1 << self.superblock.chunk_size_log2

    @property
    def cdc(self) -> bool:
        return bool(self.superblock.flags & SuperFlags.CDC_CHUNKER)

    @property
    def inode_count(self) -> int:
        return self.superblock.inode_count

    # -- records ----------------------------------------------------------------------

    def inode(self, index: int) -> InodeRecord:
        sb = self.superblock
        if not 0 <= index < sb.inode_count:
            raise integrity(f"{self.name}: inode index", f"< {sb.inode_count}", index)
        return InodeRecord.unpack(self._view, sb.inode_offset + index * InodeRecord.size_of)

    def dirent(self, index: int) -> DirentRecord:
        sb = self.superblock
        if not 0 <= index < sb.dirent_count:
            raise integrity(f"{self.name}: dirent index", f"< {sb.dirent_count}", index)
        return DirentRecord.unpack(self._view, sb.dirent_offset + index * DirentRecord.size_of)

    def chunkref(self, index: int) -> ChunkRef:
        sb = self.superblock
        if not 0 <= index < sb.chunkref_count:
            raise integrity(f"{self.name}: chunkref index", f"< {sb.chunkref_count}", index)
        return ChunkRef.unpack(self._view, sb.chunkref_offset + index * ChunkRef.size_of)

    def chunk(self, index: int) -> ChunkRecord:
        sb = self.superblock
        if not 0 <= index < sb.chunk_count:
            raise integrity(f"{self.name}: chunk index", f"< {sb.chunk_count}", index)
        record = ChunkRecord.unpack(self._view, sb.chunk_offset + index * ChunkRecord.size_of)
        if record.blob >= sb.blob_count:
            raise integrity(
                f"{self.name}: chunk {index} blob index", f"< {sb.blob_count}", record.blob
            )
        return record

    def blob(self, index: int) -> BlobRecord:
        sb = self.superblock
        if not 0 <= index < sb.blob_count:
            raise integrity(f"{self.name}: blob index", f"< {sb.blob_count}", index)
        return BlobRecord.unpack(self._view, sb.blob_offset + index * BlobRecord.size_of)

    def blobs(self) -> list[BlobRecord]:
        return [self.blob(i) for i in range(self.superblock.blob_count)]

    def chunks(self) -> Iterator[ChunkRecord]:
        for i in range(self.superblock.chunk_count):
            yield self.chunk(i)

    def prefetch(self) -> list[int]:
        sb = self.superblock
        return [
            PREFETCH.unpack_from(self._view, sb.prefetch_offset + i * PREFETCH.size)[0]
            for i in range(sb.prefetch_count)
        ]

    def string(self, offset: int, size: int) -> bytes:
        sb = self.superblock
        if offset + size > sb.string_size:
            raise integrity(f"{self.name}: string end", f"<= {sb.string_size}", offset + size)
        start = sb.string_offset + offset
        return bytes(self._view[start : start + size])

    # -- per inode --------------------------------------------------------------------

    def dirent_name(self, dirent: DirentRecord) -> bytes:
        return self.string(dirent.name_offset, dirent.name_size)

    def _dir_range(self, record: InodeRecord, index: int) -> range:
        if not stat.S_ISDIR(record.mode):
            raise NotFoundError(f"{self.name}: inode {index} is not a directory")
        end = record.data_start + record.data_count
        if end > self.superblock.dirent_count:
            raise integrity(
                f"{self.name}: inode {index} dirents end", f"<= {self.superblock.dirent_count}", end
            )
        return range(record.data_start, end)

    def children(self, index: int) -> Iterator[tuple[bytes, int]]:
        """(name, inode index) of a directory, sorted by name bytes."""
        for i in self._dir_range(self.inode(index), index):
            dirent = self.dirent(i)
            yield self.dirent_name(dirent), dirent.inode

    def lookup(self, dir_index: int, name: bytes) -> int | None:
        """Binary search of one directory's sorted entries."""
        entries = self._dir_range(self.inode(dir_index), dir_index)
        pos = bisect.bisect_left(entries, name, key=lambda i: self.dirent_name(self.dirent(i)))
        if pos < len(entries):
            dirent = self.dirent(entries[pos])
            if self.dirent_name(dirent) == name:
                if dirent.inode >= self.superblock.inode_count:
                    raise integrity(
                        f"{self.name}: dirent {entries[pos]} inode",
                        f"< {self.superblock.inode_count}",
                        dirent.inode,
                    )
                return dirent.inode
        return None

    def resolve(self, path: str | bytes) -> int:
        """The inode index of an absolute or root-relative path; symlinks are not followed."""
        raw = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else path
        index = ROOT_INODE
        for part in raw.split(b"/"):
            if part in (b"", b"."):
                continue
            found = self.lookup(index, part) if stat.S_ISDIR(self.inode(index).mode) else None
            if found is None:
                raise NotFoundError(f"{self.name}: no such path {raw.decode(errors='replace')!r}")
            index = found
        return index

    def symlink_target(self, index: int) -> bytes:
        record = self.inode(index)
        if not stat.S_ISLNK(record.mode):
            raise NotFoundError(f"{self.name}: inode {index} is not a symlink")
        return self.string(record.data_start, record.data_count)

    def xattrs(self, index: int) -> dict[bytes, bytes]:
        record = self.inode(index)
        if not record.xattr_size:
            return {}
        return decode_xattrs(self.string(record.xattr_offset, record.xattr_size))

    def file_chunkrefs(self, index: int) -> range:
        """Indexes into the chunkref table of a regular file's chunks, in file order."""
        record = self.inode(index)
        if not stat.S_ISREG(record.mode):
            return range(0)
        end = record.data_start + record.data_count
        if end > self.superblock.chunkref_count:
            raise integrity(
                f"{self.name}: inode {index} chunkrefs end",
                f"<= {self.superblock.chunkref_count}",
                end,
            )
        return range(record.data_start, end)

    def file_chunk_table(self, index: int) -> Iterator[tuple[int, int]]:
        """(file offset, chunk index) of each of a regular file's chunkrefs, in file order:
        ``file_chunkrefs`` in one pass over the table, for walks of a whole file (a file
        of 2^40 bytes of holes has 2^20 of them). Chunk indexes are checked by ``chunk``."""
        refs = self.file_chunkrefs(index)
        start = self.superblock.chunkref_offset + refs.start * ChunkRef.size_of
        table = self._view[start : start + len(refs) * ChunkRef.size_of]
        return CHUNKREF.iter_unpack(table)

    def chunks_for_range(self, index: int, offset: int, size: int) -> list[tuple[int, ChunkRecord]]:
        """(file offset, chunk) pairs covering ``[offset, offset+size)`` of a regular file."""
        refs = self.file_chunkrefs(index)
        if size <= 0 or not refs:
            return []
        # Last chunkref starting at or before offset.
        first = bisect.bisect_right(refs, offset, key=lambda i: self.chunkref(i).file_offset) - 1
        out: list[tuple[int, ChunkRecord]] = []
        end = offset + size
        for pos in range(max(first, 0), len(refs)):
            ref = self.chunkref(refs[pos])
            if ref.file_offset >= end:
                break
            out.append((ref.file_offset, self.chunk(ref.chunk)))
        return out


def _open_superblock(view: memoryview, name: str) -> Superblock:
    if len(view) < SUPERBLOCK_SIZE:
        raise integrity(f"{name}: bootstrap size", f">= {SUPERBLOCK_SIZE}", len(view))
    sb = Superblock.unpack(view)
    try:
        algo = DigestAlgorithm(sb.digest_algorithm)
    except ValueError:
        raise integrity(f"{name}: digest algorithm", "1 or 2", sb.digest_algorithm) from None
    expected = algo.digest(view[:224])
    if expected != sb.superblock_digest:
        raise integrity(f"{name}: superblock digest", expected.hex(), sb.superblock_digest.hex())
    if sb.bootstrap_size != len(view):
        raise integrity(f"{name}: bootstrap size", sb.bootstrap_size, len(view))
    if not 12 <= sb.chunk_size_log2 <= 24:
        raise integrity(f"{name}: chunk size log2", "12..24", sb.chunk_size_log2)
    if sb.inode_count < 1:
        raise integrity(f"{name}: inode count", ">= 1", sb.inode_count)
    tables = [
        ("inode", sb.inode_offset, sb.inode_count * InodeRecord.size_of),
        ("dirent", sb.dirent_offset, sb.dirent_count * DirentRecord.size_of),
        ("chunkref", sb.chunkref_offset, sb.chunkref_count * ChunkRef.size_of),
        ("chunk", sb.chunk_offset, sb.chunk_count * ChunkRecord.size_of),
        ("blob", sb.blob_offset, sb.blob_count * BlobRecord.size_of),
        ("prefetch", sb.prefetch_offset, sb.prefetch_count * PREFETCH.size),
        ("string", sb.string_offset, sb.string_size),
    ]
    for table, offset, size in tables:
        if offset < SUPERBLOCK_SIZE or offset + size > len(view):
            raise integrity(
                f"{name}: {table} table [{offset}, {offset + size})",
                f"within [{SUPERBLOCK_SIZE}, {len(view)})",
                "outside",
            )
    return sb
