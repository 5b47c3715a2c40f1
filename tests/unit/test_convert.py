"""Converting OCI layouts: the merged tree, attributes, dedup and reproducibility."""

from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path

import pytest

from ketch.format.bootstrap import Bootstrap
from ketch.format.digests import DigestAlgorithm
from ketch.image.layout import ANNOTATION_KETCH_SOURCE, KETCH_BLOB, KETCH_BOOTSTRAP
from tests.fixtures import ocilayout as ol
from tests.fixtures.ketch import convert, image_fs, open_image, unpack_image

NS = 1_612_325_106_123_456_789  # 2021-02-03 04:05:06.123456789


def _layout(
    tmp_path: Path, layers: list[list[ol.TarEntry]], tag: str = "src", **kw: object
) -> Path:
    root = tmp_path / "src"
    ol.write_oci_layout(root, tag, [ol.tar_bytes(entries) for entries in layers], **kw)  # type: ignore[arg-type]
    return root


def test_merged_tree_applies_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    gone = os.urandom(5000)
    src = _layout(
        tmp_path,
        [
            [
                ol.dir("a"),
                ol.file("a/x", gone),
                ol.file("a/y", b"stays"),
                ol.dir("d"),
                ol.file("d/old", b"old"),
            ],
            [ol.whiteout("a/x"), ol.opaque("d"), ol.file("d/new", b"new")],
        ],
    )
    convert(src, "src", tmp_path / "dst")
    out = unpack_image(tmp_path / "dst", tmp_path / "out")
    assert sorted(p.name for p in (out / "a").iterdir()) == ["y"]
    assert sorted(p.name for p in (out / "d").iterdir()) == ["new"]
    assert (out / "d" / "new").read_bytes() == b"new"
    # The deleted file's chunk is stored in the lower blob but is not part of the tree.
    bootstrap = open_image(tmp_path / "dst").bootstrap
    assert DigestAlgorithm.BLAKE3.digest(gone) not in {c.digest for c in bootstrap.chunks()}


def test_opaque_marker_keeps_entries_of_its_own_layer_whatever_the_order(tmp_path: Path) -> None:
    layers = [
        [ol.dir("d"), ol.file("d/old", b"old")],
        [ol.file("d/new", b"new"), ol.opaque("d")],  # marker after the new entry
    ]
    convert(_layout(tmp_path, layers), "src", tmp_path / "dst")
    out = unpack_image(tmp_path / "dst", tmp_path / "out")
    assert sorted(p.name for p in (out / "d").iterdir()) == ["new"]


