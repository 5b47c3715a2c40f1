"""The Ketch image layout (``ketch.image.layout``): what a build writes and a reader finds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ketch.builder.image_builder import BuildOptions, ImageBuilder
from ketch.errors import NotFoundError
from ketch.image import layout
from ketch.image.ketch_image import open_ketch_image
from ketch.oci.manifest import Descriptor, Manifest
from ketch.storage.oci_layout_store import OciLayoutStore
from tests.fixtures import ocilayout as ol


def _source(tmp_path: Path) -> OciLayoutStore:
    layer = ol.tar_bytes([ol.dir("etc"), ol.file("etc/hostname", b"ketch\n")])
    ol.write_oci_layout(tmp_path / "src", "v1", [layer], config={"Cmd": ["/bin/true"]})
    return OciLayoutStore.open(tmp_path / "src")


def test_convert_writes_its_source_config_and_manifest_without_a_relay(tmp_path: Path) -> None:
    source = _source(tmp_path)
    dest = OciLayoutStore.create(tmp_path / "dst")
    builder = ImageBuilder(dest, BuildOptions(workers=1))
    builder.convert(source, "v1")
    summary = builder.finish("k")

    source_descriptor, source_manifest, _ = source.resolve("v1")
    descriptor, manifest, _ = dest.resolve("k")
    assert summary.manifest_digest == descriptor.digest
    assert summary.source_manifest == source_descriptor.digest
    assert layout.source_manifest(manifest) == source_descriptor.digest
    assert manifest.subject is not None
    assert (manifest.subject.digest, manifest.subject.size) == (
        source_descriptor.digest,
        source_descriptor.size,
    )
    config = dest.read_config(manifest)
    source_config = source.read_config(source_manifest)
    assert source_config["history"]
    assert "history" not in config  # it describes source layers the image does not have
    assert {k: v for k, v in config.items() if k != "rootfs"} == {
        k: v for k, v in source_config.items() if k not in ("rootfs", "history")
    }
    assert config["config"]["Cmd"] == ["/bin/true"]
    assert config["rootfs"] == {
        "type": "layers",
        "diff_ids": [layer.digest for layer in manifest.layers],
    }
    image = open_ketch_image(dest, "k")
    assert image.bootstrap_layer == manifest.layers[-1]
    assert image.bootstrap_layer.annotations[layout.ANNOTATION_KETCH_ROOT] == summary.root_digest
    assert manifest.annotations[layout.ANNOTATION_KETCH_ROOT] == summary.root_digest
    for blob in manifest.layers[:-1]:
        assert blob.media_type == layout.KETCH_BLOB
        assert blob.annotations[layout.ANNOTATION_SNAPSHOT_KETCH_LAYER] == "blob"
    assert image.bootstrap_layer.annotations[layout.ANNOTATION_SNAPSHOT_KETCH_LAYER] == "bootstrap"
    assert (
        image.bootstrap_layer.annotations[layout.ANNOTATION_SNAPSHOT_KETCH_BOOTSTRAP]
        == summary.bootstrap_digest
    )


def test_a_directory_build_names_no_source_and_says_how_its_container_starts(
    tmp_path: Path,
) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_bytes(b"ketch\n")
    dest = OciLayoutStore.create(tmp_path / "dst")
    builder = ImageBuilder(dest, BuildOptions(workers=1))
    builder.add_directory(root, cmd=["/bin/sh", "-c", "true"], env=["A=1"], workdir="/etc")
    summary = builder.finish("k")

    _, manifest, _ = dest.resolve("k")
    assert summary.source_manifest is None
    assert layout.source_manifest(manifest) is None
    assert manifest.subject is None
    raw = json.loads(dest.read_blob(manifest.config.digest))
    assert list(raw) == ["architecture", "os", "config", "rootfs"]
    assert raw["config"] == {"Cmd": ["/bin/sh", "-c", "true"], "Env": ["A=1"], "WorkingDir": "/etc"}


@pytest.mark.parametrize("count", [0, 2])
def test_a_manifest_without_exactly_one_bootstrap_is_not_a_ketch_image(count: int) -> None:
    config = Descriptor("application/vnd.oci.image.config.v1+json", "sha256:" + "0" * 64, 2)
    layers = [
        Descriptor(layout.KETCH_BOOTSTRAP, f"sha256:{n:064x}", 10) for n in range(1, count + 1)
    ]
    manifest = Manifest("application/vnd.oci.image.manifest.v1+json", config, layers)
    with pytest.raises(NotFoundError, match=rf"^oci:x:t: not a Ketch image: .* found {count}$"):
        layout.bootstrap_layer(manifest, "oci:x:t")
