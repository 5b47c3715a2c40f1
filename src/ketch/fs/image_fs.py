"""An image as a filesystem: lookup, getattr, readdir, readlink, xattrs and read by inode.

Defined once, here; the FUSE daemon and ``ketch unpack`` are thin users of it. Inode
numbers are bootstrap inode indexes plus one (FUSE's root is 1), so hardlinks share one.
"""

from __future__ import annotations

import itertools
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from ketch.errors import NotFoundError
from ketch.format.bootstrap import ROOT_INODE, Bootstrap
from ketch.format.records import ChunkRecord
from ketch.storage.chunk_reader import ChunkSource

ROOT_INO = ROOT_INODE + 1
_DIR_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Attr:
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    size: int
    rdev: int
    mtime_ns: int

    @property
    def blocks(self) -> int:
        return (self.size + 511) // 512


class ImageFS:
    def __init__(self, bootstrap: Bootstrap, reader: ChunkSource) -> None:
        self.bootstrap = bootstrap
        self.reader = reader

    def _index(self, ino: int) -> int:
        if not 1 <= ino <= self.bootstrap.inode_count:
            raise NotFoundError(f"inode {ino}: no such inode")
        return ino - 1

    def getattr(self, ino: int) -> Attr:
        record = self.bootstrap.inode(self._index(ino))
        size = _DIR_SIZE if stat.S_ISDIR(record.mode) else record.size
        return Attr(
            ino,
            record.mode,
            record.uid,
            record.gid,
            record.nlink,
            size,
            record.rdev,
            record.mtime_sec * 1_000_000_000 + record.mtime_nsec,
        )

    def lookup(self, parent: int, name: bytes) -> int | None:
        index = self.bootstrap.lookup(self._index(parent), name)
        return None if index is None else index + 1

    def resolve(self, path: str | bytes) -> int:
        return self.bootstrap.resolve(path) + 1

    def parent(self, ino: int) -> int:
        """The directory that first names ``ino`` (the root is its own parent)."""
        return self.bootstrap.inode(self._index(ino)).parent + 1

    def path_of(self, ino: int) -> str:
        """A path naming ``ino`` (the first name, for hardlinks), by walking up parents."""
        parts: list[bytes] = []
        seen = 0
        while ino != ROOT_INO and seen < 4096:
            parent = self.parent(ino)
            name = next((n for n, child in self.readdir(parent) if child == ino), None)
            if name is None:
                break
            parts.append(name)
            ino = parent
            seen += 1
        return "/" + b"/".join(reversed(parts)).decode("utf-8", "surrogateescape")

    def readdir(self, ino: int) -> Iterator[tuple[bytes, int]]:
        for name, index in self.bootstrap.children(self._index(ino)):
            yield name, index + 1

    def readlink(self, ino: int) -> bytes:
        return self.bootstrap.symlink_target(self._index(ino))

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        return self.bootstrap.xattrs(self._index(ino))

    def read(self, ino: int, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` of a regular file, each chunk verified."""
        index = self._index(ino)
        record = self.bootstrap.inode(index)
        if not stat.S_ISREG(record.mode):
            raise NotFoundError(f"inode {ino}: not a regular file")
        end = min(offset + size, record.size)
        if offset >= end:
            return b""
        pieces = self.bootstrap.chunks_for_range(index, offset, end - offset)
        parts: list[bytes | memoryview] = []
        for file_offset, data in self._fetch(pieces):
            lo = max(offset - file_offset, 0)
            hi = min(end - file_offset, len(data))
            parts.append(data if (lo, hi) == (0, len(data)) else memoryview(data)[lo:hi])
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]  # a whole chunk: no copy
        return b"".join(parts)  # one copy, of views

    def _fetch(self, pieces: list[tuple[int, ChunkRecord]]) -> Iterator[tuple[int, bytes]]:
        """Fetch a file range's chunks, one merged read per run within a blob."""
        for blob_index, group in itertools.groupby(pieces, key=lambda piece: piece[1].blob):
            run = list(group)
            blob = self.bootstrap.blob(blob_index).oci_digest
            datas = self.reader.read(blob, [chunk for _, chunk in run])
            yield from zip((offset for offset, _ in run), datas, strict=True)