def test_attributes_survive_conversion(tmp_path: Path) -> None:
    long_name = "n" * 200
    deep = "/".join(["deep"] * 40) + "/" + long_name
    src = _layout(
        tmp_path,
        [
            [
                ol.dir("bin", mode=0o755, mtime_ns=NS),
                ol.file("bin/suid", b"#!/bin/sh\n", mode=0o4755, uid=0, gid=0, mtime_ns=NS),
                ol.file("bin/sgid", b"x", mode=0o2711, uid=7, gid=8),
                ol.dir("tmp", mode=0o1777),
                ol.symlink("bin/link", "../tmp/nowhere", mtime_ns=NS + 1),
                ol.fifo("bin/fifo", mode=0o600),
                ol.chardev("bin/null", 1, 3, mode=0o666),
                ol.blockdev("bin/loop", 7, 300, mode=0o660),
                ol.file("bin/attrs", b"x", xattrs={"user.k": b"\x00\xffbinary"}),
                ol.file(deep, b"deep", mtime_ns=NS),
                ol.file(b"bin/latin1-\xe9", b"bytes name"),
            ]
        ],
    )
    convert(src, "src", tmp_path / "dst")
    out = unpack_image(tmp_path / "dst", tmp_path / "out")
    suid = (out / "bin" / "suid").lstat()
    assert stat.S_IMODE(suid.st_mode) == 0o4755
    assert suid.st_mtime_ns == NS
    sgid = (out / "bin" / "sgid").lstat()
    assert (stat.S_IMODE(sgid.st_mode), sgid.st_uid, sgid.st_gid) == (0o2711, 7, 8)
    assert stat.S_IMODE((out / "tmp").lstat().st_mode) == 0o1777
    assert os.readlink(out / "bin" / "link") == "../tmp/nowhere"
    assert (out / "bin" / "link").lstat().st_mtime_ns == NS + 1
    assert stat.S_ISFIFO((out / "bin" / "fifo").lstat().st_mode)
    null = (out / "bin" / "null").lstat()
    assert stat.S_ISCHR(null.st_mode) and (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    loop = (out / "bin" / "loop").lstat()
    assert stat.S_ISBLK(loop.st_mode) and (os.major(loop.st_rdev), os.minor(loop.st_rdev)) == (
        7,
        300,
    )
    assert os.getxattr(out / "bin" / "attrs", "user.k") == b"\x00\xffbinary"
    assert (out / deep).read_bytes() == b"deep"
    assert (out / deep).lstat().st_mtime_ns == NS
    assert (Path(os.fsdecode(bytes(out) + b"/bin/latin1-\xe9"))).read_bytes() == b"bytes name"


def test_hardlinks_share_one_inode(tmp_path: Path) -> None:
    src = _layout(
        tmp_path, [[ol.file("a", b"data"), ol.hardlink("b", "a"), ol.hardlink("c/d", "a")]]
    )
    convert(src, "src", tmp_path / "dst")
    fs = image_fs(tmp_path / "dst")
    inos = {fs.resolve(p) for p in ("/a", "/b", "/c/d")}
    assert len(inos) == 1
    assert fs.getattr(inos.pop()).nlink == 3
    out = unpack_image(tmp_path / "dst", tmp_path / "out")
    assert (out / "a").stat().st_ino == (out / "b").stat().st_ino == (out / "c" / "d").stat().st_ino


def test_hardlink_to_a_lower_layer_file(tmp_path: Path) -> None:
    src = _layout(tmp_path, [[ol.file("lib/x", b"lower")], [ol.hardlink("lib/y", "lib/x")]])
    convert(src, "src", tmp_path / "dst")
    fs = image_fs(tmp_path / "dst")
    assert fs.resolve("/lib/x") == fs.resolve("/lib/y")


def test_read_any_range_of_a_multi_chunk_file(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    src = _layout(tmp_path, [[ol.file("big", data)]])
    convert(src, "src", tmp_path / "dst", chunk_size=16384)
    fs = image_fs(tmp_path / "dst")
    ino = fs.resolve("/big")
    rng = random.Random(1)
    for _ in range(200):
        offset = rng.randrange(0, len(data) + 100)
        size = rng.randrange(0, 70000)
        assert fs.read(ino, offset, size) == data[offset : offset + size]


def test_chunks_are_stored_once_within_and_across_layers(tmp_path: Path) -> None:
    block = os.urandom(64 << 10)
    src = _layout(
        tmp_path,
        [
            [ol.file("a", block * 3), ol.file("b", block)],  # 4 references, 1 chunk
            [ol.file("c", block * 2 + b"tail")],  # 1 new chunk (the tail)
        ],
    )
    summary = convert(src, "src", tmp_path / "dst", chunk_size=64 << 10)
    assert [layer.stored_chunks for layer in summary.layers] == [1, 1]
    assert [layer.chunks for layer in summary.layers] == [4, 3]
    bootstrap = open_image(tmp_path / "dst").bootstrap
    assert bootstrap.superblock.chunk_count == 2


def test_a_shared_base_layer_yields_the_same_blob(tmp_path: Path) -> None:
    base = [ol.file("etc/os", os.urandom(100_000))]
    root = tmp_path / "src"
    ol.write_oci_layout(root, "one", [ol.tar_bytes(base), ol.tar_bytes([ol.file("app", b"1")])])
    ol.write_oci_layout(
        root, "two", [ol.tar_bytes(base), ol.tar_bytes([ol.file("app", b"2" * 10)])]
    )
    one = convert(root, "one", tmp_path / "dst", "one")
    two = convert(root, "two", tmp_path / "dst", "two")
    assert one.layers[0].blob == two.layers[0].blob
    assert one.layers[1].blob != two.layers[1].blob


def test_chunk_dict_stores_only_what_changed(tmp_path: Path) -> None:
    payload = os.urandom(1 << 20)
    root = tmp_path / "src"
    ol.write_oci_layout(
        root,
        "v1",
        [
            ol.tar_bytes([ol.file("model", payload), ol.file("deleted", b"d" * 9000)]),
            ol.tar_bytes([ol.whiteout("deleted")]),
        ],
    )
    ol.write_oci_layout(
        root,
        "v2",
        [
            ol.tar_bytes([ol.file("model", payload), ol.file("deleted", b"d" * 9000)]),
            ol.tar_bytes([ol.whiteout("deleted"), ol.file("new", b"n" * 5000)]),
        ],
    )
    convert(root, "v1", tmp_path / "dict", "v1", chunk_size=65536)
    v2 = convert(
        root,
        "v2",
        tmp_path / "dst",
        "v2",
        chunk_size=65536,
        chunk_dicts=[open_image(tmp_path / "dict", "v1")],
    )
    assert [layer.stored_chunks for layer in v2.layers] == [0, 1]
    out = unpack_image(tmp_path / "dst", tmp_path / "out", "v2")
    assert (out / "model").read_bytes() == payload
    assert not (out / "deleted").exists()
    # The borrowed blob was copied into the destination layout, which stands alone.
    image = open_image(tmp_path / "dst", "v2")
    for blob in image.bootstrap.blobs():
        assert image.store.has_blob(blob.oci_digest)


def test_manifest_keeps_config_and_names_source(tmp_path: Path) -> None:
    src = _layout(
        tmp_path,
        [[ol.file("x", b"1")]],
        config={
            "Env": ["A=1"],
            "Entrypoint": ["/x"],
            "Cmd": ["y"],
            "WorkingDir": "/w",
            "User": "7",
        },
    )
    summary = convert(src, "src", tmp_path / "dst")
    image = open_image(tmp_path / "dst")
    manifest = image.manifest
    assert manifest.annotations[ANNOTATION_KETCH_SOURCE] == summary.source_manifest
    assert [layer.media_type for layer in manifest.layers] == [KETCH_BLOB, KETCH_BOOTSTRAP]
    config = json.loads(image.store.read_blob(manifest.config.digest))
    assert config["config"]["Env"] == ["A=1"]
    assert config["config"]["Entrypoint"] == ["/x"]
    assert config["config"]["Cmd"] == ["y"]
    assert config["config"]["WorkingDir"] == "/w"
    assert config["config"]["User"] == "7"
    assert config["rootfs"]["diff_ids"] == [layer.digest for layer in manifest.layers]


# -- reproducibility ----------------------------------------------------------------------


def _entries() -> list[ol.TarEntry]:
    rng = random.Random(7)
    entries = [ol.dir("d", mtime_ns=NS), ol.dir("d/e", mtime_ns=NS)]
    for i in range(30):
        entries.append(
            ol.file(
                f"d/{'e/' if i % 3 else ''}f{i}",
                rng.randbytes(rng.randrange(0, 90000)),
                mtime_ns=NS + i,
            )
        )
    entries += [ol.symlink("d/s", "f1"), ol.hardlink("d/h", "d/f0")]
    return entries


def _ketch_identity(layout: Path, tag: str) -> tuple[str, str, tuple[str, ...]]:
    image = open_image(layout, tag)
    bs: Bootstrap = image.bootstrap
    return (
        bs.root_digest.hex(),
        image.bootstrap_layer.digest,
        tuple(b.oci_digest for b in bs.blobs()),
    )


def test_same_content_converts_identically_whatever_tar_order_or_compression(
    tmp_path: Path,
) -> None:
    entries = _entries()
    hardlink = [e for e in entries if e.type == "hardlink"]
    # The hardlink must come after its target in any valid tar; shuffle the rest.
    others = [e for e in entries if e.type != "hardlink" and e.name != "d/f0"]
    identities = set()
    for n, compression in enumerate(["gzip", "gzip", "zstd", "none"]):
        rng = random.Random(n)
        shuffled = others[:]
        rng.shuffle(shuffled)
        order = [e for e in entries if e.name == "d/f0"] + shuffled + hardlink
        root = tmp_path / f"src{n}"
        data = ol.tar_bytes(order)
        ol.write_oci_layout(root, "t", [data], compression=compression)  # type: ignore[arg-type]
        convert(root, "t", tmp_path / f"dst{n}", "t")
        identities.add(_ketch_identity(tmp_path / f"dst{n}", "t"))
    assert len(identities) == 1


def test_build_is_independent_of_build_time(tmp_path: Path) -> None:
    src = _layout(tmp_path, [_entries()])
    first = convert(src, "src", tmp_path / "a")
    os.utime(src / "index.json", ns=(0, 0))
    second = convert(src, "src", tmp_path / "b")
    assert first.manifest_digest == second.manifest_digest
    assert (tmp_path / "a" / "blobs").exists()


def test_source_date_epoch_clamps_mtimes(tmp_path: Path) -> None:
    src = _layout(
        tmp_path, [[ol.file("new", b"1", mtime_ns=NS), ol.file("old", b"2", mtime_ns=10**9)]]
    )
    convert(src, "src", tmp_path / "dst", source_date_epoch=1_000_000_000)
    fs = image_fs(tmp_path / "dst")
    assert fs.getattr(fs.resolve("/new")).mtime_ns == 1_000_000_000 * 10**9
    assert fs.getattr(fs.resolve("/old")).mtime_ns == 10**9


@pytest.mark.parametrize(
    ("chunker", "compressor", "digest"), [("cdc", "lz4", "sha256"), ("fixed", "none", "blake3")]
)
def test_other_chunkers_codecs_and_digests_round_trip(
    tmp_path: Path, chunker: str, compressor: str, digest: str
) -> None:
    data = os.urandom(200_000) + bytes(300_000)
    src = _layout(tmp_path, [[ol.file("f", data)]])
    convert(
        src,
        "src",
        tmp_path / "dst",
        chunker=chunker,
        chunk_size=65536,
        compressor=compressor,
        digest=digest,
    )
    out = unpack_image(tmp_path / "dst", tmp_path / "out")
    assert (out / "f").read_bytes() == data
    assert open_image(tmp_path / "dst").bootstrap.digest_algorithm.label == digest
