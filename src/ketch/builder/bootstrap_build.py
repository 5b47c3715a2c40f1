"""Flatten the merged tree into bootstrap tables (docs/format.md §2, §3).

Inodes are numbered breadth-first with names sorted by bytes, so a directory's entries
are contiguous and its children follow it; a hardlinked inode is numbered where it is
first met. Digests are computed bottom-up. Every table comes out in an order that
depends on the tree alone.
"""

from __future__ import annotations

import stat
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from ketch.builder.chunk_index import ChunkIndex
from ketch.builder.tree import Node
from ketch.errors import BadLayerError
from ketch.format.bootstrap_writer import BootstrapTables
from ketch.format.digests import DigestAlgorithm
from ketch.format.merkle import (
    NodeAttrs,
    directory_digest,
    file_digest,
    special_digest,
    symlink_digest,
)
from ketch.format.records import (
    BlobRecord,
    ChunkRecord,
    ChunkRef,
    DirentRecord,
    InodeRecord,
    SuperFlags,
)
from ketch.format.xattrs import encode_xattrs

_MAX_NAME = 255
_MAX_U32 = 0xFFFFFFFF


class _Strings:
    """The string table, storing each distinct string once."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._offsets: dict[bytes, int] = {}

    def add(self, value: bytes) -> int:
        offset = self._offsets.get(value)
        if offset is None:
            offset = len(self._data)
            if offset + len(value) > _MAX_U32:
                raise BadLayerError("string table exceeds 4 GiB")
            self._data += value
            self._offsets[value] = offset
        return offset

    def bytes(self) -> bytes:
        return bytes(self._data)


def flatten(
    root: Node,
    index: ChunkIndex,
    blob_order: list[str],
    blob_sizes: Mapping[str, tuple[int, int]],
    *,
    algo: DigestAlgorithm,
    chunk_size: int,
    cdc: bool,
    clamp_mtime: int | None = None,
    prefetch: Sequence[Node] = (),
) -> BootstrapTables:
    """``prefetch``: regular files to fetch first after a mount, in order (§2.7)."""
    # 1. Number inodes breadth-first; count names per inode for nlink.
    order: list[Node] = [root]
    number: dict[int, int] = {id(root): 0}
    names: dict[int, int] = {id(root): 1}
    parent_of: list[int] = [0]
    entries: list[list[tuple[bytes, int]]] = [[]]  # per inode: sorted (name, child index)
    queue: deque[int] = deque([0])
    while queue:
        index_ = queue.popleft()
        node = order[index_]
        if node.children is None:
            continue
        for name in sorted(node.children):
            if not name or len(name) > _MAX_NAME or b"/" in name or name in (b".", b".."):
                raise BadLayerError(f"entry name {name!r}: expected 1 to {_MAX_NAME} bytes, no '/'")
            child = node.children[name]
            key = id(child)
            if key not in number:
                number[key] = len(order)
                order.append(child)
                parent_of.append(index_)
                entries.append([])
                names[key] = 0
                if child.children is not None:
                    queue.append(number[key])
            elif child.children is not None:
                raise BadLayerError(f"directory {name!r} is linked twice")
            names[key] += 1
            entries[index_].append((name, number[key]))

    # 2. Chunk table in order of first use; blob table in the given order.
    blob_index = {digest: i for i, digest in enumerate(blob_order)}
    chunk_number: dict[bytes, int] = {}
    chunks: list[ChunkRecord] = []
    for node in order:
        for digest, size in node.chunks:
            if digest in chunk_number:
                continue
            location = index.get(digest)
            if location is None or location.blob is None:
                raise BadLayerError(f"chunk {digest.hex()} has no stored location")
            chunk_number[digest] = len(chunks)
            chunks.append(
                ChunkRecord(
                    digest,
                    blob_index[location.blob],
                    location.offset,
                    location.compressed_size,
                    size,
                    location.codec,
                )
            )

    # 3. Records and digests, children before parents (reverse breadth-first order).
    strings = _Strings()
    add_string = strings.add
    dirents: list[DirentRecord] = []
    dirent_start: list[int] = []
    for children in entries:
        dirent_start.append(len(dirents))
        for name, child_index in children:
            dirents.append(DirentRecord(add_string(name), len(name), child_index))
    chunkrefs: list[ChunkRef] = []
    chunkref_start: list[int] = []
    for node in order:
        chunkref_start.append(len(chunkrefs))
        position = 0
        for digest, size in node.chunks:
            chunkrefs.append(ChunkRef(position, chunk_number[digest]))
            position += size
    # Non-directories first: a hardlinked file is numbered where it is first met, which
    # may be after a directory that also names it. Then directories, deepest first
    # (breadth-first numbering puts every directory after its parent).
    count = len(order)
    digests: list[bytes] = [b""] * count
    records: list[InodeRecord | None] = [None] * count
    backwards = range(count - 1, -1, -1)
    by_kind = [i for i in backwards if order[i].children is None]
    by_kind += [i for i in backwards if order[i].children is not None]
    for i in by_kind:
        node = order[i]
        record = _record(
            node,
            entries[i],
            digests,
            names[id(node)],
            parent_of[i],
            add_string,
            dirent_start[i],
            chunkref_start[i],
            algo,
            clamp_mtime,
        )
        digests[i] = record.digest
        records[i] = record
    inodes = [r for r in records if r is not None]

    blobs = []
    for blob_digest in blob_order:
        blob_size, count = blob_sizes[blob_digest]
        blobs.append(BlobRecord(bytes.fromhex(blob_digest[7:]), blob_size, count))
    return BootstrapTables(
        digest_algorithm=algo,
        chunk_size=chunk_size,
        flags=SuperFlags.CDC_CHUNKER if cdc else SuperFlags(0),
        inodes=inodes,
        dirents=dirents,
        strings=strings.bytes(),
        chunkrefs=chunkrefs,
        chunks=chunks,
        blobs=blobs,
        prefetch=[number[id(node)] for node in prefetch if id(node) in number],
    )


def _record(
    node: Node,
    children: list[tuple[bytes, int]],
    digests: list[bytes],
    name_count: int,
    parent: int,
    add_string: Callable[[bytes], int],
    dirent_start: int,
    chunkref_start: int,
    algo: DigestAlgorithm,
    clamp_mtime: int | None,
) -> InodeRecord:
    # Runs once per inode, on the build's last, single-threaded stretch: kept lean.
    mode = node.mode
    sec, nsec = node.mtime_sec, node.mtime_nsec
    if clamp_mtime is not None and (sec, nsec) > (clamp_mtime, 0):
        sec, nsec = clamp_mtime, 0
    xattr_block = encode_xattrs(node.xattrs) if node.xattrs else b""
    xattr_offset = add_string(xattr_block) if xattr_block else 0
    kind = stat.S_IFMT(mode)
    size = rdev = 0
    if kind == stat.S_IFDIR:
        nlink = 2
        for child in (node.children or {}).values():
            if child.children is not None:
                nlink += 1
        attrs = NodeAttrs(mode, node.uid, node.gid, nlink, 0, 0, sec, nsec, xattr_block)
        digest = directory_digest(algo, attrs, [(name, digests[c]) for name, c in children])
        data_start, data_count = dirent_start, len(children)
    elif kind == stat.S_IFREG:
        nlink = name_count
        chunks = node.chunks
        for _, chunk_size in chunks:
            size += chunk_size
        attrs = NodeAttrs(mode, node.uid, node.gid, nlink, size, 0, sec, nsec, xattr_block)
        digest = file_digest(algo, attrs, [d for d, _ in chunks])
        data_start, data_count = chunkref_start, len(chunks)
    elif kind == stat.S_IFLNK:
        nlink = name_count
        size = len(node.link_target)
        attrs = NodeAttrs(mode, node.uid, node.gid, nlink, size, 0, sec, nsec, xattr_block)
        digest = symlink_digest(algo, attrs, node.link_target)
        data_start, data_count = add_string(node.link_target), size
    else:
        nlink = name_count
        if kind in (stat.S_IFCHR, stat.S_IFBLK):
            rdev = node.rdev
        attrs = NodeAttrs(mode, node.uid, node.gid, nlink, 0, rdev, sec, nsec, xattr_block)
        digest = special_digest(algo, attrs)
        data_start = data_count = 0
    return InodeRecord(
        digest,
        mode,
        node.uid,
        node.gid,
        nlink,
        size,
        rdev,
        sec,
        nsec,
        parent,
        data_start,
        data_count,
        xattr_offset,
        len(xattr_block),
    )
