"""The storage interface: one image repository (an OCI layout dir, a registry repository,
an S3 prefix, memory), as builders and mounts see it; and ``BlobReader``, the part of it
the chunk readers use.

Reads are by blob digest and byte range, the only thing the lazy read path needs; writes
are whole verified blobs, then a manifest, then a tag, in that order, so that a tag never
names missing blobs. Storage knows blobs, never inodes.
"""

from __future__ import annotations

import abc
import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol

from ketch.errors import IntegrityError
from ketch.format.digests import oci_digest
from ketch.oci.manifest import Descriptor, Manifest, Platform, load_json
from ketch.storage.retry import FaultStats

MAX_CONFIG_SIZE = 4 << 20


class BlobReader(Protocol):
    """What the chunk readers need of a store: verified range reads and blob sizes.
    Every ``ImageStore`` is one."""

    #: how the store is named in messages
    name: str

    def read_range_verified(
        self, digest: str, offset: int, length: int, verify: Callable[[bytes], None]
    ) -> bytes:
        """Exactly ``length`` bytes at ``offset`` of blob ``digest``, for which
        ``verify(data)`` did not raise; or raise (IntegrityError if no source's bytes
        passed ``verify``)."""
        ...

    def blob_size(self, digest: str) -> int: ...


class ImageStore(abc.ABC):
    """Blobs and manifests of one repository."""

    #: how the store is named in messages, e.g. ``oci:/srv/images``
    name: str

    def fault_stats(self) -> FaultStats:
        """Faults the store's requests met (retries and failures by cause, timeouts);
        none for a store without a network (``retry.py``)."""
        return FaultStats()

    # -- the read path ----------------------------------------------------------------

    @abc.abstractmethod
    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset`` of a blob, or raise."""

    def read_range_verified(
        self, digest: str, offset: int, length: int, verify: Callable[[bytes], None]
    ) -> bytes:
        """``read_range``, then ``verify(data)``, which raises IntegrityError on wrong bytes.

        Only the reader knows what the bytes of a range must be (the chunk digests); a
        store with several sources for one blob (registry mirrors) overrides this to try
        the next source when a range fails ``verify``, so wrong bytes from one of them
        are never served."""
        data = self.read_range(digest, offset, length)
        verify(data)
        return data

    def range_reader(self, digest: str) -> Callable[[int, int], bytes]:
        """``read_range`` bound to one blob: ``(offset, length) -> bytes``."""
        return lambda offset, length: self.read_range(digest, offset, length)

    @abc.abstractmethod
    def blob_size(self, digest: str) -> int: ...

    @abc.abstractmethod
    def open_blob(self, digest: str) -> IO[bytes]:
        """The whole blob as a stream; the caller checks its digest as it reads."""

    @abc.abstractmethod
    def read_blob(self, digest: str, max_size: int | None = None) -> bytes:
        """The whole blob, checked against its digest."""

    def read_config(self, manifest: Manifest) -> dict[str, Any]:
        """The image config ``manifest`` names, checked and parsed (at most 4 MiB)."""
        return load_json(
            self.read_blob(manifest.config.digest, max_size=MAX_CONFIG_SIZE), "image config"
        )

    @abc.abstractmethod
    def has_blob(self, digest: str) -> bool: ...

    @abc.abstractmethod
    def resolve(
        self, tag: str, platform: Platform | None = None
    ) -> tuple[Descriptor, Manifest, bytes]:
        """The image manifest a tag names (a platform chosen from an index)."""

    # -- the write path ---------------------------------------------------------------

    @abc.abstractmethod
    def scratch_dir(self) -> Path:
        """A local directory for temporary blob files, ideally on the store's filesystem."""

    @abc.abstractmethod
    def push_blob_file(self, path: Path, digest: str) -> None:
        """Store a finished local file as blob ``digest`` (the file may be consumed)."""

    def push_blob_bytes(self, data: bytes, digest: str) -> None:
        with tempfile.NamedTemporaryFile(dir=self.scratch_dir(), prefix=".tmp-", delete=False) as f:
            f.write(data)
        tmp = Path(f.name)
        try:
            self.push_blob_file(tmp, digest)
        finally:
            tmp.unlink(missing_ok=True)

    @abc.abstractmethod
    def copy_blob_from(self, other: ImageStore, digest: str) -> None:
        """Make ``digest`` present here, taking it from ``other``; no-op if already here."""

    @abc.abstractmethod
    def put_manifest(self, data: bytes, media_type: str, tag: str) -> Descriptor:
        """Store a manifest (its blobs must be present) and point ``tag`` at it, last."""


_COPY_BLOCK = 1 << 20


def copy_blob_checked(source: ImageStore, digest: str, out: IO[bytes]) -> None:
    """Stream blob ``digest`` of ``source`` into ``out``, checking it is what its name says
    (the caller discards ``out`` on the IntegrityError)."""
    sha = hashlib.sha256()
    with source.open_blob(digest) as src:
        while block := src.read(_COPY_BLOCK):
            sha.update(block)
            out.write(block)
    found = oci_digest(sha)
    if found != digest:
        raise IntegrityError(
            f"{source.name}: blob {digest}: digest: expected {digest}, found {found}"
        )


def checked_range(store_name: str, digest: str, offset: int, length: int, data: bytes) -> bytes:
    """``data``, if it is the ``length`` bytes asked for at ``offset``; else the one error
    every store gives for a short range."""
    if len(data) != length:
        raise IntegrityError(
            f"{store_name}: blob {digest} range [{offset}, {offset + length}): "
            f"expected {length} bytes, found {len(data)}"
        )
    return data
