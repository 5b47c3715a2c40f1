"""The builder's I/O pieces: blob writing off the main thread, reused decompression buffers."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
from pathlib import Path

import pytest

from ketch.format.blob import BlobWriter, pack_table, read_blob_table, write_all
from ketch.format.digests import DigestAlgorithm
from ketch.oci.layer_stream import OUT_BLOCK, BufferPool, LayerStream


def _blob(path: Path, chunks: list[bytes], *, hashing: bool) -> tuple[str, int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        writer = BlobWriter(fd, DigestAlgorithm.BLAKE3, hashing=hashing)
        rows = []
        for chunk in chunks:
            rows.append((hashlib.sha256(chunk).digest(), writer.size, len(chunk), len(chunk), 0))
            writer.write([chunk])
        return writer.finish(pack_table(rows), len(rows))
    finally:
        os.close(fd)


def test_blob_digest_is_the_same_whether_taken_while_writing_or_after(tmp_path: Path) -> None:
    chunks = [os.urandom(n) for n in (1, 5000, 3 << 20, 17)]
    hashed = _blob(tmp_path / "a", chunks, hashing=True)
    read_back = _blob(tmp_path / "b", chunks, hashing=False)
    data = (tmp_path / "a").read_bytes()
    assert hashed == read_back == ("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    assert data == (tmp_path / "b").read_bytes()
    _, entries = read_blob_table("a", len(data), lambda off, n: data[off : off + n])
    assert [e.compressed_size for e in entries] == [len(c) for c in chunks]


def test_copy_ranges_lays_out_a_spool_in_another_order(tmp_path: Path) -> None:
    spool = os.urandom(3 << 20)
    (tmp_path / "spool").write_bytes(spool)
    ranges = [(2 << 20, 1 << 20), (5, 100), (0, 5), (105, (2 << 20) - 105)]
    source = os.open(tmp_path / "spool", os.O_RDONLY)
    out = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        writer = BlobWriter(out, DigestAlgorithm.SHA256)
        writer.copy_ranges(source, ranges)
        digest, size = writer.finish(pack_table([]), 0)
    finally:
        os.close(source)
        os.close(out)
    data = (tmp_path / "out").read_bytes()
    assert data[: size - 64] == b"".join(spool[o : o + n] for o, n in ranges)
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()


def test_write_all_writes_more_parts_than_one_writev_takes(tmp_path: Path) -> None:
    parts = [bytes([i % 256]) * (i % 7) for i in range(3000)]
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert write_all(fd, parts) == sum(map(len, parts))
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"".join(parts)


def test_buffer_pool_hands_out_a_buffer_again_only_when_no_view_holds_it() -> None:
    pool = BufferPool(1024)
    first = pool.take()
    view = memoryview(first)[10:20]
    second = pool.take()
    assert second is not first
    view.release()
    assert pool.take() is first
    assert len(first) == 1024


@pytest.mark.parametrize(("size", "view"), [(511, True), (1 << 20, True), (1 << 16, False)])
def test_layer_stream_views_and_reads_across_its_buffers(size: int, view: bool) -> None:
    data = random.Random(7).randbytes(2 * OUT_BLOCK + 12345)
    raw = gzip.compress(data, mtime=0)
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    pool = BufferPool()
    for _ in range(2):  # a second stream reuses the first one's buffers
        stream = LayerStream(io.BytesIO(raw), "gzip", digest, size=len(raw), buffers=pool)
        try:
            got = []
            while piece := (stream.read_view(size) if view else stream.read(size)):
                got.append(bytes(piece))
            stream.finish()
        finally:
            stream.close()
        assert b"".join(got) == data
