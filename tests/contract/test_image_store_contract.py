"""The ImageStore contract: what every backend must do, tested once, run on each backend
of ``conftest.BACKENDS`` (an OCI layout directory, S3 on a moto server, ...).

The contract (``ketch.storage.store``): reads by digest and exact byte range, whole
reads checked against the digest, missing things are ``NotFoundError``, bytes that are
not what their digest says are ``IntegrityError``; writes publish a blob whole or not at
all, then a manifest, then move a tag last, so a tag never names missing blobs.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from ketch.builder.image_builder import BuildOptions, ImageBuilder
from ketch.errors import BadLayerError, IntegrityError, NotFoundError, StorageError
from ketch.fs.image_fs import ImageFS
from ketch.fs.unpack import unpack
from ketch.image.ketch_image import open_ketch_image
from ketch.image.layout import KETCH_BLOB
from ketch.oci import mediatypes as mt
from ketch.oci.manifest import Descriptor, Manifest, Platform, canonical_json
from ketch.storage.chunk_reader import ChunkReader
from ketch.storage.oci_layout_store import OciLayoutStore
from ketch.storage.store import BlobReader, ImageStore
from tests.contract.conftest import Backend, CorruptHook
from tests.fixtures import ocilayout as ol


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def pushed(store: ImageStore, data: bytes) -> str:
    digest = sha256(data)
    store.push_blob_bytes(data, digest)
    return digest


MISSING = sha256(b"no blob has these bytes")

# -- the read path ----------------------------------------------------------------------


def test_read_range_returns_exactly_the_bytes_asked(store: ImageStore) -> None:
    data = random_bytes(300_000)
    digest = pushed(store, data)
    size = len(data)
    for offset, length in [(0, 1), (0, size), (1, 4095), (4096, 65536), (size - 1, 1), (7, 0)]:
        assert store.read_range(digest, offset, length) == data[offset : offset + length]


@pytest.mark.parametrize(
    ("start", "length"),
    [(-10, 20), (0, 1), (100, 5)],
    ids=["straddles-end", "at-end", "past-end"],
)
def test_read_range_outside_the_blob_is_an_integrity_error(
    store: ImageStore, start: int, length: int
) -> None:
    data = random_bytes(5000)
    digest = pushed(store, data)
    offset = len(data) + start
    with pytest.raises(IntegrityError):
        store.read_range(digest, offset, length)


def test_range_reader_is_read_range_of_one_blob(store: ImageStore) -> None:
    data = random_bytes(10_000)
    digest = pushed(store, data)
    pushed(store, random_bytes(10_000, seed=1))  # another blob, not to be read
    read = store.range_reader(digest)
    assert read(123, 4567) == data[123 : 123 + 4567]
    with pytest.raises(IntegrityError):
        read(9_999, 2)


def test_read_range_verified_returns_only_bytes_that_pass_the_check(
    store: ImageStore, corrupt: CorruptHook
) -> None:
    # The chunk readers' whole view of a store (``BlobReader``).
    reader: BlobReader = store
    data = random_bytes(20_000, seed=2)
    digest = pushed(store, data)
    seen: list[bytes] = []
    assert reader.read_range_verified(digest, 100, 5000, seen.append) == data[100:5100]
    assert seen and all(piece == data[100:5100] for piece in seen)
    assert reader.blob_size(digest) == len(data)
    corrupt(digest, bytes(len(data)))  # zeros: no source has the right bytes now

    def check(piece: bytes) -> None:
        if piece != data[100:5100]:
            raise IntegrityError(f"blob {digest}: wrong bytes")

    with pytest.raises(IntegrityError, match=digest):
        reader.read_range_verified(digest, 100, 5000, check)


def test_blob_size_and_has_blob(store: ImageStore) -> None:
    data = random_bytes(12_345)
    digest = pushed(store, data)
    assert store.has_blob(digest)
    assert store.blob_size(digest) == len(data)
    assert not store.has_blob(MISSING)
    empty = pushed(store, b"")
    assert store.has_blob(empty)
    assert store.blob_size(empty) == 0
    assert store.read_blob(empty) == b""


@pytest.mark.parametrize(
    "read",
    [
        pytest.param(lambda s, d: s.read_range(d, 0, 1), id="read_range"),
        pytest.param(lambda s, d: s.blob_size(d), id="blob_size"),
        pytest.param(lambda s, d: s.open_blob(d).close(), id="open_blob"),
        pytest.param(lambda s, d: s.read_blob(d), id="read_blob"),
    ],
)
def test_a_missing_blob_is_not_found(
    store: ImageStore, read: Callable[[ImageStore, str], object]
) -> None:
    with pytest.raises(NotFoundError, match=MISSING):
        read(store, MISSING)


def test_open_blob_streams_the_whole_blob(store: ImageStore) -> None:
    data = random_bytes(3 << 20)
    digest = pushed(store, data)
    pieces = []
    with store.open_blob(digest) as stream:
        while piece := stream.read(65536):
            assert len(piece) <= 65536
            pieces.append(piece)
    assert b"".join(pieces) == data


def test_read_blob_checks_the_digest(store: ImageStore, corrupt: CorruptHook) -> None:
    data = random_bytes(100_000)
    digest = pushed(store, data)
    assert store.read_blob(digest) == data
    flipped = bytearray(data)
    flipped[50_000] ^= 0x01
    corrupt(digest, bytes(flipped))
    with pytest.raises(IntegrityError, match=f"expected {digest}"):
        store.read_blob(digest)
    corrupt(digest, data[:-1])
    with pytest.raises(IntegrityError):
        store.read_blob(digest)


def test_read_blob_refuses_a_blob_larger_than_max_size(store: ImageStore) -> None:
    data = random_bytes(1000)
    digest = pushed(store, data)
    assert store.read_blob(digest, max_size=1000) == data
    with pytest.raises(IntegrityError, match="size"):
        store.read_blob(digest, max_size=999)


# -- the write path ---------------------------------------------------------------------


def test_scratch_dir_is_a_local_writable_directory(store: ImageStore) -> None:
    scratch = store.scratch_dir()
    assert scratch.is_dir()
    (scratch / "probe").write_bytes(b"x")
    (scratch / "probe").unlink()
    assert store.scratch_dir() == scratch


@pytest.mark.parametrize("where", ["scratch", "elsewhere"])
def test_push_blob_file_publishes_the_whole_file_once(
    store: ImageStore, tmp_path: Path, where: str
) -> None:
    # 12 MiB: more than one part of a multipart upload where the backend has them.
    data = random_bytes(12 << 20)
    digest = sha256(data)
    directory = store.scratch_dir() if where == "scratch" else tmp_path
    for attempt in range(2):  # the second push of the same digest is a no-op
        path = directory / f"blob-{attempt}"
        path.write_bytes(data)
        assert store.has_blob(digest) == (attempt == 1)
        store.push_blob_file(path, digest)
        assert store.has_blob(digest)
        assert store.blob_size(digest) == len(data)
        assert store.read_blob(digest) == data
    assert store.read_range(digest, (12 << 20) - 10, 10) == data[-10:]


def test_push_blob_file_with_the_wrong_digest_stores_nothing(
    store: ImageStore, tmp_path: Path
) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"these bytes")
    claimed = sha256(b"other bytes")
    with pytest.raises(StorageError, match="digest"):
        store.push_blob_file(path, claimed)
    assert not store.has_blob(claimed)


def test_push_blob_bytes_is_idempotent(store: ImageStore) -> None:
    digest = pushed(store, b"config")
    store.push_blob_bytes(b"config", digest)
    assert store.read_blob(digest) == b"config"


def test_copy_blob_between_two_stores_of_the_backend(backend: Backend) -> None:
    source, _ = backend.new("source")
    dest, _ = backend.new("dest")
    data = random_bytes(7 << 20)
    digest = pushed(source, data)
    assert not dest.has_blob(digest)
    dest.copy_blob_from(source, digest)
    assert dest.read_blob(digest) == data
    dest.copy_blob_from(source, digest)  # present: a no-op
    with pytest.raises(NotFoundError):
        dest.copy_blob_from(source, MISSING)
    assert not dest.has_blob(MISSING)


def test_copy_blob_to_and_from_an_oci_layout(store: ImageStore, tmp_path: Path) -> None:
    layout = OciLayoutStore.create(tmp_path / "layout")
    data = random_bytes(200_000)
    digest = pushed(layout, data)
    store.copy_blob_from(layout, digest)
    assert store.read_blob(digest) == data
    back = OciLayoutStore.create(tmp_path / "back")
    back.copy_blob_from(store, digest)
    assert back.read_blob(digest) == data


def test_copy_blob_refuses_bytes_that_are_not_the_digest(store: ImageStore, tmp_path: Path) -> None:
    layout = OciLayoutStore.create(tmp_path / "layout")
    digest = pushed(layout, b"the real bytes")
    layout.layout.blob_path(digest).write_bytes(b"the fake bytes")
    with pytest.raises(IntegrityError, match=digest):
        store.copy_blob_from(layout, digest)
    assert not store.has_blob(digest)


# -- manifests and tags -----------------------------------------------------------------


def manifest_bytes(store: ImageStore, content: bytes, arch: str = "amd64") -> bytes:
    """Push a config and one layer; a manifest naming them (not yet stored)."""
    config = canonical_json({"architecture": arch, "os": "linux", "config": {}})
    config_digest = pushed(store, config)
    layer_digest = pushed(store, content)
    return Manifest(
        mt.OCI_MANIFEST,
        Descriptor(mt.OCI_CONFIG, config_digest, len(config)),
        [Descriptor(KETCH_BLOB, layer_digest, len(content))],
    ).to_bytes()


def test_put_manifest_then_resolve_by_tag(store: ImageStore) -> None:
    data = manifest_bytes(store, b"layer one")
    descriptor = store.put_manifest(data, mt.OCI_MANIFEST, "v1")
    assert descriptor.digest == sha256(data)
    assert descriptor.size == len(data)
    assert descriptor.media_type == mt.OCI_MANIFEST
    assert store.has_blob(descriptor.digest)
    found, manifest, raw = store.resolve("v1")
    assert found.digest == descriptor.digest
    assert raw == data
    assert manifest.layers[0].digest == sha256(b"layer one")
    assert store.read_blob(manifest.config.digest) == canonical_json(
        {"architecture": "amd64", "os": "linux", "config": {}}
    )


def test_moving_a_tag_leaves_the_other_tags(store: ImageStore) -> None:
    first = store.put_manifest(manifest_bytes(store, b"one"), mt.OCI_MANIFEST, "a")
    second = store.put_manifest(manifest_bytes(store, b"two"), mt.OCI_MANIFEST, "b")
    assert store.resolve("a")[0].digest == first.digest
    moved = store.put_manifest(manifest_bytes(store, b"three"), mt.OCI_MANIFEST, "a")
    assert store.resolve("a")[0].digest == moved.digest
    assert store.resolve("b")[0].digest == second.digest
    assert store.has_blob(first.digest)  # untagged, not deleted


def test_resolving_a_missing_tag_is_not_found(store: ImageStore) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        store.resolve("nope")
    store.put_manifest(manifest_bytes(store, b"x"), mt.OCI_MANIFEST, "there")
    with pytest.raises(NotFoundError, match="tags: there"):
        store.resolve("nope")


def test_resolve_chooses_the_platform_from_an_index(store: ImageStore) -> None:
    entries = []
    for arch in ("arm64", "amd64"):
        data = manifest_bytes(store, f"layer for {arch}".encode(), arch)
        digest = pushed(store, data)
        entries.append(
            Descriptor(
                mt.OCI_MANIFEST, digest, len(data), platform={"os": "linux", "architecture": arch}
            )
        )
    index = canonical_json(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [e.to_json() for e in entries]}
    )
    store.put_manifest(index, mt.OCI_INDEX, "multi")
    assert store.resolve("multi")[0].digest == entries[1].digest  # linux/amd64 by default
    descriptor, manifest, _ = store.resolve("multi", Platform.parse("linux/arm64"))
    assert descriptor.digest == entries[0].digest
    assert manifest.layers[0].digest == sha256(b"layer for arm64")
    with pytest.raises(NotFoundError, match="linux/s390x"):
        store.resolve("multi", Platform.parse("linux/s390x"))


# -- the builder on this backend --------------------------------------------------------


def source_layout(tmp_path: Path) -> tuple[OciLayoutStore, dict[str, bytes]]:
    """An OCI layout with tag ``good`` and tag ``bad`` whose second layer is refused."""
    files = {"etc/hostname": b"ketch\n", "app/data.bin": random_bytes(3 << 20, seed=7)}
    first = ol.tar_bytes([ol.dir("etc"), ol.dir("app")] + [ol.file(p, d) for p, d in files.items()])
    hostile = ol.tar_bytes([ol.hardlink("app/link", "app/no-such-target")])
    root = tmp_path / "source"
    ol.write_oci_layout(root, "good", [first])
    ol.write_oci_layout(root, "bad", [first, hostile])
    return OciLayoutStore.open(root), files


def convert(source: ImageStore, tag: str, dest: ImageStore, dest_tag: str) -> str:
    builder = ImageBuilder(dest, BuildOptions(workers=2))
    builder.convert(source, tag)
    return builder.finish(dest_tag).manifest_digest


def test_a_converted_image_reads_back_from_the_store(store: ImageStore, tmp_path: Path) -> None:
    source, files = source_layout(tmp_path)
    digest = convert(source, "good", store, "v1")
    descriptor, manifest, _ = store.resolve("v1")
    assert descriptor.digest == digest
    for blob in [manifest.config, *manifest.layers]:
        assert store.has_blob(blob.digest)
    image = open_ketch_image(store, "v1")
    out = tmp_path / "out"
    unpack(ImageFS(image.bootstrap, ChunkReader(store, image.bootstrap.digest_algorithm)), out)
    for path, data in files.items():
        assert (out / path).read_bytes() == data


def test_a_failed_conversion_moves_no_tag(store: ImageStore, tmp_path: Path) -> None:
    source, _ = source_layout(tmp_path)
    before = convert(source, "good", store, "v1")
    with pytest.raises(BadLayerError):
        convert(source, "bad", store, "v1")
    with pytest.raises(BadLayerError):
        convert(source, "bad", store, "v2")
    assert store.resolve("v1")[0].digest == before
    with pytest.raises(NotFoundError):
        store.resolve("v2")
    _, manifest, _ = store.resolve("v1")
    for blob in [manifest.config, *manifest.layers]:
        assert store.has_blob(blob.digest)
