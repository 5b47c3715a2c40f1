"""Every flipped byte of a bootstrap or a blob is found, and named."""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import pytest

from ketch.errors import IntegrityError, KetchError
from ketch.format.bootstrap import ROOT_INODE, Bootstrap
from ketch.format.bootstrap_verify import verify_bootstrap
from ketch.format.digests import DigestAlgorithm
from ketch.format.records import SUPERBLOCK, SUPERBLOCK_SIZE, DirentRecord, Superblock
from ketch.fs.image_fs import ImageFS
from ketch.fs.unpack import unpack
from ketch.image.check import check_image
from ketch.storage.chunk_reader import ChunkReader
from tests.fixtures import ocilayout as ol
from tests.fixtures.ketch import convert, image_fs, open_image


@pytest.fixture
def image_layout(tmp_path: Path) -> Path:
    entries = [
        ol.dir("etc"),
        ol.file("etc/conf", b"k=v\n", xattrs={"user.tag": b"1"}),
        ol.file("data", os.urandom(20_000)),
        ol.symlink("link", "etc/conf"),
        ol.hardlink("etc/again", "etc/conf"),
        ol.fifo("pipe"),
    ]
    root = tmp_path / "src"
    ol.write_oci_layout(root, "src", [ol.tar_bytes(entries)])
    convert(root, "src", tmp_path / "dst", chunk_size=4096)
    return tmp_path / "dst"


def _bootstrap_path(layout: Path) -> Path:
    image = open_image(layout)
    return image.store.layout.blob_path(image.bootstrap_layer.digest)  # type: ignore[attr-defined, no-any-return]


def test_sound_image_checks_clean(image_layout: Path) -> None:
    report = check_image(open_image(image_layout))
    assert report.ok, report.problems
    assert report.blobs == 1 and report.chunks >= 5


def test_every_flipped_bootstrap_byte_is_rejected(image_layout: Path) -> None:
    data = _bootstrap_path(image_layout).read_bytes()
    assert verify_bootstrap(Bootstrap(data)) == []
    for position in range(len(data)):
        corrupt = bytearray(data)
        corrupt[position] ^= 0x01
        try:
            problems = verify_bootstrap(Bootstrap(bytes(corrupt)))
        except IntegrityError as exc:
            assert "expected" in str(exc)
            continue
        assert problems, f"flip at byte {position} went unnoticed"
        assert all("expected" in p or "failed" in p for p in problems)


def test_truncated_or_empty_bootstrap_is_rejected(image_layout: Path) -> None:
    data = _bootstrap_path(image_layout).read_bytes()
    for size in (0, 10, 255, 256, len(data) - 1):
        with pytest.raises(IntegrityError):
            Bootstrap(data[:size])


def test_offsets_outside_the_file_are_rejected(image_layout: Path) -> None:
    data = bytearray(_bootstrap_path(image_layout).read_bytes())
    # Re-seal a superblock whose inode table lies past the end: the bounds check, not
    # the superblock digest, must catch it.
    sb = Superblock.unpack(bytes(data))
    fields = list(SUPERBLOCK.unpack_from(bytes(data)))
    fields[6] = len(data) + 4096  # inode_offset
    packed = SUPERBLOCK.pack(*fields)
    algo = DigestAlgorithm(sb.digest_algorithm)
    data[:256] = packed[:224] + algo.digest(packed[:224])
    with pytest.raises(IntegrityError, match="inode table"):
        Bootstrap(bytes(data))


def test_flipped_blob_bytes_are_reported_with_their_place(image_layout: Path) -> None:
    image = open_image(image_layout)
    blob = image.bootstrap.blobs()[0]
    path: Path = image.store.layout.blob_path(blob.oci_digest)  # type: ignore[attr-defined]
    original = path.read_bytes()
    rng = random.Random(3)
    positions = sorted(
        set(rng.sample(range(len(original)), 60)) | set(range(len(original) - 400, len(original)))
    )
    for position in positions:
        corrupt = bytearray(original)
        corrupt[position] ^= 0x40
        path.write_bytes(bytes(corrupt))
        report = check_image(open_image(image_layout))
        assert not report.ok, f"flip at blob byte {position} went unnoticed"
        assert any(blob.oci_digest in p for p in report.problems), report.problems
    path.write_bytes(original)
    assert check_image(open_image(image_layout)).ok


def test_reading_a_corrupt_chunk_fails_and_never_returns_wrong_bytes(image_layout: Path) -> None:
    fs = image_fs(image_layout)
    ino = fs.resolve("/data")
    good = fs.read(ino, 0, 20_000)
    image = open_image(image_layout)
    blob = image.bootstrap.blobs()[0]
    path: Path = image.store.layout.blob_path(blob.oci_digest)  # type: ignore[attr-defined]
    raw = bytearray(path.read_bytes())
    first_chunk = image.bootstrap.chunks_for_range(ino - 1, 0, 1)[0][1]
    raw[first_chunk.compressed_offset + first_chunk.compressed_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=blob.oci_digest):
        image_fs(image_layout).read(ino, 0, 100)
    # Chunks that were not touched still read correctly.
    assert image_fs(image_layout).read(ino, 8192, 4096) == good[8192:12288]


def test_missing_blob_is_reported(image_layout: Path) -> None:
    image = open_image(image_layout)
    blob = image.bootstrap.blobs()[0]
    image.store.layout.blob_path(blob.oci_digest).unlink()  # type: ignore[attr-defined]
    report = check_image(open_image(image_layout))
    assert not report.ok
    assert any(blob.oci_digest in p and "not found" in p for p in report.problems)


def test_errors_are_one_line(image_layout: Path) -> None:
    data = bytearray(_bootstrap_path(image_layout).read_bytes())
    data[300] ^= 1
    with pytest.raises(KetchError) as info:
        problems = verify_bootstrap(Bootstrap(bytes(data)))
        raise IntegrityError("; ".join(problems))
    assert "\n" not in str(info.value)


def test_a_directory_looped_into_its_ancestor_is_refused_by_unpack(
    image_layout: Path, tmp_path: Path
) -> None:
    # A hostile bootstrap, sealed as a converter would seal it (body and superblock
    # digests right), whose /etc entry names the root: walking it would never end.
    path = _bootstrap_path(image_layout)
    data = bytearray(path.read_bytes())
    bootstrap = Bootstrap(bytes(data))
    sb = bootstrap.superblock
    looped = False
    for index in range(sb.dirent_count):
        dirent = bootstrap.dirent(index)
        start = sb.string_offset + dirent.name_offset
        if bytes(data[start : start + dirent.name_size]) == b"etc":
            offset = sb.dirent_offset + index * DirentRecord.size_of
            data[offset : offset + DirentRecord.size_of] = DirentRecord(
                dirent.name_offset, dirent.name_size, ROOT_INODE
            ).pack()
            looped = True
    assert looped
    algo = bootstrap.digest_algorithm
    resealed = dataclasses.replace(sb, body_digest=algo.digest(bytes(data[SUPERBLOCK_SIZE:])))
    head = resealed.pack()[:224]
    data[:SUPERBLOCK_SIZE] = head + algo.digest(head)
    loop = Bootstrap(bytes(data))  # opens: every table in bounds, both digests right
    image = open_image(image_layout)
    fs = ImageFS(loop, ChunkReader(image.store, algo))
    with pytest.raises(IntegrityError) as raised:
        unpack(fs, tmp_path / "out")
    assert "\n" not in str(raised.value) and "ketch check lists them" in str(raised.value)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.ketch-")]
