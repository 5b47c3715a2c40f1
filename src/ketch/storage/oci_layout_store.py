"""ImageStore over a local OCI image layout directory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import IO

from ketch.errors import NotFoundError, StorageError
from ketch.format.digests import oci_digest
from ketch.oci.layout import OciLayout
from ketch.oci.manifest import Descriptor, Manifest, Platform
from ketch.storage.store import ImageStore, checked_range, copy_blob_checked


class OciLayoutStore(ImageStore):
    def __init__(self, layout: OciLayout) -> None:
        self.layout = layout
        self.name = f"oci:{layout.root}"

    @classmethod
    def open(cls, root: Path) -> OciLayoutStore:
        return cls(OciLayout.open(root))

    @classmethod
    def create(cls, root: Path) -> OciLayoutStore:
        return cls(OciLayout.create(root))

    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        path = self.layout.blob_path(digest)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise NotFoundError(f"{self.name}: blob {digest} not found") from None
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        return checked_range(self.name, digest, offset, length, data)

    def blob_size(self, digest: str) -> int:
        return self.layout.blob_size(digest)

    def open_blob(self, digest: str) -> IO[bytes]:
        return self.layout.open_blob(digest)

    def read_blob(self, digest: str, max_size: int | None = None) -> bytes:
        return self.layout.read_blob(digest, max_size)

    def has_blob(self, digest: str) -> bool:
        return self.layout.has_blob(digest)

    def resolve(
        self, tag: str, platform: Platform | None = None
    ) -> tuple[Descriptor, Manifest, bytes]:
        return self.layout.manifest(tag, platform)

    def scratch_dir(self) -> Path:
        """The layout's temporary area for this process (``OciLayout.temp_dir``)."""
        return self.layout.temp_dir()

    def push_blob_file(self, path: Path, digest: str) -> None:
        if self.layout.has_blob(digest):
            path.unlink(missing_ok=True)
            return
        if path.parent.resolve() == self.scratch_dir().resolve():
            # Written by us, digest computed while writing: a rename publishes it whole.
            path.chmod(0o644)
            os.replace(path, self.layout.blob_path(digest))
            return
        with self.layout.blob_writer() as (out, digests):
            sha = hashlib.sha256()
            with path.open("rb") as src:
                while block := src.read(1 << 20):
                    sha.update(block)
                    out.write(block)
            found = oci_digest(sha)
            if found != digest:
                raise StorageError(f"{self.name}: pushing {digest}: file has digest {found}")
            digests.append(digest)
        path.unlink(missing_ok=True)

    def copy_blob_from(self, other: ImageStore, digest: str) -> None:
        if self.has_blob(digest):
            return
        with self.layout.blob_writer() as (out, digests):
            copy_blob_checked(other, digest, out)
            digests.append(digest)

    def put_manifest(self, data: bytes, media_type: str, tag: str) -> Descriptor:
        digest = self.layout.write_blob(data)
        descriptor = Descriptor(media_type, digest, len(data))
        self.layout.set_tag(tag, descriptor)
        return descriptor
