"""Full integrity check of a bootstrap (docs/format.md §3, §5).

Recomputes every node's Merkle digest from its record, its children and its chunk
digests, and checks the structure the reader relies on: sorted unique names, chunk
references that tile each file exactly, every inode reachable exactly as its nlink says.
Problems are collected, not raised, so ``ketch check`` can name each place that failed.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from ketch.errors import KetchError
from ketch.format.bootstrap import ROOT_INODE, Bootstrap
from ketch.format.merkle import (
    NodeAttrs,
    directory_digest,
    file_digest,
    special_digest,
    symlink_digest,
)
from ketch.format.records import SUPERBLOCK_SIZE
from ketch.format.xattrs import encode_xattrs


def verify_bootstrap(bs: Bootstrap) -> list[str]:
    """Every problem found, one line each; empty when the bootstrap is sound."""
    problems: list[str] = []
    algo = bs.digest_algorithm
    body = algo.digest(bs.raw[SUPERBLOCK_SIZE:])
    if body != bs.superblock.body_digest:
        problems.append(
            f"{bs.name}: body digest: expected {bs.superblock.body_digest.hex()}, found {body.hex()}"
        )
    walker = _Walker(bs, problems)
    try:
        computed = walker.digest_of(ROOT_INODE, "/")
    except KetchError as exc:
        problems.append(f"{bs.name}: tree walk failed: {exc}")
        return problems
    if computed != bs.root_digest:
        problems.append(
            f"{bs.name}: root digest: expected {bs.root_digest.hex()}, found {computed.hex()}"
        )
    # Non-directories are named exactly nlink times; every inode is reachable.
    for index in range(bs.inode_count):
        seen = walker.links.get(index, 0)
        record = bs.inode(index)
        if seen == 0:
            problems.append(f"{bs.name}: inode {index}: reachable: expected yes, found no")
        elif not stat.S_ISDIR(record.mode) and seen != record.nlink:
            problems.append(
                f"{bs.name}: inode {index}: nlink: expected {seen}, found {record.nlink}"
            )
    return problems


@dataclass(slots=True)
class _Directory:
    """A directory being walked: its children so far, as (name, digest)."""

    index: int
    path: str
    name: bytes  # its name in the directory that led here
    attrs: NodeAttrs
    entries: Iterator[tuple[bytes, int]]
    children: list[tuple[bytes, bytes]] = field(default_factory=list)
    previous: bytes | None = None
    subdirs: int = 0


class _Walker:
    """Depth-first over the tree with a stack of its own, not Python's: a tree may be
    deeper than the interpreter's recursion limit."""

    def __init__(self, bs: Bootstrap, problems: list[str]) -> None:
        self.bs = bs
        self.problems = problems
        self.done: dict[int, bytes] = {}
        self.links: dict[int, int] = {}
        self.on_path: set[int] = set()
        self.stack: list[_Directory] = []

    def report(self, path: str, what: str, expected: object, found: object) -> None:
        self.problems.append(f"{self.bs.name}: {path}: {what}: expected {expected}, found {found}")

    def digest_of(self, index: int, path: str) -> bytes:
        """The digest of the node ``index`` (for a directory, of everything below it)."""
        digest = self._enter(index, path, b"")
        stack = self.stack
        while stack:
            top = stack[-1]
            item = next(top.entries, None)
            if item is None:
                stack.pop()
                digest = self._leave(top)
                if stack:
                    stack[-1].children.append((top.name, digest))
                continue
            name, child = item
            shown = top.path.rstrip("/") + "/" + name.decode(errors="replace")
            if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
                self.report(shown, "entry name", "a plain name", repr(name))
            if top.previous is not None and name <= top.previous:
                self.report(shown, "entry order", f"after {top.previous!r}", "not after")
            top.previous = name
            if child == ROOT_INODE:
                self.report(shown, "entry inode", "not the root", child)
                continue
            if stat.S_ISDIR(self.bs.inode(child).mode):
                top.subdirs += 1
            found = self._enter(child, shown, name)
            if found is not None:
                top.children.append((name, found))
        if digest is None:
            raise KetchError(f"{self.bs.name}: tree walk of {path} ended early")
        return digest

    def _enter(self, index: int, path: str, name: bytes) -> bytes | None:
        """A node's digest; None for a directory, which is pushed to be walked."""
        self.links[index] = self.links.get(index, 0) + 1
        if index in self.done:
            return self.done[index]
        bs = self.bs
        record = bs.inode(index)
        xattrs = bs.xattrs(index)
        attrs = NodeAttrs(
            record.mode,
            record.uid,
            record.gid,
            record.nlink,
            record.size,
            record.rdev,
            record.mtime_sec,
            record.mtime_nsec,
            encode_xattrs(xattrs),
        )
        mode = record.mode
        if stat.S_ISDIR(mode):
            if index in self.on_path:
                self.report(path, "directory cycle", "a tree", f"inode {index} again")
                return b""
            self.on_path.add(index)
            self.stack.append(_Directory(index, path, name, attrs, bs.children(index)))
            return None
        if stat.S_ISREG(mode):
            digest = file_digest(bs.digest_algorithm, attrs, self._chunk_digests(index, path))
        elif stat.S_ISLNK(mode):
            target = bs.symlink_target(index)
            if len(target) != record.size:
                self.report(path, "symlink size", record.size, len(target))
            digest = symlink_digest(bs.digest_algorithm, attrs, target)
        elif stat.S_IFMT(mode) in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            digest = special_digest(bs.digest_algorithm, attrs)
        else:
            self.report(path, "file type", "dir/file/symlink/device/fifo/socket", oct(mode))
            digest = b""
        return self._done(index, path, digest)

    def _leave(self, directory: _Directory) -> bytes:
        """A directory whose entries have all been walked: its digest."""
        index, path = directory.index, directory.path
        record = self.bs.inode(index)
        if record.nlink != 2 + directory.subdirs:
            self.report(path, "directory nlink", 2 + directory.subdirs, record.nlink)
        digest = directory_digest(self.bs.digest_algorithm, directory.attrs, directory.children)
        self.on_path.discard(index)
        return self._done(index, path, digest)

    def _done(self, index: int, path: str, digest: bytes) -> bytes:
        record = self.bs.inode(index)
        if digest != record.digest:
            self.report(path, "node digest", record.digest.hex(), digest.hex())
        self.done[index] = digest
        return digest

    def _chunk_digests(self, index: int, path: str) -> list[bytes]:
        bs = self.bs
        record = bs.inode(index)
        position = 0
        digests: list[bytes] = []
        known: dict[int, tuple[bytes, int]] = {}  # chunk index: digest, size (a file may
        # use one chunk a million times: a terabyte of holes)
        for file_offset, chunk_index in bs.file_chunk_table(index):
            digest_size = known.get(chunk_index)
            if digest_size is None:
                chunk = bs.chunk(chunk_index)
                digest_size = known[chunk_index] = (chunk.digest, chunk.uncompressed_size)
            if file_offset != position:
                self.report(path, f"chunk {len(digests)} file offset", position, file_offset)
            position = file_offset + digest_size[1]
            digests.append(digest_size[0])
        if position != record.size:
            self.report(path, "bytes covered by chunks", record.size, position)
        return digests
