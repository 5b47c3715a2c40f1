"""OCI layout directories: tags, indexes with platforms, atomic writes, checked reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ketch.errors import IntegrityError, NotFoundError
from ketch.oci import mediatypes as mt
from ketch.oci.layout import OciLayout
from ketch.oci.manifest import Descriptor, Platform
from tests.fixtures import ocilayout as ol


def test_tags_and_missing_tag_error_lists_tags(tmp_path: Path) -> None:
    ol.write_oci_layout(tmp_path, "a", [ol.tar_bytes([ol.file("x", b"1")])])
    ol.write_oci_layout(tmp_path, "b", [ol.tar_bytes([ol.file("x", b"2")])])
    layout = OciLayout.open(tmp_path)
    assert sorted(layout.tags()) == ["a", "b"]
    with pytest.raises(NotFoundError, match="tags: a, b"):
        layout.resolve_tag("c")


def test_platform_is_chosen_from_an_index(tmp_path: Path) -> None:
    amd = ol.write_oci_layout(tmp_path, "amd", [ol.tar_bytes([ol.file("arch", b"amd64")])])
    arm = ol.write_oci_layout(tmp_path, "arm", [ol.tar_bytes([ol.file("arch", b"arm64")])])
    layout = OciLayout.open(tmp_path)
    entries = [
        Descriptor(
            mt.OCI_MANIFEST,
            digest,
            layout.blob_size(digest),
            platform={"os": "linux", "architecture": arch},
        )
        for digest, arch in ((arm, "arm64"), (amd, "amd64"))
    ]
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [e.to_json() for e in entries]}
    ).encode()
    digest = layout.write_blob(index)
    layout.set_tag("multi", Descriptor(mt.OCI_INDEX, digest, len(index)))
    assert layout.manifest("multi")[0].digest == amd
    assert layout.manifest("multi", Platform.parse("linux/arm64"))[0].digest == arm
    with pytest.raises(NotFoundError, match="linux/s390x"):
        layout.manifest("multi", Platform.parse("linux/s390x"))


def test_blob_reads_are_checked_against_their_digest(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path / "l")
    digest = layout.write_blob(b"hello")
    assert layout.read_blob(digest) == b"hello"
    layout.blob_path(digest).write_bytes(b"HELLO")
    with pytest.raises(IntegrityError, match=digest):
        layout.read_blob(digest)
    with pytest.raises(IntegrityError):
        layout.blob_path("sha256:../../etc/passwd")


def test_set_tag_replaces_only_that_tag_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path / "l")
    one = layout.write_blob(b"1")
    two = layout.write_blob(b"2")
    layout.set_tag("x", Descriptor(mt.OCI_MANIFEST, one, 1))
    layout.set_tag("y", Descriptor(mt.OCI_MANIFEST, one, 1))
    layout.set_tag("x", Descriptor(mt.OCI_MANIFEST, two, 1))
    assert layout.resolve_tag("x").digest == two
    assert layout.resolve_tag("y").digest == one
    assert not [p for p in (tmp_path / "l").rglob(".tmp-*")]
