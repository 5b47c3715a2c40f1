"""Digest algorithms for chunks and Merkle nodes (docs/format.md §1).

Every digest Ketch stores is 32 raw bytes; the algorithm is named once, in the
bootstrap superblock and the blob trailer, by a one-byte id.
"""

from __future__ import annotations

import enum
import hashlib
import mmap
from collections.abc import Callable
from typing import Protocol

import blake3

from ketch.errors import UsageError

DIGEST_SIZE = 32


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> object: ...

    def digest(self) -> bytes: ...


class DigestAlgorithm(enum.IntEnum):
    BLAKE3 = 1
    SHA256 = 2

    @classmethod
    def from_name(cls, name: str) -> DigestAlgorithm:
        try:
            return cls[name.upper()]
        except KeyError:
            raise UsageError(
                f"unknown digest algorithm {name!r}: expected blake3 or sha256"
            ) from None

    @property
    def label(self) -> str:
        return self.name.lower()

    def hasher(self) -> Callable[[bytes | memoryview], bytes]:
        return _HASHERS[self]

    def new(self) -> Hasher:
        """An incremental hasher (``update``/``digest``)."""
        if self is DigestAlgorithm.BLAKE3:
            return blake3.blake3()
        return hashlib.sha256()

    def digest(self, data: bytes | memoryview) -> bytes:
        return _HASHERS[self](data)

    def hexdigest(self, data: bytes | memoryview) -> str:
        return f"{self.label}:{_HASHERS[self](data).hex()}"


def _blake3(data: bytes | memoryview) -> bytes:
    # max_threads=1: the builder already runs one hash per worker thread.
    return blake3.blake3(data).digest()


def _sha256(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


_HASHERS: dict[DigestAlgorithm, Callable[[bytes | memoryview], bytes]] = {
    DigestAlgorithm.BLAKE3: _blake3,
    DigestAlgorithm.SHA256: _sha256,
}


class Sha256(Protocol):
    """A running ``hashlib.sha256()``."""

    @property
    def name(self) -> str: ...

    def hexdigest(self) -> str: ...


def oci_digest(sha: Sha256) -> str:
    """The OCI content digest (``sha256:<hex>``) of what a running sha256 has seen."""
    if sha.name != "sha256":
        raise ValueError(f"OCI content digest: expected a sha256 hash, found {sha.name}")
    return "sha256:" + sha.hexdigest()


def sha256_hex(data: bytes | memoryview | mmap.mmap) -> str:
    """An OCI content digest (``sha256:<hex>``) of whole bytes."""
    return oci_digest(hashlib.sha256(data))
