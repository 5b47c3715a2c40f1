"""The daemon's local copy of a bootstrap is hostile input: checked at every open.

The bootstrap decides which chunks every path reads, so a copy changed on disk (bit rot,
a planted file, a swap of two inode records) would serve one file's bytes as another's.
Every open hashes the copy against the manifest's digest; a damaged copy is removed and
fetched again, and the image opens as published.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from ketch.format.records import InodeRecord
from ketch.image.ketch_image import KetchImage, open_ketch_image
from ketch.storage.oci_layout_store import OciLayoutStore
from tests.fixtures.ketch import build_dir


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "d").mkdir(parents=True)
    (root / "d" / "a").write_bytes(b"alpha file")
    (root / "d" / "b").write_bytes(b"beta file!")
    build_dir(root, tmp_path / "image")
    return tmp_path / "image"


def _open(layout: Path, cache: Path) -> KetchImage:
    return open_ketch_image(OciLayoutStore.open(layout), "ketch", cache_dir=cache)


def _copy(cache: Path) -> Path:
    [copy] = list(cache.glob("bootstrap-*"))
    return copy


def _assert_published(image: KetchImage, copy: Path) -> None:
    """The bootstrap open is the published one, and so is the copy on disk."""
    digest = image.bootstrap_layer.digest
    assert "sha256:" + hashlib.sha256(bytes(image.bootstrap.raw)).hexdigest() == digest
    assert "sha256:" + hashlib.sha256(copy.read_bytes()).hexdigest() == digest
    a = image.bootstrap.inode(image.bootstrap.resolve("d/a"))
    b = image.bootstrap.inode(image.bootstrap.resolve("d/b"))
    assert a.data_start != b.data_start


def test_a_copy_with_two_inode_records_swapped_is_fetched_again(
    layout: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    first = _open(layout, cache)
    bootstrap = first.bootstrap
    size = InodeRecord.size_of
    a = bootstrap.superblock.inode_offset + bootstrap.resolve("d/a") * size
    b = bootstrap.superblock.inode_offset + bootstrap.resolve("d/b") * size
    bootstrap.close()
    copy = _copy(cache)
    data = bytearray(copy.read_bytes())
    data[a : a + size] = data[b : b + size]  # d/a would read d/b's chunks
    copy.write_bytes(bytes(data))
    second = _open(layout, cache)
    _assert_published(second, copy)
    assert "is damaged (digest: expected" in caplog.text


@pytest.mark.parametrize("damage", ["truncated", "empty", "symlink", "fifo", "longer"])
def test_other_damage_is_fetched_again(layout: Path, tmp_path: Path, damage: str) -> None:
    cache = tmp_path / "cache"
    _open(layout, cache).bootstrap.close()
    copy = _copy(cache)
    good = copy.read_bytes()
    copy.unlink()
    if damage == "truncated":
        copy.write_bytes(good[:-100])
    elif damage == "empty":
        copy.write_bytes(b"")
    elif damage == "longer":
        copy.write_bytes(good + b"\0")
    elif damage == "symlink":
        (tmp_path / "elsewhere").write_bytes(good)
        copy.symlink_to(tmp_path / "elsewhere")
    else:
        os.mkfifo(copy)
    image = _open(layout, cache)
    assert not copy.is_symlink()
    _assert_published(image, copy)


def test_a_good_copy_is_used_as_it_is(layout: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _open(layout, cache).bootstrap.close()
    copy = _copy(cache)
    before = copy.stat()
    image = _open(layout, cache)
    after = copy.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    _assert_published(image, copy)
