"""``ketch check``: verify a whole image, bootstrap and every chunk of every blob.

Each blob is checked alone from its own trailer and chunk table (every chunk read,
decompressed and hashed), then the bootstrap's chunk records are checked against the
tables of the blobs they point into. Every problem is reported with its place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ketch.errors import KetchError
from ketch.format.blob import read_blob_table
from ketch.format.bootstrap_verify import verify_bootstrap
from ketch.format.records import BlobChunkEntry, ChunkRecord
from ketch.image.ketch_image import KetchImage
from ketch.storage.blobs import BlobRef
from ketch.storage.chunk_reader import ChunkReader
from ketch.storage.range_plan import merge_ranges

_BATCH = 16 << 20


@dataclass(slots=True)
class CheckReport:
    problems: list[str] = field(default_factory=list)
    blobs: int = 0
    chunks: int = 0
    bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def check_image(image: KetchImage, on_bytes: Callable[[int], None] = lambda _: None) -> CheckReport:
    report = CheckReport()
    bootstrap = image.bootstrap
    report.problems.extend(verify_bootstrap(bootstrap))
    reader = ChunkReader(image.store, bootstrap.digest_algorithm, max_merge=_BATCH)
    tables: dict[int, dict[int, BlobChunkEntry]] = {}
    for index, blob in enumerate(bootstrap.blobs()):
        digest = blob.oci_digest
        report.blobs += 1
        try:
            size = image.store.blob_size(digest)
            if size != blob.size:
                report.problems.append(f"blob {digest}: size: expected {blob.size}, found {size}")
                continue
            algo, entries = read_blob_table(digest, size, image.store.range_reader(digest))
            if algo is not bootstrap.digest_algorithm:
                report.problems.append(
                    f"blob {digest}: digest algorithm: expected {bootstrap.digest_algorithm.label}, found {algo.label}"
                )
                continue
        except KetchError as exc:
            report.problems.append(exc.message)
            continue
        tables[index] = {e.compressed_offset: e for e in entries}
        records = [
            ChunkRecord(
                e.digest,
                index,
                e.compressed_offset,
                e.compressed_size,
                e.uncompressed_size,
                e.codec,
            )
            for e in entries
        ]
        ref = BlobRef(digest, index, size)
        for group in merge_ranges(records, _BATCH):
            try:
                reader.read(ref, group)
            except KetchError:
                # Re-read one by one to name every bad chunk, not just the first.
                for chunk in group:
                    try:
                        reader.read(ref, [chunk])
                    except KetchError as exc:
                        report.problems.append(exc.message)
            report.chunks += len(group)
            nbytes = sum(c.uncompressed_size for c in group)
            report.bytes += nbytes
            on_bytes(nbytes)
    for number, chunk in enumerate(bootstrap.chunks()):
        table = tables.get(chunk.blob)
        if table is None:
            continue
        entry = table.get(chunk.compressed_offset)
        if entry is None or (
            entry.digest,
            entry.compressed_size,
            entry.uncompressed_size,
            entry.codec,
        ) != (
            chunk.digest,
            chunk.compressed_size,
            chunk.uncompressed_size,
            chunk.codec,
        ):
            report.problems.append(
                f"bootstrap chunk {number} ({chunk.digest.hex()}): not in blob "
                f"{bootstrap.blob(chunk.blob).oci_digest} at offset {chunk.compressed_offset}"
            )
    return report
