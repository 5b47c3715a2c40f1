"""ImageStore over one repository of an OCI registry.

Reads are HTTP requests through ``RegistryClient``: a range read is one ``GET`` with
``Range``; whole blobs and manifests are checked against their digests. A manifest is a
blob too, as in an OCI layout: a blob read that the registry does not know as a blob
falls back to the manifest of that digest. Writes skip blobs the repository already has
(``HEAD``), mount blobs from another repository of the same registry instead of
uploading them, and push a manifest by tag. A manifest with a ``subject`` is also listed
in the subject's referrers: by the registry itself where it implements the referrers API
(it answers ``OCI-Subject``), else in the fallback tag index.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import IO

from ketch.errors import IntegrityError, NotFoundError
from ketch.oci.manifest import Descriptor, Manifest, Platform, load_json
from ketch.storage.registry.client import RegistryClient
from ketch.storage.retry import FaultStats
from ketch.storage.store import ImageStore
from ketch.temp_area import local_spool_area


class RegistryStore(ImageStore):
    def __init__(self, client: RegistryClient, repository: str) -> None:
        self.client = client
        self.repository = repository
        self.name = client.where(repository)
        self._scratch: Path | None = None
        self._scratch_cleanup: weakref.finalize[[str], RegistryStore] | None = None

    def close(self) -> None:
        """Remove the scratch directory and close the client's connections."""
        if self._scratch_cleanup is not None:
            self._scratch_cleanup()
        self._scratch = None
        self.client.close()

    def fault_stats(self) -> FaultStats:
        return self.client.fault_stats()

    # -- the read path ----------------------------------------------------------------

    def read_range(self, digest: str, offset: int, length: int) -> bytes:
        try:
            return self.client.read_range(self.repository, digest, offset, length)
        except NotFoundError:
            data = self._manifest_as_blob(digest)
            if data is None:
                raise
        if offset < 0 or offset + length > len(data):
            raise IntegrityError(
                f"{self.name}: manifest {digest} range [{offset}, {offset + length}): "
                f"expected {length} bytes, found {max(0, min(len(data) - offset, length))}"
            )
        return data[offset : offset + length]

    def blob_size(self, digest: str) -> int:
        size = self.client.blob_size(self.repository, digest)
        if size is None:
            manifest = self.client.head_manifest(self.repository, digest)
            if manifest is None:
                raise NotFoundError(f"{self.name}: blob {digest} not found")
            size = manifest.size
        return size

    def open_blob(self, digest: str) -> IO[bytes]:
        try:
            return self.client.open_blob(self.repository, digest)
        except NotFoundError:
            data = self._manifest_as_blob(digest)
            if data is None:
                raise
            return io.BytesIO(data)

    def read_blob(self, digest: str, max_size: int | None = None) -> bytes:
        try:
            return self.client.read_blob(self.repository, digest, max_size)
        except NotFoundError:
            data = self._manifest_as_blob(digest)
            if data is None:
                raise
        if max_size is not None and len(data) > max_size:
            raise IntegrityError(
                f"{self.name}: manifest {digest}: size: expected <= {max_size}, found {len(data)}"
            )
        return data

    def has_blob(self, digest: str) -> bool:
        return (
            self.client.blob_size(self.repository, digest) is not None
            or self.client.head_manifest(self.repository, digest) is not None
        )

    def _manifest_as_blob(self, digest: str) -> bytes | None:
        """The manifest named ``digest`` (checked against it), or None."""
        try:
            return self.client.get_manifest(self.repository, digest)[1]
        except NotFoundError:
            return None

    def resolve(
        self, tag: str, platform: Platform | None = None
    ) -> tuple[Descriptor, Manifest, bytes]:
        """The image manifest of a tag or a ``sha256:`` digest."""
        return self.client.resolve(self.repository, tag, platform)

    def referrers(self, digest: str, artifact_type: str | None = None) -> list[Descriptor]:
        """Manifests of this repository whose ``subject`` is ``digest``."""
        return self.client.referrers(self.repository, digest, artifact_type)

    # -- the write path ---------------------------------------------------------------

    def scratch_dir(self) -> Path:
        """A private temporary directory, removed when the store is closed or collected."""
        if self._scratch is None:
            path = tempfile.mkdtemp(prefix="registry-", dir=local_spool_area().own_dir())
            self._scratch = Path(path)
            self._scratch_cleanup = weakref.finalize(self, _remove_tree, path)
        return self._scratch

    def push_blob_file(self, path: Path, digest: str) -> None:
        try:
            if self.client.blob_size(self.repository, digest) is not None:
                self.client.stats.add(blobs_skipped=1)
                return
            size = path.stat().st_size
            self.client.push_blob(self.repository, digest, size, lambda: path.open("rb"))
        finally:
            path.unlink(missing_ok=True)

    def copy_blob_from(self, other: ImageStore, digest: str) -> None:
        if self.client.blob_size(self.repository, digest) is not None:
            self.client.stats.add(blobs_skipped=1)
            return
        mount_from = None
        if (
            isinstance(other, RegistryStore)
            and other.client.base_url == self.client.base_url
            and other.repository != self.repository
        ):
            mount_from = other.repository
        size = other.blob_size(digest)
        self.client.push_blob(
            self.repository,
            digest,
            size,
            lambda: other.open_blob(digest),
            mount_from=mount_from,
            source_name=other.name,
        )

    def put_manifest(self, data: bytes, media_type: str, tag: str) -> Descriptor:
        pushed = self.client.put_manifest(self.repository, tag, data, media_type)
        doc = load_json(data, f"{self.name}: manifest {pushed.descriptor.digest}")
        subject = doc.get("subject")
        if isinstance(subject, dict) and not pushed.subject_indexed:
            subject_descriptor = Descriptor.from_json(subject, f"{self.name}: manifest subject")
            self.client.add_referrer_fallback(
                self.repository, subject_descriptor.digest, _referrer(pushed.descriptor, doc)
            )
        return pushed.descriptor


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _referrer(descriptor: Descriptor, doc: dict[str, object]) -> Descriptor:
    """How a manifest is listed among referrers: its artifactType, else its config's media
    type, and its annotations (distribution spec, referrers API)."""
    artifact_type = doc.get("artifactType")
    if not isinstance(artifact_type, str):
        config = doc.get("config")
        artifact_type = config.get("mediaType") if isinstance(config, dict) else None
    annotations = doc.get("annotations")
    return Descriptor(
        descriptor.media_type,
        descriptor.digest,
        descriptor.size,
        dict(annotations) if isinstance(annotations, dict) else {},
        artifact_type=artifact_type if isinstance(artifact_type, str) else None,
    )
