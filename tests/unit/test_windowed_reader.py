"""Ordered readers fetch blobs in windows: few range reads, every chunk still verified."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ketch.errors import IntegrityError
from ketch.fs.image_fs import ImageFS
from ketch.fs.unpack import unpack
from ketch.storage.windowed_reader import WindowedChunkReader
from tests.fixtures import ocilayout as ol
from tests.fixtures.ketch import convert, open_image


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    files = [ol.file(f"d{i % 5}/f{i}", os.urandom(3000 + i)) for i in range(60)]
    ol.write_oci_layout(
        tmp_path / "src", "src", [ol.tar_bytes(files[:30]), ol.tar_bytes(files[30:])]
    )
    convert(tmp_path / "src", "src", tmp_path / "dst", chunk_size=4096)
    return tmp_path / "dst"


def _reader(layout: Path, window: int) -> tuple[WindowedChunkReader, ImageFS]:
    image = open_image(layout)
    reader = WindowedChunkReader(image.store, image.bootstrap.digest_algorithm, window=window)
    return reader, ImageFS(image.bootstrap, reader)


def test_unpack_in_order_takes_one_read_per_window(layout: Path, tmp_path: Path) -> None:
    reader, fs = _reader(layout, 1 << 20)
    unpack(fs, tmp_path / "out")
    assert reader.range_reads == 2  # one window per layer blob
    assert (tmp_path / "out" / "d0" / "f0").stat().st_size == 3000


def test_small_windows_still_return_every_byte(layout: Path, tmp_path: Path) -> None:
    reader, fs = _reader(layout, 5000)
    unpack(fs, tmp_path / "out")
    assert reader.range_reads > 2
    big, _ = _reader(layout, 1 << 20)
    unpack(ImageFS(open_image(layout).bootstrap, big), tmp_path / "again")
    for i in range(60):
        name = f"d{i % 5}/f{i}"
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_a_corrupt_chunk_in_a_window_is_refused(layout: Path, tmp_path: Path) -> None:
    image = open_image(layout)
    blob = image.bootstrap.blobs()[0]
    path = layout / "blobs" / "sha256" / blob.oci_digest[7:]
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    _, fs = _reader(layout, 1 << 20)
    with pytest.raises(IntegrityError, match=blob.oci_digest):
        unpack(fs, tmp_path / "out")
    assert not (tmp_path / "out").exists()
