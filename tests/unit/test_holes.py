"""Files with holes: a hole costs chunk references, never its bytes; the image is the
one the same zeros written out would give; a map asking for too many holes is refused."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from ketch.builder import layer_builder
from ketch.builder.layer_builder import MAX_CDC_HOLE_BYTES, MAX_HOLE_CHUNKS
from ketch.cli.main import main
from ketch.errors import BadLayerError
from tests.fixtures.ketch import build_dir, convert, image_fs, open_image, unpack_image
from tests.fixtures.ocilayout import write_oci_layout

MIB = 1 << 20
NS = 1_612_325_106_123_456_789
#: where data sits in the test file: at the start, across a chunk boundary, at the end
_PIECES = [(0, b"head"), (5 * MIB - 3, b"across"), (40 * MIB - 4, b"tail")]
_SIZE = 40 * MIB


def _write(path: Path, *, sparse: bool) -> None:
    with open(path, "wb") as f:
        if sparse:
            for offset, data in _PIECES:
                f.seek(offset)
                f.write(data)
        else:
            content = bytearray(_SIZE)
            for offset, data in _PIECES:
                content[offset : offset + len(data)] = data
            f.write(content)
        f.truncate(_SIZE)
    os.utime(path, ns=(NS, NS))


def _tree(root: Path, *, sparse: bool) -> Path:
    root.mkdir()
    _write(root / "file", sparse=sparse)
    os.utime(root, ns=(NS, NS))
    return root


@pytest.mark.parametrize("chunker", ["fixed", "cdc"])
def test_a_sparse_file_builds_the_image_of_its_zeros_written_out(
    tmp_path: Path, chunker: str
) -> None:
    sparse = _tree(tmp_path / "sparse", sparse=True)
    assert (sparse / "file").stat().st_blocks * 512 < MIB  # the filesystem kept the holes
    dense = _tree(tmp_path / "dense", sparse=False)
    build_dir(sparse, tmp_path / "a", chunker=chunker)
    build_dir(dense, tmp_path / "b", chunker=chunker)
    assert (tmp_path / "a" / "index.json").read_bytes() == (
        tmp_path / "b" / "index.json"
    ).read_bytes()
    fs = image_fs(tmp_path / "a")
    ino = fs.resolve("/file")
    assert fs.getattr(ino).size == _SIZE
    for offset, data in _PIECES:
        assert fs.read(ino, offset - 2 if offset else 0, 10)[: len(data) + 2].strip(b"\0") == data
    out = unpack_image(tmp_path / "a", tmp_path / "out")
    assert (out / "file").read_bytes() == (dense / "file").read_bytes()
    assert (out / "file").stat().st_blocks * 512 <= 3 * 4 * MIB  # holes stay holes


def test_a_zero_chunk_is_stored_once_and_made_of_no_file_bytes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with open(root / "big", "wb") as f:
        f.truncate(1 << 36)  # 64 GiB of holes: 65,536 chunk references of one chunk
    build_dir(root, tmp_path / "dst")
    bootstrap = open_image(tmp_path / "dst").bootstrap
    assert [c.uncompressed_size for c in bootstrap.chunks()] == [MIB]
    assert len(bootstrap.file_chunkrefs(bootstrap.resolve("/big"))) == 1 << 16
    out = unpack_image(tmp_path / "dst", tmp_path / "out")
    assert (out / "big").stat().st_size == 1 << 36 and (out / "big").stat().st_blocks == 0


def _sparse_layer(size: int, name: str = "lastlog") -> bytes:
    """One GNU sparse (pax 0.0) file of ``size`` bytes, all hole, stored in no bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.pax_headers = {"GNU.sparse.size": str(size), "GNU.sparse.numblocks": "0"}
        tar.addfile(info, io.BytesIO(b""))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("chunker", "size"),
    [("fixed", 1 << 62), ("fixed", (MAX_HOLE_CHUNKS + 1) * MIB), ("cdc", MAX_CDC_HOLE_BYTES + 1)],
    ids=["fixed-2^62", "fixed-just-over", "cdc-just-over"],
)
def test_too_many_holes_for_a_few_bytes_of_map_are_refused(
    tmp_path: Path, chunker: str, size: int
) -> None:
    write_oci_layout(tmp_path / "src", "src", [_sparse_layer(size)])
    with pytest.raises(BadLayerError, match=r"/lastlog: a file of \d+ bytes with holes"):
        convert(tmp_path / "src", "src", tmp_path / "dst", chunker=chunker)


def test_the_bound_is_on_the_holes_of_all_layers_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Per layer, an image of many layers could still ask for any amount. (A bound of 100
    # references stands for the real one, 4 TiB of holes in every layer being slow.)
    monkeypatch.setattr(layer_builder, "MAX_HOLE_CHUNKS", 100)
    one = _sparse_layer(60 * MIB, "a")
    write_oci_layout(tmp_path / "src", "one", [one])
    convert(tmp_path / "src", "one", tmp_path / "dst1")
    write_oci_layout(tmp_path / "src", "two", [one, _sparse_layer(60 * MIB, "b")])
    with pytest.raises(BadLayerError, match=r"/b: .* the image's holes would make over 100"):
        convert(tmp_path / "src", "two", tmp_path / "dst2")


def test_the_cli_refuses_a_petabyte_hole_with_exit_5_and_tags_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_oci_layout(tmp_path / "src", "src", [_sparse_layer(1 << 50)])
    dest = tmp_path / "dst"
    assert main(["convert", f"oci:{tmp_path / 'src'}:src", f"oci:{dest}:t"]) == 5
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "lastlog" in lines[0] and "holes" in lines[0], lines
    index = dest / "index.json"
    assert not index.exists() or json.loads(index.read_text())["manifests"] == []
