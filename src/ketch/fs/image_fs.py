"""An image as a filesystem: lookup, getattr, readdir, readlink, xattrs and read by inode.

Defined once, here; the FUSE daemon and ``ketch unpack`` are thin users of it. Inode
numbers are bootstrap inode indexes plus one (FUSE's root is 1), so hardlinks share one.

Sequential prefetch: when a file is read in order (from its start, or near where the
last reads of it ended), the chunks of the next ``sequential_prefetch`` bytes are handed
to the chunk source's ``prefetch`` (when it has one), which obtains them in the
background, so cache files are read, and chunks decompressed and verified, while the
reader is still busy with the bytes before them. The window starts at twice what the
reader has read so far, like kernel readahead, so a program that reads only a file's
header does not pull in megabytes behind it.

Chunks are handed to the source with their blob's one handle (``BlobRef``, from the
image's ``BlobTable``).
"""

from __future__ import annotations

import itertools
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ketch.errors import KetchError, NotFoundError
from ketch.format.bootstrap import ROOT_INODE, Bootstrap
from ketch.format.records import ChunkRecord
from ketch.fs.path_names import paths_of
from ketch.storage.blobs import BlobTable
from ketch.storage.chunk_reader import ChunkSource, PrefetchingSource

ROOT_INO = ROOT_INODE + 1
_DIR_SIZE = 4096
#: bytes of a sequentially read file whose chunks are prefetched ahead of the reader
DEFAULT_SEQUENTIAL_PREFETCH = 16 << 20
_STREAMS = 256  # files whose read position is remembered (least recently read dropped)


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
    def __init__(
        self,
        bootstrap: Bootstrap,
        reader: ChunkSource,
        *,
        sequential_prefetch: int = DEFAULT_SEQUENTIAL_PREFETCH,
    ) -> None:
        self.bootstrap = bootstrap
        self.blobs = BlobTable.of(bootstrap)
        self.reader = reader
        self._prefetcher = reader if isinstance(reader, PrefetchingSource) else None
        self._sequential_prefetch = sequential_prefetch if self._prefetcher is not None else 0
        # inode -> (end of the furthest read, bytes read in order so far)
        self._streams: OrderedDict[int, tuple[int, int]] = OrderedDict()
        self._streams_lock = threading.Lock()

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

    def paths_of(self, inos: Iterable[int]) -> dict[int, str]:
        """Paths naming ``inos`` (the first name, for hardlinks), found together: each
        directory that names one of them is scanned once (``path_names``). An inode no
        directory names is left out."""
        found = paths_of(self.bootstrap, (ino - 1 for ino in inos))
        return {index + 1: path.decode("utf-8", "surrogateescape") for index, path in found.items()}

    def path_of(self, ino: int) -> str | None:
        """A path naming ``ino``: a scan of each directory above it, so not for every read
        (the access trace records inode numbers and asks ``paths_of`` for all at once)."""
        return self.paths_of([ino]).get(ino)

    def readdir(self, ino: int) -> Iterator[tuple[bytes, int]]:
        for name, index in self.bootstrap.children(self._index(ino)):
            yield name, index + 1

    def readlink(self, ino: int) -> bytes:
        return self.bootstrap.symlink_target(self._index(ino))

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        return self.bootstrap.xattrs(self._index(ino))

    def read(self, ino: int, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` of a regular file, each chunk verified."""
        data = self._read(ino, offset, size, memory_only=False)
        if data is None:  # only a memory-only read gives up
            raise RuntimeError("ImageFS.read: no bytes and no error")
        return data

    def read_from_memory(self, ino: int, offset: int, size: int) -> bytes | None:
        """``read``, if the chunk source holds every chunk it needs in memory (no I/O,
        no hashing, no waiting: safe on an event loop); else None (call ``read``)."""
        if self._prefetcher is None:
            return None  # nothing is held in memory, nor read ahead
        return self._read(ino, offset, size, memory_only=True)

    def _read(self, ino: int, offset: int, size: int, *, memory_only: bool) -> bytes | None:
        index = self._index(ino)
        record = self.bootstrap.inode(index)
        if not stat.S_ISREG(record.mode):
            raise NotFoundError(f"inode {ino}: not a regular file")
        end = min(offset + size, record.size)
        if offset >= end:
            return b""
        pieces = self.bootstrap.chunks_for_range(index, offset, end - offset)
        fetched = self._from_memory(pieces) if memory_only else list(self._fetch(pieces))
        if fetched is None:
            return None
        # After the fetch: a miss extension has brought chunks that follow in the blob
        # already, and the prefetch then skips them.
        if self._sequential_prefetch and end < record.size:
            self._prefetch_after(ino, index, offset, end, record.size)
        parts: list[bytes | memoryview] = []
        for file_offset, data in fetched:
            lo = max(offset - file_offset, 0)
            hi = min(end - file_offset, len(data))
            parts.append(data if (lo, hi) == (0, len(data)) else memoryview(data)[lo:hi])
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]  # a whole chunk: no copy
        return b"".join(parts)  # one copy, of views

    def _prefetch_after(self, ino: int, index: int, offset: int, end: int, size: int) -> None:
        """If ``[offset, end)`` continues a sequential read, prefetch what follows it."""
        with self._streams_lock:
            stream = self._streams.pop(ino, None)
            furthest, streak = stream if stream is not None else (0, 0)
            # In order: from the start, or near the furthest read of the file (the
            # kernel readahead sends several requests at once, which may arrive out of
            # order).
            if offset == 0 or (
                stream is not None and abs(offset - furthest) <= self._sequential_prefetch
            ):
                streak += end - offset
            else:
                streak = 0  # a seek: no prefetch until it reads on in order
            furthest = max(furthest, end) if streak else end
            self._streams[ino] = (furthest, streak)
            if len(self._streams) > _STREAMS:
                self._streams.popitem(last=False)
        ahead = min(self._sequential_prefetch, 2 * streak, size - end)
        if ahead <= 0 or self._prefetcher is None:
            return
        try:
            pieces = self.bootstrap.chunks_for_range(index, end, ahead)
            for blob_index, group in itertools.groupby(pieces, key=lambda piece: piece[1].blob):
                blob = self.blobs[blob_index]
                self._prefetcher.prefetch(blob, [chunk for _, chunk in group])
        except KetchError:
            return  # a hint only: the read itself reports any error

    def _from_memory(self, pieces: list[tuple[int, ChunkRecord]]) -> list[tuple[int, bytes]] | None:
        """A file range's chunks from the source's memory, or None if any is missing."""
        if self._prefetcher is None:
            return None
        out: list[tuple[int, bytes]] = []
        for blob_index, group in itertools.groupby(pieces, key=lambda piece: piece[1].blob):
            run = list(group)
            blob = self.blobs[blob_index]
            datas = self._prefetcher.read_from_memory(blob, [chunk for _, chunk in run])
            if datas is None:
                return None
            out.extend(zip((offset for offset, _ in run), datas, strict=True))
        return out

    def _fetch(self, pieces: list[tuple[int, ChunkRecord]]) -> Iterator[tuple[int, bytes]]:
        """Fetch a file range's chunks, one merged read per run within a blob."""
        for blob_index, group in itertools.groupby(pieces, key=lambda piece: piece[1].blob):
            run = list(group)
            blob = self.blobs[blob_index]
            datas = self.reader.read(blob, [chunk for _, chunk in run])
            yield from zip((offset for offset, _ in run), datas, strict=True)
