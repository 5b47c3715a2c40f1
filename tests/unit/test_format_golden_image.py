"""Whole golden images of format v1 (tests/vectors/format_v1/image): today's builder
rebuilds them byte for byte from the same input, and today's reader answers every
lookup, getattr, readdir, readlink, xattr and read of the committed bytes as recorded.

A failure here means format v1 changed: that needs a new format version, never an
edit of the vectors.
"""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from ketch.errors import NotFoundError
from ketch.format.blob import read_blob_table
from ketch.format.bootstrap import Bootstrap
from ketch.format.bootstrap_verify import verify_bootstrap
from ketch.format.records import (
    PREFETCH,
    SUPERBLOCK_SIZE,
    BlobRecord,
    ChunkRecord,
    ChunkRef,
    DirentRecord,
    InodeRecord,
)
from ketch.image.check import check_image
from ketch.image.layout import ANNOTATION_KETCH_ROOT
from ketch.oci import mediatypes as mt
from ketch.storage.oci_layout_store import OciLayoutStore
from tests.fixtures.golden_image import FORMAT_CHANGED, NOISE, VARIANTS, Variant, build
from tests.fixtures.ketch import image_fs, open_image

TAG = "golden"


def _expected(variant: Variant) -> dict[str, Any]:
    return json.loads((variant.directory / "expected.json").read_text())  # type: ignore[no-any-return]


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _committed_layout(variant: Variant, root: Path) -> Path:
    """An OCI layout holding the committed manifest, config, bootstrap and blobs."""
    expected = _expected(variant)
    store = OciLayoutStore.create(root)
    names = ["bootstrap.bin", "config.json"] + [blob["file"] for blob in expected["blobs"]]
    for name in names:
        data = (variant.directory / name).read_bytes()
        store.push_blob_bytes(data, _sha256(data))
    manifest = (variant.directory / "manifest.json").read_bytes()
    store.put_manifest(manifest, mt.OCI_MANIFEST, TAG)
    return root


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_committed_files_have_their_recorded_digests(variant: Variant) -> None:
    expected = _expected(variant)
    assert expected["options"] == variant.options  # the build options the files came from
    bootstrap = (variant.directory / "bootstrap.bin").read_bytes()
    assert _sha256(bootstrap) == expected["bootstrap"]["digest"]
    assert len(bootstrap) == expected["bootstrap"]["size"]
    for blob in expected["blobs"]:
        data = (variant.directory / blob["file"]).read_bytes()
        assert (_sha256(data), len(data)) == (blob["digest"], blob["size"])
    manifest_bytes = (variant.directory / "manifest.json").read_bytes()
    assert _sha256(manifest_bytes) == expected["manifest_digest"]
    manifest = json.loads(manifest_bytes)
    assert manifest["annotations"][ANNOTATION_KETCH_ROOT] == expected["root_digest"]
    assert manifest["layers"][-1]["digest"] == expected["bootstrap"]["digest"]
    assert [layer["digest"] for layer in manifest["layers"][:-1]] == [
        blob["digest"] for blob in expected["blobs"]
    ]
    config = (variant.directory / "config.json").read_bytes()
    assert manifest["config"]["digest"] == _sha256(config)
    algo, _, root = expected["root_digest"].partition(":")
    read = Bootstrap(bootstrap)
    assert (read.digest_algorithm.label, read.root_digest.hex()) == (algo, root)
    assert verify_bootstrap(read) == [], FORMAT_CHANGED


