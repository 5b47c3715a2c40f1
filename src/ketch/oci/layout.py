"""OCI image layout directories (image-spec ``image-layout.md``), read and written safely.

Writes are atomic: a blob is written to a temporary file and renamed into
``blobs/sha256`` once its digest is known; ``index.json`` is replaced last, by rename. A
reader never sees a half-written blob under its digest, or a tag pointing at missing blobs.

Temporary files live in the layout's own temporary area, one directory per writing
process: ``ROOT/.ketch-tmp/PID-START`` (``ketch.process_identity``: the pid and its start
time), on the layout's filesystem so that a rename publishes them. A writer killed at
any moment leaves only its directory there; the next writer removes every directory whose
process is gone (and the ``.tmp-*`` files older versions left beside the blobs, once a day
old). umoci keeps its ``.umoci-*`` temporaries in the layout root the same way; readers
(skopeo, umoci) read ``index.json`` and ``blobs`` only.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ketch.errors import (
    IntegrityError,
    LocalFileError,
    NotFoundError,
    StorageError,
    local_file_error,
)
from ketch.format.digests import sha256_hex
from ketch.oci import mediatypes as mt
from ketch.oci.index import empty_index, find_tag, follow_to_manifest, index_with_tag, tag_names
from ketch.oci.manifest import (
    Descriptor,
    Manifest,
    Platform,
    canonical_json,
    load_json,
    parse_index,
)
from ketch.temp_area import TempArea

_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
TEMP_AREA = ".ketch-tmp"  # ROOT/.ketch-tmp/PID-START: one writing process's temporaries
_LEGACY_TEMP_AGE = 24 * 3600.0  # seconds: .tmp-* files of older versions, beside the blobs


def digest_hex(digest: str) -> str:
    match = _DIGEST.match(digest)
    if not match:
        raise IntegrityError(f"digest {digest!r}: expected sha256:<64 lowercase hex>")
    return match.group(1)


class OciLayout:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._temp_area = TempArea(root / TEMP_AREA)
        self._swept = False

    @classmethod
    def open(cls, root: Path) -> OciLayout:
        if not (root / "oci-layout").is_file() or not (root / "index.json").is_file():
            raise NotFoundError(f"{root}: not an OCI image layout (no oci-layout or index.json)")
        return cls(root)

    @classmethod
    def create(cls, root: Path) -> OciLayout:
        """Open an existing layout or make an empty one."""
        if (root / "oci-layout").is_file() and (root / "index.json").is_file():
            return cls(root)
        if root.exists() and not root.is_dir():
            raise LocalFileError(f"{root}: cannot create an OCI layout: not a directory")
        try:
            (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            layout = cls(root)
            layout._replace(
                root / "oci-layout",
                canonical_json({"imageLayoutVersion": mt.OCI_LAYOUT_VERSION}),
            )
            if not (root / "index.json").exists():
                layout._write_index([])
        except OSError as exc:
            raise local_file_error(exc, root, "cannot create an OCI layout") from None
        return layout

    # -- the temporary area -------------------------------------------------------------

    def temp_dir(self) -> Path:
        """This process's temporary directory in the layout (``ketch.temp_area``); the
        first call removes what killed writers left."""
        if not self._swept:
            self.remove_stale_temporaries()
            self._swept = True
        return self._temp_area.own_dir()

    def remove_stale_temporaries(self) -> list[Path]:
        """Remove what killed writers left: the temporary directories of processes that
        are gone, and older versions' ``.tmp-*`` files untouched for a day. What was
        removed (a writer that is alive keeps its own)."""
        removed = self._temp_area.remove_stale()
        cutoff = time.time() - _LEGACY_TEMP_AGE
        for directory in (self.root, self.root / "blobs" / "sha256"):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                for entry in os.scandir(directory):
                    if not entry.name.startswith(".tmp-") or not entry.is_file(
                        follow_symlinks=False
                    ):
                        continue
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        Path(entry.path).unlink(missing_ok=True)
                        removed.append(Path(entry.path))
        return removed

    # -- blobs ------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest_hex(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def blob_size(self, digest: str) -> int:
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFoundError(f"{self.root}: blob {digest} not found") from None

    def read_blob(self, digest: str, max_size: int | None = None) -> bytes:
        """Whole blob, checked against its digest."""
        path = self.blob_path(digest)
        try:
            with path.open("rb") as f:
                data = f.read() if max_size is None else f.read(max_size + 1)
        except FileNotFoundError:
            raise NotFoundError(f"{self.root}: blob {digest} not found") from None
        if max_size is not None and len(data) > max_size:
            raise IntegrityError(
                f"{self.root}: blob {digest}: size: expected <= {max_size}, found more"
            )
        found = sha256_hex(data)
        if found != digest:
            raise IntegrityError(
                f"{self.root}: blob {digest}: digest: expected {digest}, found {found}"
            )
        return data

    def open_blob(self, digest: str) -> IO[bytes]:
        try:
            return self.blob_path(digest).open("rb")
        except FileNotFoundError:
            raise NotFoundError(f"{self.root}: blob {digest} not found") from None

    @contextlib.contextmanager
    def blob_writer(self) -> Iterator[tuple[IO[bytes], list[str]]]:
        """A temporary file to write a blob into; the caller appends the blob's digest to
        the list it is given, and the file is renamed into place only then."""
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="blob-", dir=self.temp_dir())
        digest_out: list[str] = []
        try:
            with os.fdopen(fd, "w+b") as f:
                yield f, digest_out
                f.flush()
                os.fsync(f.fileno())
            if len(digest_out) != 1:
                raise StorageError(f"{self.root}: blob written without a digest")
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.blob_path(digest_out[0]))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def write_blob(self, data: bytes) -> str:
        digest = sha256_hex(data)
        if not self.has_blob(digest):
            with self.blob_writer() as (f, out):
                f.write(data)
                out.append(digest)
        return digest

    # -- index and tags ---------------------------------------------------------------

    def _index_doc(self) -> dict[str, Any]:
        try:
            data = (self.root / "index.json").read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{self.root}: no index.json") from None
        return load_json(data, f"{self.root}/index.json")

    def descriptors(self) -> list[Descriptor]:
        return parse_index(canonical_json(self._index_doc()), f"{self.root}/index.json")

    def tags(self) -> list[str]:
        return tag_names(self.descriptors())

    def resolve_tag(self, tag: str) -> Descriptor:
        return find_tag(self.descriptors(), tag, f"oci:{self.root}")

    def manifest(
        self, tag: str, platform: Platform | None = None
    ) -> tuple[Descriptor, Manifest, bytes]:
        """The image manifest a tag names, choosing a platform from an index."""
        return follow_to_manifest(
            lambda digest: self.read_blob(digest, max_size=4 << 20),
            self.resolve_tag(tag),
            platform,
            f"oci:{self.root}:{tag}",
        )

    def set_tag(self, tag: str, descriptor: Descriptor) -> None:
        """Point ``tag`` at ``descriptor``: index.json is replaced atomically."""
        doc = self._index_doc() if (self.root / "index.json").exists() else {}
        self._replace(self.root / "index.json", index_with_tag(doc, tag, descriptor))

    def _write_index(self, manifests: list[Any]) -> None:
        self._replace(self.root / "index.json", empty_index(manifests))

    def _replace(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=path.name + "-", dir=self.temp_dir())
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
