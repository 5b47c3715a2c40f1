"""Merkle digests of filesystem nodes (docs/format.md §3).

A node's digest covers its attributes and its content: a file's chunk digests in order,
a symlink's target, a directory's sorted (name, child digest) pairs. The root
directory's digest names the whole filesystem.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from ketch.format.digests import DigestAlgorithm

_DOMAIN = b"ketch-node-v1\0"

# The attributes every node digest starts with (§3).
NODE_ATTRS = struct.Struct(
    "<"
    "I"  # mode, type bits included
    "I"  # uid
    "I"  # gid
    "I"  # nlink
    "Q"  # size
    "Q"  # rdev
    "q"  # mtime_sec
    "I"  # mtime_nsec
    "I"  # xattr block size, the block follows
)
_NAME = struct.Struct("<H")  # name size before each directory entry name


@dataclass(frozen=True, slots=True)
class NodeAttrs:
    mode: int
    uid: int
    gid: int
    nlink: int
    size: int
    rdev: int
    mtime_sec: int
    mtime_nsec: int
    xattr_block: bytes

    def encode(self) -> bytes:
        return (
            NODE_ATTRS.pack(
                self.mode,
                self.uid,
                self.gid,
                self.nlink,
                self.size,
                self.rdev,
                self.mtime_sec,
                self.mtime_nsec,
                len(self.xattr_block),
            )
            + self.xattr_block
        )


def file_digest(algo: DigestAlgorithm, attrs: NodeAttrs, chunk_digests: Iterable[bytes]) -> bytes:
    h = algo.new()
    h.update(_DOMAIN + attrs.encode())
    for digest in chunk_digests:
        h.update(digest)
    return h.digest()


def symlink_digest(algo: DigestAlgorithm, attrs: NodeAttrs, target: bytes) -> bytes:
    return algo.digest(_DOMAIN + attrs.encode() + target)


def special_digest(algo: DigestAlgorithm, attrs: NodeAttrs) -> bytes:
    """Devices, fifos and sockets: attributes only."""
    return algo.digest(_DOMAIN + attrs.encode())


def directory_digest(
    algo: DigestAlgorithm, attrs: NodeAttrs, children: Iterable[tuple[bytes, bytes]]
) -> bytes:
    """``children`` are (name, child digest) sorted by name bytes."""
    h = algo.new()
    h.update(_DOMAIN + attrs.encode())
    for name, digest in children:
        h.update(_NAME.pack(len(name)) + name + digest)
    return h.digest()