def _tables(data: bytes) -> dict[str, list[Any]]:
    """A bootstrap's records, table by table, leaving out what the compressor decides:
    where each chunk sits in its blob and how big it is stored, the blobs' digests and
    sizes, and the digests sealing all that."""
    bs = Bootstrap(data)
    sb = bs.superblock
    compressor_free = {
        name: getattr(sb, name)
        for name in sb.__dataclass_fields__
        if name not in ("body_digest", "superblock_digest")
    }

    def table(offset: int, count: int, size: int) -> list[bytes]:
        return [data[offset + i * size : offset + (i + 1) * size] for i in range(count)]

    return {
        "superblock": [compressor_free],
        "inodes": table(sb.inode_offset, sb.inode_count, InodeRecord.size_of),
        "dirents": table(sb.dirent_offset, sb.dirent_count, DirentRecord.size_of),
        "chunkrefs": table(sb.chunkref_offset, sb.chunkref_count, ChunkRef.size_of),
        "chunks": [
            (c.digest, c.blob, c.uncompressed_size, c.codec)
            for c in (
                ChunkRecord.unpack(raw)
                for raw in table(sb.chunk_offset, sb.chunk_count, ChunkRecord.size_of)
            )
        ],
        "blobs": [
            BlobRecord.unpack(raw).chunk_count
            for raw in table(sb.blob_offset, sb.blob_count, BlobRecord.size_of)
        ],
        "prefetch": table(sb.prefetch_offset, sb.prefetch_count, PREFETCH.size),
        "strings": [data[sb.string_offset : sb.string_offset + sb.string_size]],
        "gaps": [data[SUPERBLOCK_SIZE : sb.inode_offset]],
    }


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_todays_builder_rebuilds_the_committed_image(variant: Variant, tmp_path: Path) -> None:
    expected = _expected(variant)
    built = open_image(build(variant, tmp_path), TAG)
    bootstrap = bytes(built.bootstrap.raw)
    committed = (variant.directory / "bootstrap.bin").read_bytes()
    assert (
        f"{built.bootstrap.digest_algorithm.label}:{built.bootstrap.root_digest.hex()}"
        == (expected["root_digest"])
    )
    assert _tables(bootstrap) == _tables(committed), FORMAT_CHANGED
    if not variant.compressor_independent:
        return
    assert bootstrap == committed, FORMAT_CHANGED
    for index, blob in enumerate(expected["blobs"]):
        assert built.bootstrap.blob(index).oci_digest == blob["digest"]
        data = built.store.read_blob(blob["digest"])
        assert data == (variant.directory / blob["file"]).read_bytes()
    descriptor, manifest, manifest_bytes = built.store.resolve(TAG)
    assert descriptor.digest == expected["manifest_digest"]
    assert manifest_bytes == (variant.directory / "manifest.json").read_bytes()
    config = built.store.read_blob(manifest.config.digest)
    assert config == (variant.directory / "config.json").read_bytes()


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_todays_reader_answers_as_recorded(variant: Variant, tmp_path: Path) -> None:
    expected = _expected(variant)
    layout = _committed_layout(variant, tmp_path / "layout")
    fs = image_fs(layout, TAG)
    seen: set[int] = set()
    for node in expected["nodes"]:
        ino = node["ino"]
        seen.add(ino)
        assert fs.resolve(node["path"]) == ino, node["path"]
        attr = fs.getattr(ino)
        found = {
            "mode": oct(attr.mode),
            "uid": attr.uid,
            "gid": attr.gid,
            "nlink": attr.nlink,
            "size": attr.size,
            "rdev": attr.rdev,
            "mtime_ns": attr.mtime_ns,
            "xattrs": {k.decode(): v.hex() for k, v in sorted(fs.xattrs(ino).items())},
        }
        assert found == {key: node[key] for key in found}, f"{node['path']}: {FORMAT_CHANGED}"
        if stat.S_ISDIR(attr.mode):
            entries = list(fs.readdir(ino))
            assert [[n.decode(), child] for n, child in entries] == node["entries"], node["path"]
            for name, child in entries:
                assert fs.lookup(ino, name) == child
        elif stat.S_ISLNK(attr.mode):
            assert fs.readlink(ino).decode() == node["target"]
        elif stat.S_ISREG(attr.mode):
            data = fs.read(ino, 0, attr.size + 1)
            assert hashlib.sha256(data).hexdigest() == node["sha256"], FORMAT_CHANGED
            for offset, size, digest in node["reads"]:
                part = fs.read(ino, offset, size)
                assert part == data[offset : offset + size]
                assert hashlib.sha256(part).hexdigest() == digest
    assert seen == set(range(1, fs.bootstrap.inode_count + 1))
    for path in expected["absent"]:
        with pytest.raises(NotFoundError):
            fs.resolve(path)
    assert [fs.path_of(index + 1) for index in fs.bootstrap.prefetch()] == expected["prefetch"]
    # The recorded answers are the input's: contents, hardlink, devices.
    for path, data in variant.contents().items():
        assert fs.read(fs.resolve(path), 0, len(data) + 1) == data, path
    assert fs.resolve("/etc/conf") == fs.resolve("/etc/conf-link")
    assert check_image(open_image(layout, TAG)).problems == []


def test_a_deleted_files_chunks_stay_in_the_lower_blob_only() -> None:
    """§2.5: chunks of a file an upper layer deleted are stored in the lower layer's blob
    but are not in the chunk table; §2.6: blobs in layer order."""
    variant = next(v for v in VARIANTS if v.upper)
    expected = _expected(variant)
    bs = Bootstrap((variant.directory / "bootstrap.bin").read_bytes())
    assert [blob.oci_digest for blob in bs.blobs()] == [b["digest"] for b in expected["blobs"]]
    algo = bs.digest_algorithm
    noise = {algo.digest(NOISE[i : i + 4096]) for i in range(0, len(NOISE), 4096)}
    lower = (variant.directory / expected["blobs"][0]["file"]).read_bytes()
    _, entries = read_blob_table("blob0", len(lower), lambda o, n: lower[o : o + n])
    assert noise <= {entry.digest for entry in entries}
    assert noise.isdisjoint(chunk.digest for chunk in bs.chunks())
    assert bs.superblock.chunk_count < sum(blob.chunk_count for blob in bs.blobs())
