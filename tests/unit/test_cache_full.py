"""A chunk cache on a full disk: every read is still served (from the store), the
failed writes are counted and logged, and nothing half-written is ever trusted
(issue 16, defect 6). The disk is a real tmpfs of 256 KiB."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.image.ketch_image import open_ketch_image
from ketch.storage.blobs import BlobTable
from ketch.storage.cached_reader import CachedChunkReader
from ketch.storage.chunk_cache import ChunkCache
from ketch.storage.chunk_reader import ChunkReader
from ketch.storage.oci_layout_store import OciLayoutStore
from tests.fixtures import ocilayout as ol
from tests.fixtures.ketch import convert

CHUNK = 64 << 10


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_full_cache_disk_is_counted_logged_and_reads_go_on(
    tmp_path: Path, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = os.urandom(32 * CHUNK)  # 2 MiB of chunks for a 256 KiB disk
    src = tmp_path / "src"
    ol.write_oci_layout(src, "src", [ol.tar_bytes([ol.file("big", data)])])
    convert(src, "src", tmp_path / "image", chunk_size=CHUNK)
    image = open_ketch_image(OciLayoutStore.open(tmp_path / "image"), "ketch")
    algo = image.bootstrap.digest_algorithm
    cache = ChunkCache(small_disk, 0, algo)
    reader = CachedChunkReader(ChunkReader(image.store, algo), cache, memory=0)
    chunks = [chunk for _, chunk in image.bootstrap.chunks_for_range(1, 0, len(data))]
    blob = BlobTable.of(image.bootstrap)[chunks[0].blob]
    caplog.set_level(logging.WARNING, logger="ketch")
    for _ in range(2):
        assert b"".join(reader.read(blob, chunks)) == data
    stats = cache.stats()
    assert stats.no_space > 0 and stats.store_errors == stats.no_space
    full = [r for r in caplog.records if "cache full" in r.getMessage()]
    assert len(full) == 1  # once a minute, however many puts failed
    # What is in the cache is whole and verified: no half-written entry is trusted.
    stored = [path for path in small_disk.rglob("*") if path.is_file()]
    assert stored and not [p for p in stored if p.name.startswith(".tmp-")]
    assert all(cache.get(bytes.fromhex(path.name)) is not None for path in stored)
