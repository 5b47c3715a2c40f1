"""Trees deeper than Python's recursion limit: checked, unpacked, and an unpack that
fails deep in one leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.errors import IntegrityError
from ketch.format.bootstrap_verify import verify_bootstrap
from ketch.image.check import check_image
from tests.fixtures import ocilayout as ol
from tests.fixtures.ketch import convert, open_image, unpack_image

DEPTH = 1500
CHAIN = "/".join(["d"] * DEPTH)


@pytest.fixture
def deep_tmp(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path``, emptied after the test: pytest removes old temporary directories
    with a recursive ``shutil.rmtree``, which a tree this deep would break for every
    later session on the machine."""
    yield tmp_path
    subprocess.run(["rm", "-rf", "--", str(tmp_path)], check=True, timeout=300)


def _deep_image(tmp_path: Path, data: bytes) -> Path:
    chain = ["/".join(["d"] * i) for i in range(1, DEPTH + 1)]
    entries = [ol.dir(p, mode=0o750 if i % 2 else 0o755) for i, p in enumerate(chain)]
    entries += [ol.file(f"{CHAIN}/leaf", b"leaf"), ol.file("z", data)]  # z: after the chain
    ol.write_oci_layout(tmp_path / "src", "t", [ol.tar_bytes(entries)])
    convert(tmp_path / "src", "t", tmp_path / "dst", "t")
    return tmp_path / "dst"


def test_a_deep_tree_checks_and_unpacks(deep_tmp: Path) -> None:
    layout = _deep_image(deep_tmp, b"zzz")
    image = open_image(layout, "t")
    assert verify_bootstrap(image.bootstrap) == []
    assert check_image(image).ok
    out = unpack_image(layout, deep_tmp / "out", "t")
    leaf = out / CHAIN / "leaf"
    assert leaf.read_bytes() == b"leaf"
    # Each directory's own mode, set once its entries were written.
    assert (out / CHAIN).parent.stat().st_mode & 0o777 == 0o755
    assert (out / CHAIN).stat().st_mode & 0o777 == 0o750


def test_an_unpack_failing_after_a_deep_tree_leaves_nothing(deep_tmp: Path) -> None:
    layout = _deep_image(deep_tmp, os.urandom(100_000))  # incompressible: stored raw
    (blob,) = open_image(layout, "t").bootstrap.blobs()
    path = layout / "blobs" / "sha256" / blob.oci_digest[7:]
    damaged = bytearray(path.read_bytes())
    damaged[10] ^= 0xFF  # inside z's chunk: the blob holds the leaf's 4 bytes, then z
    path.write_bytes(bytes(damaged))
    (deep_tmp / "parent").mkdir()
    with pytest.raises(IntegrityError):
        unpack_image(layout, deep_tmp / "parent" / "out", "t")
    assert list((deep_tmp / "parent").iterdir()) == []
