"""ImageStore in memory: blobs and tags in dicts, for tests and for one-off images.

It keeps the contract every store keeps (``tests/contract``): blobs are stored whole and
only under their own digest, ranges are exact, a tag moves only after its manifest is
stored. ``corrupt`` replaces a blob's bytes behind the store's back, the way bit rot or a
hostile mirror would, so that readers can be shown to verify what they get.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tempfile
import threading
import weakref
from pathlib import Path
from typing import IO

from ketch.errors import IntegrityError, NotFoundError, StorageError
from ketch.oci.index import follow_to_manifest
from ketch.oci.manifest import Descriptor, Manifest, Platform
from ketch.storage.store import ImageStore, checked_range

_COPY_BLOCK = 1 << 20


class MemoryStore(ImageStore):
    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._blobs: dict[str, bytes] = {}
        self._tags: dict[str, Descriptor] = {}
        self._scratch: Path | None = None

    def copy_image_from(self, source: ImageStore, tag: str) -> None:
        """Hold ``source``'s image ``tag``: its manifest, config and layers, under the
        same tag."""
        descriptor, manifest, data = source.resolve(tag)
        for blob in (manifest.config, *manifest.layers):
            self.copy_blob_from(source, blob.digest)
        self.put_manifest(data, descriptor.media_type, tag)

    # -- the read path ----------------------------------------------------------------

    def _blob(self, digest: str) -> bytes:
        with self._lock:
            data = self._blobs.get(digest)
        if data is None:
            raise NotFoundError(f"{self.name}: blob {digest} not found")
        return data

    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        data = self._blob(digest)[offset : offset + length] if offset >= 0 else b""
        return checked_range(self.name, digest, offset, length, data)

    def blob_size(self, digest: str) -> int:
        return len(self._blob(digest))

    def open_blob(self, digest: str) -> IO[bytes]:
        return io.BytesIO(self._blob(digest))

    def read_blob(self, digest: str, max_size: int | None = None) -> bytes:
        data = self._blob(digest)
        if max_size is not None and len(data) > max_size:
            raise IntegrityError(
                f"{self.name}: blob {digest}: size: expected <= {max_size}, found more"
            )
        found = "sha256:" + hashlib.sha256(data).hexdigest()
        if found != digest:
            raise IntegrityError(
                f"{self.name}: blob {digest}: digest: expected {digest}, found {found}"
            )
        return data

    def has_blob(self, digest: str) -> bool:
        with self._lock:
            return digest in self._blobs

    def resolve(
        self, tag: str, platform: Platform | None = None
    ) -> tuple[Descriptor, Manifest, bytes]:
        with self._lock:
            descriptor = self._tags.get(tag)
        if descriptor is None:
            names = ", ".join(sorted(self._tags)) or "none"
            raise NotFoundError(f"{self.name}:{tag}: no such tag (tags: {names})")
        return follow_to_manifest(
            lambda digest: self.read_blob(digest, max_size=4 << 20),
            descriptor,
            platform,
            f"{self.name}:{tag}",
        )

    # -- the write path ---------------------------------------------------------------

    def scratch_dir(self) -> Path:
        """A temporary directory of this store's own, removed when the store is."""
        with self._lock:
            if self._scratch is None:
                self._scratch = Path(tempfile.mkdtemp(prefix="ketch-memory-store-"))
                weakref.finalize(self, shutil.rmtree, self._scratch, ignore_errors=True)
            return self._scratch

    def _put(self, digest: str, data: bytes) -> None:
        with self._lock:
            self._blobs.setdefault(digest, data)

    def push_blob_file(self, path: Path, digest: str) -> None:
        data = path.read_bytes()
        found = "sha256:" + hashlib.sha256(data).hexdigest()
        if found != digest:
            raise StorageError(f"{self.name}: pushing {digest}: file has digest {found}")
        self._put(digest, data)
        path.unlink(missing_ok=True)

    def copy_blob_from(self, other: ImageStore, digest: str) -> None:
        if self.has_blob(digest):
            return
        sha = hashlib.sha256()
        out = bytearray()
        with other.open_blob(digest) as src:
            while block := src.read(_COPY_BLOCK):
                sha.update(block)
                out += block
        found = "sha256:" + sha.hexdigest()
        if found != digest:
            raise IntegrityError(
                f"{other.name}: blob {digest}: digest: expected {digest}, found {found}"
            )
        self._put(digest, bytes(out))

    def put_manifest(self, data: bytes, media_type: str, tag: str) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self._put(digest, data)
        descriptor = Descriptor(media_type, digest, len(data))
        with self._lock:
            self._tags[tag] = descriptor
        return descriptor

    # -- faults, for tests ------------------------------------------------------------

    def corrupt(self, digest: str, data: bytes) -> None:
        """Replace the stored bytes of blob ``digest`` with ``data``."""
        with self._lock:
            self._blobs[digest] = data
