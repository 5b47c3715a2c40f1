"""Full integrity check of a bootstrap (docs/format.md §3, §5).

Recomputes every node's Merkle digest from its record, its children and its chunk
digests, and checks the structure the reader relies on: sorted unique names, chunk
references that tile each file exactly, every inode reachable exactly as its nlink says.
Problems are collected, not raised, so ``ketch check`` can name each place that failed.
The walk keeps its own stack: a tree may be deeper than Python's recursion limit, and a
directory that names its own ancestor is reported as a cycle, not followed.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from ketch.errors import KetchError, integrity
from ketch.format.bootstrap import ROOT_INODE, Bootstrap
from ketch.format.merkle import (
    NodeAttrs,
    directory_digest,
    file_digest,
    special_digest,
    symlink_digest,
)
from ketch.format.records import SUPERBLOCK_SIZE, InodeRecord
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


def shown_name(name: bytes) -> str:
    """A name as a problem line shows it: UTF-8 as is, other bytes and control characters
    escaped, so that a hostile name can never break a report into more lines."""
    text = name.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


@dataclass(slots=True)
class _Directory:
    """A directory being walked: its entries so far, and the one whose digest it awaits."""

    index: int
    path: str
    record: InodeRecord
    attrs: NodeAttrs
    entries: Iterator[tuple[bytes, int]]
    children: list[tuple[bytes, bytes]] = field(default_factory=list)
    previous: bytes | None = None
    subdirs: int = 0
    awaiting: bytes = b""  # the name of the subdirectory being walked


class _Walker:
    """Computes node digests bottom-up with its own stack (a tree may be deeper than
    Python's recursion limit), each inode once, and counts the names of each inode."""

    def __init__(self, bs: Bootstrap, problems: list[str]) -> None:
        self.bs = bs
        self.problems = problems
        self.done: dict[int, bytes] = {}
        self.links: dict[int, int] = {}
        self.on_path: set[int] = set()
        # Which dirents and chunkrefs a directory or a file has claimed: each belongs to
        # one, so the walk reads each once, and its work is bounded by the file's size.
        self.claimed_dirents = bytearray(bs.superblock.dirent_count)
        self.claimed_refs = bytearray(bs.superblock.chunkref_count)

    def _claim(self, claimed: bytearray, records: range, path: str, what: str, owner: str) -> None:
        """Mark ``records`` as ``path``'s; records another node claimed end the walk (it
        would read them again for every node sharing them, a square of the file's size)."""
        if records.stop > len(claimed):
            return  # out of its table: reading them raises the reader's own error
        if claimed.find(1, records.start, records.stop) >= 0:
            raise integrity(
                f"{self.bs.name}: {path}: {what} [{records.start}, {records.stop})",
                f"this {owner}'s own",
                f"shared with another {owner}",
            )
        claimed[records.start : records.stop] = b"\1" * len(records)

    def report(self, path: str, what: str, expected: object, found: object) -> None:
        self.problems.append(f"{self.bs.name}: {path}: {what}: expected {expected}, found {found}")

    def digest_of(self, index: int, path: str) -> bytes:
        first = self._visit(index, path)
        if isinstance(first, bytes):
            return first
        stack = [first]
        while True:
            directory = stack[-1]
            below = self._next_subdirectory(directory)
            if below is not None:
                stack.append(below)
                continue
            stack.pop()
            digest = self._finish(directory)
            if not stack:
                return digest
            self._add_child(stack[-1], stack[-1].awaiting, directory.index, digest)

    def _visit(self, index: int, path: str) -> bytes | _Directory:
        """A node's digest, or for a directory not walked yet, its walk to run."""
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
            if record.data_count:
                entries = range(record.data_start, record.data_start + record.data_count)
                self._claim(self.claimed_dirents, entries, path, "dirents", "directory")
            return _Directory(index, path, record, attrs, bs.children(index))
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
        return self._done(index, path, record, digest)

    def _done(self, index: int, path: str, record: InodeRecord, digest: bytes) -> bytes:
        if digest != record.digest:
            self.report(path, "node digest", record.digest.hex(), digest.hex())
        self.done[index] = digest
        return digest

    def _next_subdirectory(self, directory: _Directory) -> _Directory | None:
        """Take ``directory``'s entries up to the next subdirectory to walk."""
        for name, child in directory.entries:
            shown = directory.path.rstrip("/") + "/" + shown_name(name)
            if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
                self.report(shown, "entry name", "a plain name", repr(name))
            if directory.previous is not None and name <= directory.previous:
                self.report(shown, "entry order", f"after {directory.previous!r}", "not after")
            directory.previous = name
            if child == ROOT_INODE:
                self.report(shown, "entry inode", "not the root", child)
                continue
            found = self._visit(child, shown)
            if isinstance(found, _Directory):
                directory.awaiting = name
                return found
            self._add_child(directory, name, child, found)
        return None

    def _add_child(self, directory: _Directory, name: bytes, child: int, digest: bytes) -> None:
        if stat.S_ISDIR(self.bs.inode(child).mode):
            directory.subdirs += 1
        directory.children.append((name, digest))

    def _finish(self, directory: _Directory) -> bytes:
        self.on_path.discard(directory.index)
        record = directory.record
        if record.nlink != 2 + directory.subdirs:
            self.report(directory.path, "directory nlink", 2 + directory.subdirs, record.nlink)
        digest = directory_digest(self.bs.digest_algorithm, directory.attrs, directory.children)
        return self._done(directory.index, directory.path, record, digest)

    def _chunk_digests(self, index: int, path: str) -> list[bytes]:
        bs = self.bs
        record = bs.inode(index)
        position = 0
        digests: list[bytes] = []
        refs = bs.file_chunkrefs(index)
        self._claim(self.claimed_refs, refs, path, "chunkrefs", "file")
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
