"""Where every known chunk is stored: lower layers, this layer, a chunk dictionary.

The builder consults it before compressing a chunk; a hit is referenced, not stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ketch.format.blob import read_blob_table
from ketch.format.bootstrap import Bootstrap
from ketch.storage.store import ImageStore


@dataclass(slots=True)
class ChunkLocation:
    blob: str | None  # OCI digest of the blob; None until this layer's blob is sealed
    offset: int
    compressed_size: int
    uncompressed_size: int
    codec: int


@dataclass(slots=True)
class ChunkIndex:
    chunks: dict[bytes, ChunkLocation] = field(default_factory=dict)
    # Blobs that come from a chunk dictionary, and the store that holds each.
    dict_blobs: dict[str, tuple[ImageStore, int, int]] = field(default_factory=dict)

    def __contains__(self, digest: bytes) -> bool:
        return digest in self.chunks

    def get(self, digest: bytes) -> ChunkLocation | None:
        return self.chunks.get(digest)

    def add(self, digest: bytes, location: ChunkLocation) -> None:
        self.chunks.setdefault(digest, location)

    def add_dictionary(self, bootstrap: Bootstrap, store: ImageStore) -> int:
        """Index every chunk stored in another Ketch image's blobs, as each blob's own
        table lists them (so chunks of files its upper layers deleted count too).
        The number of chunks added."""
        added = 0
        for blob in bootstrap.blobs():
            digest = blob.oci_digest
            _, entries = read_blob_table(digest, blob.size, store.range_reader(digest))
            for entry in entries:
                if entry.digest in self.chunks:
                    continue
                self.chunks[entry.digest] = ChunkLocation(
                    digest,
                    entry.compressed_offset,
                    entry.compressed_size,
                    entry.uncompressed_size,
                    entry.codec,
                )
                added += 1
            self.dict_blobs.setdefault(digest, (store, blob.size, blob.chunk_count))
        return added
